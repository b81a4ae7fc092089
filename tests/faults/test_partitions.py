"""Network partitions (issue 11): a worker cut off from PostgreSQL, or from Redis, mid-step.

The fleet is the session's worker on the host and one more worker on a host of its own: a network
namespace (tests/support/netns.py, where the why of the plumbing is) whose link to PostgreSQL or
to Redis is cut by dropping its frames on the worker's side, so that its connections hang — no
RST, no error, as when a switch or a cable dies. The cut lasts longer than the heartbeat lease
(lease + 6 s + a seeded jitter; longer on a loaded machine, see SLOW_MACHINE); then the link is
healed. Nothing here acts for a person.

A run:

1. The host's worker stops consuming (``cancel_consumer``) while the namespace's worker
   (concurrency 1: it holds one message at a time) starts the operation and takes it to a seeded
   point (10-70 %), so that the step in flight at the cut is the namespace's. The host's worker
   consumes again as soon as the link is cut: the rest of the fleet, healthy.
2. **PostgreSQL cut**: the step hangs in the database and so does its heartbeat. Beat marks the
   operation interrupted after the lease and resumes it by the kind's policy, and the host's
   worker must take the new run over and get further *while the cut lasts* — which needs the
   server to have let go of the cut-off session and its rows. Even seeds of the import cut the
   link in the middle of a COPY (``_start_and_cut_inside_a_copy``): that session is *active*,
   not idle in a transaction, so ``idle_in_transaction_session_timeout`` does not end it; the
   TCP keepalives and user timeout that operations/integration.py gives worker sessions do.
   **Redis cut**: the step can still write to PostgreSQL and finishes there, but the message of
   the next step hangs in the publish (or the one the worker was handed is lost with the reply).
   The operation must move on without that worker while the cut lasts: its next message had
   reached Redis and another worker runs it, or beat sees that no step was claimed within the
   lease and resumes it.
3. The link is healed and the cut-off worker wakes up inside its old step. What it still tries
   must be refused — its writes rolled back at the fenced advance or checkpoint (or by the server,
   which ended its session), its late message ignored at the claim — and a log says so
   (``turned_away``). A Redis cut that needed no takeover (the step needs no broker, or its next
   message had gone out) leaves nothing late to refuse.
4. The operation completes with exactly its rows and a legal history, nobody having acted
   (``verdict``): no id stored twice — never two writers. Also recorded: how long the operation
   took to move on, and how many transactions the cut-off worker still had open on the server
   when it did (``cut_off_transactions_when_moved_on``).
"""
import os
import random
import socket
import time

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from operations import integration, services
from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.states import Status
from tapproject.celery import app
from tests.conftest import BACKEND, database_url_for_subprocess
from tests.faults.report import record_run
from tests.faults.test_faults import (
    finish_unattended,
    last_event,
    start_and_reach,
    turned_away,
    verdict,
    workloads,
)
from tests.support.netns import WorkerHost
from tests.support.ops import wait_status
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.backends("pg-redis")]

ROUNDS = int(os.environ.get("TAP_FAULT_ROUNDS", "1"))
SEEDS = range(ROUNDS)
WORKLOADS = ["import", "chain"]
#: How long after the heal the cut-off worker has to show that its late writes were refused: its
#: connections come back at their next retransmission, the server's side of a PostgreSQL session
#: at most ~13 s later (the host's TCP backoff, which the test leaves alone).
LATE_TIMEOUT = 45
#: The cut lasts ``hold``; when the operation has not moved on by then (a loaded machine: make
#: faults runs four sessions at once), the link stays cut up to this much longer before that
#: counts as a failure — it must still move on while the worker is cut off.
SLOW_MACHINE = 20


#: Rows per chunk of the import cut inside a COPY (≈ 720 KB): far more than the server takes in
#: while the COPY waits (its receive buffer, pinned, and what the COPY reads ahead: ~300 KB).
COPY_CHUNK_ROWS, COPY_SERVER_BUFFER = 10_000, 65536


def _row(operation_id):
    close_old_connections()
    return Operation.objects.values("status", "run_token", "progress_done").get(pk=operation_id)


def _heartbeat_age(operation_id):
    close_old_connections()
    beat_at = Operation.objects.values_list("heartbeat_at", flat=True).get(pk=operation_id)
    return beat_at and round((timezone.now() - beat_at).total_seconds(), 1)


@pytest.fixture
def worker_host(worker):
    host = WorkerHost(database_url_for_subprocess()).create()
    try:
        yield host
    finally:
        host.destroy()


