"""Helpers for tests that drive operations through a real worker."""

import threading
import time

from django.db import close_old_connections, connection

from operations import services
from operations.models import Operation
from operations.states import ACTIVE, TERMINAL


def wait_for(operation_id, predicate, timeout=60, what="the condition"):
    """Poll the row until ``predicate(operation)`` holds; fail with the row's state if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        operation = Operation.objects.get(pk=operation_id)
        if predicate(operation):
            return operation
        if time.monotonic() > deadline:
            raise AssertionError(
                f"operation {operation_id}: {what} not reached in {timeout}s; it is {operation.status} "
                f"at step {operation.step_index}, error={operation.error!r}, "
                f"events={list(operation.events.values_list('from_status', 'to_status', 'note'))}"
            )
        time.sleep(0.05)


def wait_status(operation_id, *statuses, timeout=60):
    return wait_for(operation_id, lambda op: op.status in statuses, timeout, f"status {statuses}")


def wait_settled(operation_id, timeout=60):
    """Until no worker has anything left to do for it (not running, pause or cancel requested)."""
    return wait_for(operation_id, lambda op: op.status not in ACTIVE, timeout, "a settled status")


def transitions(operation_id):
    return list(Operation.objects.get(pk=operation_id).events.order_by("at", "id")
                .exclude(from_status__isnull=True)
                .values_list("from_status", "to_status", "actor"))


def status_changes(operation_id):
    """The (from, to, actor) of each event that changed the status (notes excluded)."""
    return [t for t in transitions(operation_id) if t[0] != t[1]]


def run_concurrently(count, action):
    """Run ``action()`` in ``count`` threads released at the same instant; return their outcomes.

    An outcome is the return value, or the exception raised. Each thread closes its connection.
    """
    outcomes, barrier, lock = [], threading.Barrier(count), threading.Lock()

    def run():
        try:
            barrier.wait()
            outcome = action()
        except Exception as exc:  # the outcome under test
            outcome = exc
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def describe(operation_id):
    """The row's position and its whole history, for a failure message that explains itself."""
    operation = Operation.objects.get(pk=operation_id)
    events = [(e.at.strftime("%H:%M:%S.%f"), e.actor, e.from_status, e.to_status, e.note)
              for e in operation.events.order_by("at", "id")]
    return (f"operation {operation_id} ({operation.kind}) is {operation.status} at step {operation.step_index}"
            f"/{len(operation.workflow['steps'])}, run {operation.run_token}, fence {operation.fence}, "
            f"error={operation.error!r}, events={events}")


def settle_all(operation_ids, act, *, workers=(), timeout=90, what=""):
    """Until every operation is completed or cancelled, ``act(operation_id, status)`` on each one
    no worker holds (paused, failed, interrupted), as an operator would.

    A worker found dead is restarted and from then on the reconciler runs, as a supervisor and
    beat would do, so that what the dead worker held becomes interrupted and ``act`` can resume
    it. Returns the log tails of the deaths.
    """
    pending, deaths = set(operation_ids), []
    deadline = time.monotonic() + timeout
    while pending:
        for worker in workers:
            if not worker.alive():
                deaths.append(worker.log_tail(100))
                worker.kill()  # its pool children, if any outlived it
                worker.start()
                worker.wait_ready()
        close_old_connections()
        if deaths:
            services.operations_reconcile()
        for operation_id, status in Operation.objects.filter(pk__in=pending).values_list("id", "status"):
            if status in TERMINAL:
                pending.discard(operation_id)
            elif status not in ACTIVE:
                act(operation_id, status)
        if time.monotonic() > deadline:
            unsettled = "\n".join(describe(operation_id) for operation_id in sorted(pending))
            raise AssertionError(f"{what}: {len(pending)} operation(s) not settled within {timeout}s:\n{unsettled}")
        time.sleep(0.1)
    return deaths
