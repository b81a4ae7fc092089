"""Load: 200 operations started at once on two workers (issue 6).

190 ``arithmetic`` chains (3–5 steps, no delay) and 10 ``records`` chains are started from eight
threads at the same instant, for the session's worker and a second one. All must complete, every
history and every result must check out, and neither worker's log may show the control bus
failing under the load: no "database is locked", no "deadlock detected", no ERROR, no traceback.
"""

import re
import threading
import time

import pytest

from operations import services
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.models import Operation
from operations.states import Status
from tests.conftest import BACKEND
from tests.faults.checker import check_operation
from tests.faults.report import record_run
from tests.support.ops import describe, run_concurrently, settle_all
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis")]

ARITHMETIC, RECORDS, STARTERS = 190, 10, 8
TIMEOUT = 150
#: What says the control bus failed under load.
BAD = re.compile(r"database is locked|deadlock detected|Traceback|\b(ERROR|CRITICAL)\b")
#: A log record starts with a timestamp; the lines up to the next one (a traceback) belong to it.
RECORD_START = re.compile(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )")


def workload():
    """(kind, params, what check_operation expects once completed) for each operation."""
    chains = [("arithmetic", {"x": i, "steps": 3 + i % 3}, {"result": expected_result(i, 3 + i % 3)})
              for i in range(ARITHMETIC)]
    records = [("records", {"steps": 5 + i}, {"rows": 5 + i, "result": 5 + i}) for i in range(RECORDS)]
    return chains + records


def start_all_at_once(specs):
    """Start every spec from STARTERS threads released together; {operation id: expectations}."""
    pending, lock, expected = list(specs), threading.Lock(), {}

    def start_some():
        while True:
            with lock:
                if not pending:
                    return
                kind, params, expectations = pending.pop()
            operation = services.operation_start(kind=kind, params=params, actor="cli")
            with lock:
                expected[operation.pk] = expectations

    failures = [outcome for outcome in run_concurrently(STARTERS, start_some) if outcome is not None]
    assert failures == [], failures
    return expected


def trouble(log_text):
    """The log records that say something failed."""
    return [record for record in RECORD_START.split(log_text) if BAD.search(record)]


def only_resume_the_interrupted(operation_id, status):
    """Nothing may pause or fail under load; what a dead worker held (interrupted) is resumed."""
    assert status == Status.INTERRUPTED, describe(operation_id)
    services.operation_resume(operation=operation_id, actor="cli")


def test_two_hundred_operations_at_once_on_two_workers(worker, subprocess_env, worker_log_dir):
    offset = len(worker.log_text())
    second = WorkerProcess(subprocess_env, worker_log_dir / "load-worker.log", concurrency=2)
    second.start()
    try:
        second.wait_started()
        began = time.monotonic()
        expected = start_all_at_once(workload())
        started = time.monotonic()
        deaths = settle_all(expected, only_resume_the_interrupted, workers=[worker, second],
                            timeout=TIMEOUT, what="load")
        finished = time.monotonic()
    finally:
        second.stop()
    print(f"load: {len(expected)} operations started in {started - began:.1f}s, "
          f"all ended {finished - started:.1f}s later")

    assert len(expected) == ARITHMETIC + RECORDS
    statuses = set(Operation.objects.filter(pk__in=expected).values_list("status", flat=True))
    problems = {op: found for op, expectations in expected.items() if (found := check_operation(op, **expectations))}
    logs = {"session worker": worker.log_text()[offset:], "second worker": second.log_text()}
    log_trouble = {name: found for name, text in logs.items() if (found := trouble(text))}
    record_run({"fault": "load", "backend": BACKEND, "operations": len(expected), "workers": 2,
                "start seconds": round(started - began, 1), "end seconds": round(finished - started, 1),
                "worker deaths": len(deaths), "problems": list(problems.items()) + list(log_trouble.items())})
    assert statuses == {Status.COMPLETED}
    assert problems == {}, problems
    assert log_trouble == {}, log_trouble
    assert all("operations.run_step[" in text for text in logs.values()), "both workers must have run steps"
    assert deaths == [], "a worker died under load:\n" + "\n\n".join(deaths)