class Consuming:
    """The host's worker stops taking messages from the queue, and takes them again."""

    def __init__(self, worker):
        self.destination = [f"{worker.name}@{socket.gethostname()}"]
        self.queue = settings.CELERY_TASK_DEFAULT_QUEUE

    def stop(self):
        replies = app.control.cancel_consumer(self.queue, destination=self.destination, reply=True, timeout=10)
        assert replies, "the host's worker did not stop consuming"

    def start(self):
        replies = app.control.add_consumer(self.queue, destination=self.destination, reply=True, timeout=10)
        assert replies, "the host's worker did not consume again"


def _start_and_cut_inside_a_copy(host, cut_off, workload, rng):
    """Start the operation and cut the link in the middle of the worker's COPY of a chunk — a
    window of milliseconds that a random moment seldom hits — and hold the COPY there.

    The operation is started while no worker consumes. The test locks its row (the worker's claim
    will wait) and inserts, without committing, a row the COPY will bring; then the namespace's
    worker starts. Once its claim waits, the server's receive buffer of its sessions is pinned
    (64 KB, ``pin_server_receive_buffers``: otherwise TCP autotuning lets this host's server take
    in megabytes, a whole chunk, at once), and the claim goes on. The COPY stores the rows before
    the test's row (uncommitted) and waits for the test's transaction, the rest of the chunk
    still with the worker; the link is cut; the test's row is rolled back. The server takes what
    had reached it and then waits for the rest: the session is *active* — not idle in a
    transaction — and its rows are in the way of the resumed run's replay of the chunk.
    Returns the operation's id and where the cut landed."""
    operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
    chunk = workload.params["chunk_rows"]
    blocked_at = rng.choice([0, 1]) * chunk + rng.randint(50, 2000)
    with psycopg.connect(host.dsn) as held, psycopg.connect(host.dsn) as blocker:
        held.execute(f"SELECT 1 FROM {Operation._meta.db_table} WHERE id = %s FOR UPDATE", [operation_id])
        blocker.execute(
            f"INSERT INTO {Record._meta.db_table} (operation_id, external_id, name, email, amount, date) "
            "VALUES (%s, %s, 'blocker', 'blocker@example.com', 0, '2020-01-01')", [operation_id, blocked_at])
        cut_off.start()
        cut_off.wait_started()
        _until(host, lambda sessions: any(wait == "Lock" and query.startswith("UPDATE")
                                          for _, _, wait, query in sessions), "the worker's claim waits")
        assert host.pin_server_receive_buffers(COPY_SERVER_BUFFER) >= 1
        held.rollback()
        _until(host, lambda sessions: any(wait == "Lock" and query.startswith("COPY")
                                          for _, _, wait, query in sessions), f"the COPY waits at row {blocked_at}")
        host.partition("postgres")
        blocker.rollback()
    _until(host, lambda sessions: any(state == "active" and wait == "Client" for _, state, wait, _ in sessions),
           "the cut-off COPY waits for the rest of its data", timeout=5)
    return operation_id, f"inside a COPY (held at id {blocked_at})"


