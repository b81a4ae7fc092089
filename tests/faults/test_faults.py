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
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import close_old_connections, connection

from operations import services
from operations.contrib.demo.files import write_demo_csv
from operations.models import Operation
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


def drive_to_completion(operation_id, timeout=180, workers=()):
    """What an operator does: resume the interrupted and paused,
    retry the failed, until it completes; and what a process supervisor does: start a worker
    that exited. Returns the interventions."""
    interventions, deadline = [], time.monotonic() + timeout
    while True:
        for worker in workers:
            if not worker.alive():
                worker.kill()
                worker.start()
                worker.wait_ready()
                interventions.append("worker restarted")
        close_old_connections()
        services.operations_reconcile()
        status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).get()
        if status == Status.COMPLETED:
            return interventions
        try:
            if status in (Status.INTERRUPTED, Status.PAUSED):
                services.operation_resume(operation=operation_id, actor="cli")
                interventions.append(f"resume from {status}")
            elif status == Status.FAILED:
                services.operation_retry(operation=operation_id, actor="cli")
                interventions.append("retry")
        except services.TransitionRefused:
            pass  # it moved on meanwhile
        assert time.monotonic() < deadline, f"operation {operation_id} did not complete: {status}, {interventions}"
        time.sleep(0.3)


def verdict(fault, workload, seed, operation_id, interventions, started):
    problems = check_operation(operation_id, **workload.expected)
    record_run({"fault": fault, "workload": workload.name, "backend": BACKEND, "seed": seed,
                "problems": problems, "interventions": interventions,
                "seconds": round(time.monotonic() - started, 1)})
    assert problems == [], f"{fault}/{workload.name} seed {seed}: {problems}"


def supervise(worker):
    """What a process supervisor does after an outage: a worker that no longer answers is replaced."""
    try:
        worker.wait_ready(timeout=20)
        return []
    except (TimeoutError, RuntimeError):
        worker.kill()
        worker.start()
        worker.wait_ready()
        return ["worker restarted"]


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


# --- services that go down --------------------------------------------------------------------


def _wait(check, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.2)


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

SEEDS = range(ROUNDS)
WORKLOADS = ["import", "chain"]


