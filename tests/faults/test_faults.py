"""Inject the faults, then check the history: nothing lost, nothing run twice (issue 6).

Each fault strikes at a random point (seeded) of a CSV import and of a multi-step chain whose
every step writes a row. Afterwards the operation is driven to completion the way an operator
would (resume what is interrupted or paused, retry what failed) and ``check_operation`` must
find exact row counts, no duplicate, the input's checksum and only legal transitions.

``TAP_FAULT_ROUNDS`` (default 1, ``make faults``: 10) sets how many seeds each fault gets; every
run is appended to var/faults/results.jsonl, from which docs/reliability.md is written.
"""

import csv
import os
import random
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.db import close_old_connections, connection

from operations import services
from operations.contrib.demo.files import write_demo_csv
from operations.models import Operation, OperationEvent
from operations.states import Status
from tests.conftest import BACKEND
from tests.faults.checker import check_operation, rows_checksum
from tests.faults.report import record_run
from tests.support.ops import wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("TAP_FAULT_ROUNDS", "1"))
IMPORT_ROWS = 20_000
CHAIN_STEPS = 25


# --- workloads --------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    kind: str
    params: dict
    expected: dict
    total: int


def workloads(rows_per_second=8000, step_delay=0.12):
    path = Path(settings.TAP_CSV_DIR) / "faults.csv"
    if not path.exists():
        write_demo_csv(path, rows=IMPORT_ROWS)
    with open(path, newline="") as f:
        checksum = rows_checksum((int(r[0]), r[1], r[2], f"{float(r[3]):.2f}", r[4]) for r in list(csv.reader(f))[1:])
    return {
        "import": Workload("import", "csv_import", {"path": path.name, "chunk_rows": 500,
                                                     "rows_per_second": rows_per_second},
                           {"rows": IMPORT_ROWS, "checksum": checksum}, IMPORT_ROWS),
        "chain": Workload("chain", "records", {"steps": CHAIN_STEPS, "delay": step_delay},
                          {"rows": CHAIN_STEPS, "result": CHAIN_STEPS}, CHAIN_STEPS),
    }


# --- driving and checking ---------------------------------------------------------------------


def start_and_reach(workload, rng):
    """Start the workload and wait until it reached a random point between 10 % and 70 %."""
    operation = services.operation_start(kind=workload.kind, params=workload.params, actor="cli")
    point = max(1, int(workload.total * rng.uniform(0.1, 0.7)))
    wait_for(operation.pk, lambda op: op.progress_done >= point or op.status == Status.COMPLETED,
             timeout=60, what=f"progress {point}")
    return operation.pk


def last_event(operation_id):
    """The id of the operation's newest event: what happens after it is the fault's aftermath."""
    return OperationEvent.objects.filter(operation_id=operation_id).order_by("-id").values_list("id", flat=True).first()


def aftermath(operation_id, after):
    """What brought the operation back after event ``after``: beat's automatic resumes, and any
    status change made by a person (anyone but a worker or beat) — which the suite must not need."""
    events = OperationEvent.objects.filter(operation_id=operation_id, id__gt=after or 0).order_by("id")
    changes = [(a, b, actor) for a, b, actor in events.values_list("from_status", "to_status", "actor") if a != b]
    people = [f"{actor}: {a} → {b}" for a, b, actor in changes if actor not in ("worker", "beat")]
    automatic = sum(1 for a, _, actor in changes if actor == "beat" and a == Status.INTERRUPTED)
    return people, automatic


def finish_unattended(operation_id, after, timeout=180):
    """Wait until the operation completes with nobody acting for it: beat's reconciler marks it
    interrupted and resumes it by its kind's policy; a worker under a supervisor starts again by
    itself. Returns ``(people, automatic resumes)`` since event ``after``."""
    wait_for(operation_id, lambda op: op.status == Status.COMPLETED, timeout=timeout, what="completed, unattended")
    return aftermath(operation_id, after)


def verdict(fault, workload, seed, operation_id, outcome, started, **extra):
    """Check the operation's data and history, record the run, fail on any problem — a person
    having had to act is one."""
    people, automatic = outcome
    problems = check_operation(operation_id, **workload.expected)
    if people:
        problems.append(f"a person had to act: {people}")
    record_run({"fault": fault, "workload": workload.name, "backend": BACKEND, "seed": seed,
                "problems": problems, "interventions": people, "auto_resumes": automatic,
                "seconds": round(time.monotonic() - started, 1), **extra})
    assert problems == [], f"{fault}/{workload.name} seed {seed}: {problems}"