def _until(host, check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not check(_sessions(host)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s; the server has {_sessions(host)}"
        time.sleep(0.01)


def _sessions(host):
    return [(pid, state, wait, query) for pid, state, _, wait, query in host.postgres_sessions()]


def _lock_waits(dsn):
    """Sessions of the test database waiting for a lock, and who holds them up."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, host(client_addr), pg_blocking_pids(pid), left(query, 60) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'").fetchall()


def _open_transactions(host):
    return sum(1 for _, _, in_transaction, _, _ in host.postgres_sessions() if in_transaction)


def _moved_on(service, workload, before):
    """While the cut lasts: the operation got further without the cut-off worker."""
    if service == "postgres":  # that worker cannot reach the row: a new run must have taken over
        return lambda row: row["run_token"] > before["run_token"] and (
            row["progress_done"] > before["progress_done"] or row["status"] == Status.COMPLETED)
    # The cut-off worker may still commit the step it runs (one step of the chain, or all of
    # the import, which needs no broker): beyond that, only the rest of the fleet moves it.
    beyond = 2 if workload.name == "chain" else 1
    return lambda row: row["status"] == Status.COMPLETED or row["progress_done"] >= before["progress_done"] + beyond


def _failed(fault, workload, seed, started, facts, problem):
    """A run whose partition check failed: recorded with its problem (docs/reliability.md counts
    it), then the test fails."""
    record_run({"fault": fault, "workload": workload.name, "backend": BACKEND, "seed": seed, "problems": [problem],
                "interventions": [], "auto_resumes": 0, "seconds": round(time.monotonic() - started, 1), **facts})
    raise AssertionError(f"{fault}/{workload.name} seed {seed}: {problem}")


def _partition(fault, service, worker, host, workload_name, seed):
    rng, started = random.Random(f"{fault}-{workload_name}-{seed}"), time.monotonic()
    # The cut inside a COPY on odd seeds: `make faults` runs it five times in ten; `make test`'s one
    # round (seed 0) cuts at a random point, as the other faults do — the inside-COPY set-up misses
    # its window now and then when the machine is busy (the whole chunk reached the server first).
    inside_copy = service == "postgres" and workload_name == "import" and seed % 2 == 1
    workload = workloads()[workload_name]
    if inside_copy:
        workload.params["chunk_rows"] = COPY_CHUNK_ROWS
    lease = settings.TAP_HEARTBEAT_LEASE
    hold = lease + 6 + rng.uniform(0, 4)
    cut_off = WorkerProcess(host.env(worker.env), worker.log_path.parent / f"{fault}-worker.log",
                            concurrency=1, wrapper=host.wrapper)
    logs_from = (len(cut_off.log_text()), len(worker.log_text()))
    consuming, facts, healed = Consuming(worker), {"hold": round(hold, 1)}, False
    consuming.stop()
    try:
        if inside_copy:
            operation_id, facts["cut_in"] = _start_and_cut_inside_a_copy(host, cut_off, workload, rng)
            after, before = last_event(operation_id), _row(operation_id)
        else:
            cut_off.start()
            cut_off.wait_started()
            operation_id = start_and_reach(workload, rng)
            after, before = last_event(operation_id), _row(operation_id)
            host.partition(service)
        cut_at = time.monotonic()
        consuming.start()
        moved_on, moved_in, open_then = _moved_on(service, workload, before), None, None
        while (elapsed := time.monotonic() - cut_at) < hold or (moved_in is None and elapsed < hold + SLOW_MACHINE):
            if moved_in is None and moved_on(_row(operation_id)):
                moved_in, open_then = time.monotonic() - cut_at, _open_transactions(host)
            time.sleep(0.1)
        waiting, cut_off_sessions, age = _lock_waits(host.dsn), host.postgres_sessions(), _heartbeat_age(operation_id)
        host.heal(service)
        healed, healed_at = True, time.monotonic()
        row = _row(operation_id)
        facts.update(moved_on_in=moved_in and round(moved_in, 1), taken_over=row["run_token"] > before["run_token"],
                     cut_off_transactions_when_moved_on=open_then)
        if moved_in is None:
            _failed(fault, workload, seed, started, facts,
                    f"the operation did not get further without the cut-off worker in the {elapsed:.0f}s of the cut "
                    f"(before: {before}, at the heal: {row}, its heartbeat {age}s old); the cut-off worker's "
                    f"sessions on the server: {cut_off_sessions}; sessions waiting for a lock: {waiting}")
        outcome = finish_unattended(operation_id, after)
        refused = []
        if service == "postgres" or facts["taken_over"]:  # it has writes or messages left from its run
            deadline = time.monotonic() + LATE_TIMEOUT
            while not refused and time.monotonic() < deadline:
                refused = turned_away(cut_off.log_text()[logs_from[0]:] + worker.log_text()[logs_from[1]:], operation_id)
                time.sleep(0.2)
            facts["refused_after_heal"] = round(time.monotonic() - healed_at, 1) if refused else None
            if not refused:
                _failed(fault, workload, seed, started, facts, f"nothing of the cut-off worker's late run was "
                        f"refused within {LATE_TIMEOUT}s of the heal:\n{cut_off.log_tail()}")
        facts["refused"] = [line.split(" WARNING ", 1)[-1][:160] for line in refused[:2]]
    finally:
        if not healed:
            host.heal_all()
        cut_off.stop()
        try:
            consuming.start()
        except AssertionError:  # it consumes already, or is gone: the fixture starts a new one
            worker.stop()
    verdict(fault, workload, seed, operation_id, outcome, started, **facts)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_worker_cut_off_from_postgres_is_taken_over_and_its_late_writes_refused(
        worker, beat, worker_host, workload_name, seed):
    _partition("partition-postgres", "postgres", worker, worker_host, workload_name, seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_worker_cut_off_from_redis_does_not_hold_the_operation_up(worker, beat, worker_host, workload_name, seed):
    _partition("partition-broker", "redis", worker, worker_host, workload_name, seed)


def test_worker_sessions_ask_the_server_to_end_them_when_their_host_vanishes(worker):
    """The keepalives and user timeout of operations/integration.py reach a worker's session."""
    for name, value in integration.dead_client_settings(integration.idle_in_transaction_timeout_ms()).items():
        operation = services.operation_start(kind="session", params={"name": name}, actor="cli")
        assert wait_status(operation.pk, "completed").result == value.removesuffix("ms"), name