@pytest.mark.backends("pg-redis", "pg-rabbitmq")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
@pytest.mark.parametrize("target", ["pool-child", "whole-worker"])
def test_sigkill(worker, target, workload_name, seed):
    rng, started = random.Random(f"sigkill-{target}-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    if target == "pool-child":
        for child in worker.children():  # the main process notices, gives the message back, forks anew
            child.send_signal(signal.SIGKILL)
    else:
        worker.kill()
        time.sleep(rng.uniform(0, 2))
        worker.start()
        worker.wait_ready()
    interventions = drive_to_completion(operation_id)
    verdict(f"sigkill-{target}", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_redis_restarted_without_persistence(worker, workload_name, seed):
    rng, started = random.Random(f"redis-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    restart_redis_losing_everything()  # the running step's unacknowledged message is gone
    worker.wait_ready(timeout=30)  # the same worker reconnected (operations/brokers/redis.py)
    interventions = drive_to_completion(operation_id)
    verdict("redis-restart", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_postgres_crashes_mid_chunk(worker, workload_name, seed):
    rng, started = random.Random(f"postgres-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    crash_and_restart_postgres(down_for=rng.uniform(0.5, 3))
    interventions = supervise(worker) + drive_to_completion(operation_id, workers=[worker])
    verdict("postgres-crash", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_queued_step_lost_with_redis_is_brought_back_by_the_reconciler(worker, workload_name, seed):
    """The step's only message waits in Redis, no worker has it, and Redis restarts empty: only
    the database knows the operation must go on. The reconciler marks it interrupted once its
    dispatch heartbeat is older than the lease; a resume re-sends the step from the stored workflow."""
    rng, started = random.Random(f"redis-queued-{workload_name}-{seed}"), time.monotonic()
    workload = workloads()[workload_name]
    operation_id = start_and_reach(workload, rng)
    services.operation_pause(operation=operation_id, actor="cli")
    wait_for(operation_id, lambda op: op.status in (Status.PAUSED, Status.COMPLETED), timeout=60, what="paused")
    worker.stop()
    services.operation_resume(operation=operation_id, actor="cli")  # the message waits in the queue
    _wait(lambda: redis_queue_length(settings.CELERY_TASK_DEFAULT_QUEUE) > 0, "the resumed step queued in Redis")
    restart_redis_losing_everything()
    assert redis_queue_length(settings.CELERY_TASK_DEFAULT_QUEUE) == 0
    worker.start()
    worker.wait_ready()
    interventions = drive_to_completion(operation_id)
    assert "resume from interrupted" in interventions, interventions
    verdict("redis-restart-queued", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_every_message_published_twice(worker, workload_name, seed, monkeypatch):
    from tapproject.celery import app
    from tests.faults import inject

    started = time.monotonic()
    workload = workloads()[workload_name]
    monkeypatch.setattr(app, "send_task", inject.publish_twice(app.send_task))  # this process's dispatches
    with replaced_worker(worker, "duplicating-worker", TAP_FAULTS="duplicate") as duplicating:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        interventions = drive_to_completion(operation_id)
        turned = turned_away(duplicating.log_text(), operation_id)
    assert turned, "the duplicates never reached the engine"
    verdict("duplicate-messages", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_step_outliving_the_visibility_timeout_is_fenced(worker, workload_name, seed):
    started = time.monotonic()
    # A long step: one import step of ~6 s, or chain steps of 4 s — past a 2 s visibility timeout.
    workload = workloads(rows_per_second=3500, step_delay=4)[workload_name]
    if workload_name == "chain":
        workload.params["steps"] = workload.expected["rows"] = workload.expected["result"] = workload.total = 3
    with replaced_worker(worker, "short-visibility-worker", TAP_FAULT_VISIBILITY="2") as redelivering:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        interventions = drive_to_completion(operation_id)
        turned = turned_away(redelivering.log_text(), operation_id)
    assert turned, "Redis never redelivered the long step"
    verdict("visibility-timeout", workload, seed, operation_id, interventions, started)


@pytest.mark.backends("pg-redis")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_a_frozen_worker_that_wakes_up_late_is_fenced_off(worker, workload_name, seed):
    rng, started = random.Random(f"sigstop-{workload_name}-{seed}"), time.monotonic()
    # Chain steps of 0.6 s: the freeze must land inside a step's body (between its write and its
    # advance), where the woken worker has writes to be refused — not in the few milliseconds
    # between steps, after which it has nothing left to write.
    workload = workloads(step_delay=0.6)[workload_name]
    operation_id = start_and_reach(workload, rng)
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        wait_for(operation_id, lambda op: op.pk in services.operations_reconcile() or op.status == Status.INTERRUPTED,
                 timeout=settings.TAP_HEARTBEAT_LEASE + 20, what="interrupted by the reconciler")
        rescuer = WorkerProcess(worker.env, worker.log_path.parent / "rescuer.log")
        rescuer.start()
        rescuer.wait_ready()
        interventions = drive_to_completion(operation_id)
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    time.sleep(3)  # the woken worker finishes its step: its writes must be refused
    rescuer.stop()
    verdict("sigstop-past-lease", workload, seed, operation_id, interventions, started)
    # Frozen inside a step, the woken worker's own writes are refused; frozen in the instant after
    # its advance committed, the next step it then sends is turned away by whichever worker takes it.
    assert turned_away(worker.log_text() + rescuer.log_text(), operation_id), worker.log_tail()


@pytest.mark.backends("sqlite-fs", "pg-redis", "pg-rabbitmq")
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
        done_before = Operation.objects.get(pk=operation_id).progress_done
        children = supervised.pool_children()
        assert len(children) == 2, children
        killed_at = time.monotonic()
        for child in children:
            child.send_signal(signal.SIGKILL)
        budget = settings.TAP_HEARTBEAT_LEASE + settings.TAP_RECONCILE_INTERVAL + 30
        moving = wait_for(operation_id, lambda op: op.progress_done > done_before or op.status == Status.COMPLETED,
                          timeout=budget, what="moving again")
        recovered_in = time.monotonic() - killed_at
        final = wait_for(operation_id, lambda op: op.status == Status.COMPLETED, timeout=120, what="completed")
    assert moving and final.status == Status.COMPLETED
    people = [f"{actor}: {a} → {b}" for a, b, actor in
              Operation.objects.get(pk=operation_id).events.values_list("from_status", "to_status", "actor")
              if actor not in ("worker", "beat", "cli") or (actor == "cli" and a)]
    verdict("sigkill-every-pool-child", workload, seed, operation_id, people, started)
    assert people == [], people
    assert recovered_in < budget
