"""Helpers for tests that drive operations through a real worker."""

import threading
import time

from django.db import close_old_connections, connection

from operations.models import Operation
from operations.states import ACTIVE


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