def turned_away(log, operation_id):
    """Log lines where the engine refused a duplicate of a step: ignored at the claim, or fenced
    off (its writes rolled back) at the advance or a checkpoint."""
    return [line for line in log.splitlines() if f"operation {operation_id}:" in line
            and ("ignored" in line or "rolled back" in line or "discarded" in line)]


@contextmanager
def replaced_worker(session_worker, name, *, supervised=False, **extra_env):
    """Run with a worker started with ``extra_env`` in place of the session's worker."""
    session_worker.stop()
    special = WorkerProcess({**session_worker.env, **extra_env}, session_worker.log_path.parent / f"{name}.log",
                            supervised=supervised)
    special.start()
    special.wait_ready()
    try:
        yield special
    finally:
        special.kill()
        session_worker.start()
        session_worker.wait_ready()


@contextmanager
def second_worker(session_worker, name):
    """Another worker of the fleet next to the session's, stopped afterwards whatever happens."""
    other = WorkerProcess(session_worker.env, session_worker.log_path.parent / f"{name}.log")
    other.start()
    try:
        yield other.wait_started()
    finally:
        other.kill()


# --- services that go down --------------------------------------------------------------------


def _wait(check, what, timeout=60, every=0.2):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(every)
    return value


def _quiet(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def redis_up():
    return _quiet("redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping").stdout.strip() == "PONG"


def restart_redis_losing_everything():
    _quiet("redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave")
    _wait(lambda: not redis_up(), "Redis stops")
    _quiet("redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
           "--appendonly", "no")
    _wait(redis_up, "Redis starts")


def redis_queue_length(queue):
    db = settings.CELERY_BROKER_URL.rsplit("/", 1)[-1] or "0"
    return int(_quiet("redis-cli", "-h", "127.0.0.1", "-p", "6379", "-n", db, "llen", queue).stdout.strip() or 0)


def postgres_cluster():
    return ["pg_ctlcluster", "--skip-systemctl-redirect", sorted(os.listdir("/etc/postgresql"))[-1], "main"]


def postgres_up():
    return _quiet("pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q").returncode == 0


def crash_and_restart_postgres(down_for):
    connection.close()
    _quiet(*postgres_cluster(), "stop", "-m", "immediate")
    _wait(lambda: not postgres_up(), "PostgreSQL stops")
    time.sleep(down_for)
    _quiet(*postgres_cluster(), "start")
    _wait(postgres_up, "PostgreSQL starts")
    connection.close()


# --- the faults -------------------------------------------------------------------------------
# Every fault test runs with beat (its reconciler thread resumes by the kinds' recovery policy)
# and acts for nobody after the fault: ``finish_unattended`` only waits, and ``verdict`` counts
# any status change a person made as a problem.

SEEDS = range(ROUNDS)
WORKLOADS = ["import", "chain"]
EVERY_BACKEND = ("sqlite-fs", "pg-redis", "pg-rabbitmq")


@pytest.mark.backends(*EVERY_BACKEND)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
@pytest.mark.parametrize("target", ["pool-child", "whole-worker"])
def test_sigkill(worker, beat, target, workload_name, seed):
    rng, started = random.Random(f"sigkill-{target}-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    if target == "pool-child":  # the worker runs under its supervisor, as in deployment (Procfile)
        with replaced_worker(worker, "supervised-worker", supervised=True) as supervised:
            operation_id = start_and_reach(workload, rng)
            after, pid = last_event(operation_id), supervised.worker_main().pid
            child = running_pool_child(supervised, rng)
            child.send_signal(signal.SIGKILL)  # the main process notices, gives the message back, forks anew
            outcome = finish_unattended(operation_id, after)
            main = supervised.worker_main()
        restarts = int(main is None or main.pid != pid)
    else:  # the machine loses power; its process supervisor starts the worker when it is back
        operation_id = start_and_reach(workload, rng)
        after = last_event(operation_id)
        worker.kill()
        time.sleep(rng.uniform(0, 2))
        worker.start()
        worker.wait_ready()
        outcome, restarts = finish_unattended(operation_id, after), 1
    verdict(f"sigkill-{target}", workload, seed, operation_id, outcome, started, restarts=restarts)


def running_pool_child(worker, rng):
    """The pool process that used the most CPU over 0.3 s (the one in a step); ties by ``rng``."""
    children = worker.pool_children()
    assert children, "the worker has no pool process"
    for child in children:
        child.cpu_percent(None)
    time.sleep(0.3)
    used = {child: child.cpu_percent(None) for child in children}
    return max(rng.sample(children, len(children)), key=used.get)


@pytest.mark.restarts_services
@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_redis_restarted_without_persistence(worker, beat, workload_name, seed):
    rng, started = random.Random(f"redis-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    after = last_event(operation_id)
    restart_redis_losing_everything()  # the running step's unacknowledged message is gone
    worker.wait_ready(timeout=30)  # the same worker reconnected (operations/brokers/redis.py)
    outcome = finish_unattended(operation_id, after)
    verdict("redis-restart", workload, seed, operation_id, outcome, started)


@pytest.mark.restarts_services
@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_postgres_crashes_mid_chunk(worker, beat, workload_name, seed):
    rng, started = random.Random(f"postgres-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    with replaced_worker(worker, "supervised-worker", supervised=True) as supervised:
        operation_id = start_and_reach(workload, rng)
        after, pid = last_event(operation_id), supervised.worker_main().pid
        crash_and_restart_postgres(down_for=rng.uniform(0.5, 3))
        outcome = finish_unattended(operation_id, after)
        main = supervised.worker_main()
    verdict("postgres-crash", workload, seed, operation_id, outcome, started,
            restarts=int(main is None or main.pid != pid))


@pytest.mark.restarts_services
@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_queued_step_lost_with_redis_is_brought_back_by_the_reconciler(worker, beat, workload_name, seed):
    """The step's only message waits in Redis, no worker has it, and Redis restarts empty: only
    the database knows the operation must go on. Beat's reconciler marks it interrupted once its
    dispatch heartbeat is older than the lease and resumes it, re-sending the step from the
    stored workflow."""
    rng, started = random.Random(f"redis-queued-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    services.operation_pause(operation=operation_id, actor="cli")  # setting the fault up
    wait_for(operation_id, lambda op: op.status in (Status.PAUSED, Status.COMPLETED), timeout=60, what="paused")
    worker.stop()
    services.operation_resume(operation=operation_id, actor="cli")  # the message waits in the queue
    _wait(lambda: redis_queue_length(settings.CELERY_TASK_DEFAULT_QUEUE) > 0, "the resumed step queued in Redis")
    after = last_event(operation_id)
    restart_redis_losing_everything()
    assert redis_queue_length(settings.CELERY_TASK_DEFAULT_QUEUE) == 0
    worker.start()
    worker.wait_ready()
    outcome = finish_unattended(operation_id, after)
    assert outcome[1] >= 1, "beat never resumed the operation whose message was lost"
    verdict("redis-restart-queued", workload, seed, operation_id, outcome, started)


@pytest.mark.backends(*EVERY_BACKEND)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_every_message_published_twice(worker, beat, workload_name, seed, monkeypatch):
    from tapproject.celery import app
    from tests.faults import inject

    started = time.monotonic()
    workload = workloads()[workload_name]
    monkeypatch.setattr(app, "send_task", inject.publish_twice(app.send_task))  # this process's dispatches
    with replaced_worker(worker, "duplicating-worker", TAP_FAULTS="duplicate") as duplicating:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        outcome = finish_unattended(operation_id, last_event(operation_id))
        turned = turned_away(duplicating.log_text(), operation_id)
    assert turned, "the duplicates never reached the engine"
    verdict("duplicate-messages", workload, seed, operation_id, outcome, started)


@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.parametrize("seed", SEEDS)
def test_every_message_of_pure_steps_published_twice_while_their_advances_ran(worker, beat, seed, monkeypatch):
    """Pure steps through the broker (a kind without slices): each message goes out while the
    advance before it runs, carrying that advance's token. Published twice, both copies may run
    the step at once; the copy whose advance lost sends a message no row carries the token of,
    which is dropped — one chain, the classic result, no person."""
    from operations.contrib.demo.kinds.arithmetic import expected_result
    from tapproject.celery import app
    from tests.faults import inject

    started, steps = time.monotonic(), 40
    workload = Workload("pure-chain", "tests.arithmetic_manual", {"steps": steps, "delay": 0.02},
                        {"rows": 0, "result": expected_result(4, steps)}, steps)
    monkeypatch.setattr(app, "send_task", inject.publish_twice(app.send_task))
    with replaced_worker(worker, "duplicating-worker", TAP_FAULTS="duplicate") as duplicating:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        outcome = finish_unattended(operation_id, last_event(operation_id))
        turned = turned_away(duplicating.log_text(), operation_id)
    assert turned, "the duplicates never reached the engine"
    assert Operation.objects.get(pk=operation_id).hop != 0, "no message went out beside its advance"
    verdict("duplicate-messages", workload, seed, operation_id, outcome, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_step_outliving_the_visibility_timeout_is_fenced(worker, beat, workload_name, seed):
    started = time.monotonic()
    # A long step: one import step of ~6 s, or chain steps of 4 s — past a 2 s visibility timeout.
    workload = workloads(rows_per_second=3500, step_delay=4)[workload_name]
    if workload_name == "chain":
        workload.params["steps"] = workload.expected["rows"] = workload.expected["result"] = workload.total = 3
    with replaced_worker(worker, "short-visibility-worker", TAP_FAULT_VISIBILITY="2") as redelivering:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        outcome = finish_unattended(operation_id, last_event(operation_id))
        turned = turned_away(redelivering.log_text(), operation_id)
    assert turned, "Redis never redelivered the long step"
    verdict("visibility-timeout", workload, seed, operation_id, outcome, started)


@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_frozen_worker_that_wakes_up_late_is_fenced_off(worker, beat, workload_name, seed):
    """A second worker of the fleet is running when the first freezes mid-step (SIGSTOP) past its
    lease: beat marks the operation interrupted and resumes it, the second worker finishes it,
    and when the first wakes up its late writes are refused.

    Not on SQLite: a process frozen inside a write transaction holds SQLite's one write lock, so
    nobody — beat included — can write until it continues or dies (docs/reliability.md)."""
    rng, started = random.Random(f"sigstop-{workload_name}-{seed}"), time.monotonic()
    # Chain steps of 0.6 s: the freeze must land inside a step's body (between its write and its
    # advance), where the woken worker has writes to be refused — not in the few milliseconds
    # between steps, after which it has nothing left to write.
    workload = workloads(step_delay=0.6)[workload_name]
    with second_worker(worker, "rescuer") as rescuer:
        operation_id = start_and_reach(workload, rng)
        after = last_event(operation_id)
        # A chain's task (two steps of 0.6 s): within 0.4 s of its "received", inside the first
        # step's body. Later, the pool child may have finished the task (its advance committed, the
        # next message out) while the main process has not logged it yet, and the woken worker
        # would have nothing left to refuse. The import is one long step: any moment is inside it.
        within = 0.4 if workload_name == "chain" else None
        frozen = _wait(lambda: step_holder(worker, rescuer, received_within=within), "a worker in a step",
                       every=0.05)
        os.killpg(frozen.proc.pid, signal.SIGSTOP)
        try:
            wait_for(operation_id, lambda op: op.status == Status.INTERRUPTED or op.status == Status.COMPLETED,
                     timeout=settings.TAP_HEARTBEAT_LEASE + 20, what="interrupted by beat")
            outcome = finish_unattended(operation_id, after)
        finally:
            os.killpg(frozen.proc.pid, signal.SIGCONT)
        time.sleep(3)  # the woken worker finishes its step: its writes must be refused
    verdict("sigstop-past-lease", workload, seed, operation_id, outcome, started)
    # Frozen inside a step, the woken worker's own writes are refused; frozen in the instant after
    # its advance committed, the next step it then sends is turned away by whichever worker takes it.
    assert turned_away(worker.log_text() + rescuer.log_text(), operation_id), frozen.log_tail()


_TASK_LINE = re.compile(r"^(\S+ \S+) \S+ \S+ Task operations\.run_step\[([0-9a-f-]+)\] "
                        r"(received|succeeded|failed|retry|raised)", re.MULTILINE)


def step_holder(*workers, received_within=None):
    """The one worker whose log shows a step received and not yet finished, or None. Only the
    current run counts: a session worker killed mid-step by an earlier test left that step open in
    the log it appends to. ``received_within``: only a step received at most that many seconds
    ago (the log's local time) counts."""
    holding = []
    for candidate in workers:
        open_tasks = {}
        for at, task_id, what in _TASK_LINE.findall(candidate.log_since_start()):
            if what == "received":
                open_tasks[task_id] = datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f")
            else:
                open_tasks.pop(task_id, None)
        if received_within is not None:
            now = datetime.now()
            open_tasks = {task: at for task, at in open_tasks.items() if (now - at).total_seconds() <= received_within}
        if open_tasks:
            holding.append(candidate)
    return holding[0] if len(holding) == 1 else None


def kill_every_pool_child(worker, operation_id):
    """SIGKILL every pool child; returns when, and the operation's progress once they are gone —
    read before the kill, a checkpoint committed in between would look like the operation moving
    again. The pause lets a COMMIT the server had already received land first."""
    children = worker.pool_children()
    assert len(children) == 2, children
    for child in children:
        child.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    psutil.wait_procs(children, timeout=10)
    time.sleep(0.3)
    close_old_connections()
    return killed_at, Operation.objects.get(pk=operation_id).progress_done


@pytest.mark.backends(*EVERY_BACKEND)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_pool_child_killed_at_once_mid_import(worker, beat, seed):
    """What the OOM killer does to a big step: all of a worker's pool processes die at once.

    The worker runs under ``operations.supervise``, beat's reconciler recovers by the kind's
    policy, and nothing here acts for a person: within lease + reconcile interval + 30 s the
    import is moving again, and it ends with exactly its rows. On Redis the pool replaces its dead
    children (operations.pool) and the message comes back; the filesystem broker's blocking pool
    wedges, its watchdog ends the worker, the supervisor starts a new one, and beat resumes."""
    rng, started = random.Random(f"kill-pool-{seed}"), time.monotonic()
    workload = workloads()["import"]
    with replaced_worker(worker, "supervised-worker", supervised=True) as supervised:
        operation_id = start_and_reach(workload, rng)
        after = last_event(operation_id)
        killed_at, done_before = kill_every_pool_child(supervised, operation_id)
        budget = settings.TAP_HEARTBEAT_LEASE + settings.TAP_RECONCILE_INTERVAL + 30
        wait_for(operation_id, lambda op: op.progress_done > done_before or op.status == Status.COMPLETED,
                 timeout=budget, what="moving again")
        recovered_in = time.monotonic() - killed_at
        outcome = finish_unattended(operation_id, after, timeout=120)
    verdict("sigkill-every-pool-child", workload, seed, operation_id, outcome, started,
            recovered_in=round(recovered_in, 1))
    assert recovered_in < budget


@pytest.mark.backends("sqlite-fs", "pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
def test_every_pool_child_killed_with_automatic_recovery_off(worker, beat, seed):
    """The same fault for a kind without automatic recovery. Within lease + reconcile interval +
    30 s the operation is either moving again — the broker gave the message back and the pool
    forked new children (Redis, RabbitMQ), no resume needed — or shown interrupted with its
    heartbeat's age on its page (the filesystem broker lost the message with the wedged worker),
    and beat leaves it so; then one resume, the person this kind asks for, finishes it."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    rng, started = random.Random(f"kill-pool-manual-{seed}"), time.monotonic()
    workload = workloads()["import"]
    workload.kind = "tests.csv_import_manual"
    with replaced_worker(worker, "supervised-worker", supervised=True) as supervised:
        operation_id = start_and_reach(workload, rng)
        after = last_event(operation_id)
        killed_at, done_before = kill_every_pool_child(supervised, operation_id)
        budget = settings.TAP_HEARTBEAT_LEASE + settings.TAP_RECONCILE_INTERVAL + 30
        seen = wait_for(operation_id, lambda op: op.status in (Status.INTERRUPTED, Status.COMPLETED)
                        or op.progress_done > done_before, timeout=budget, what="interrupted or moving again")
        seen_in, expected_people = time.monotonic() - killed_at, 0
        if seen.status == Status.INTERRUPTED:
            assert seen.resume_at is None  # nobody but a person brings it back
            client = Client()
            client.force_login(get_user_model().objects.create_superuser(f"watcher{seed}", "w@example.com", "pw"))
            page = client.get(f"/operations/{operation_id}/progress/").content.decode()
            assert 'data-status="interrupted"' in page and 'data-testid="heartbeat-age"' in page, page
            time.sleep(settings.TAP_RECONCILE_INTERVAL * 3)
            assert Operation.objects.get(pk=operation_id).status == Status.INTERRUPTED  # beat left it alone
            supervised.wait_ready()  # a person resumes once a worker answers again
            services.operation_resume(operation=operation_id, actor="cli")
            expected_people = 1
        people, automatic = finish_unattended(operation_id, after, timeout=120)
    assert automatic == 0, "beat resumed an operation whose kind has automatic recovery off"
    assert len(people) == expected_people and all(p.startswith("cli: interrupted") for p in people), people
    verdict("sigkill-every-pool-child-manual", workload, seed, operation_id, ([], automatic), started,
            shown="interrupted" if expected_people else "moving", seen_in=round(seen_in, 1))
