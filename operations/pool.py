"""Celery's prefork pool, with a pool child's queues replaced when the child dies.

An idle pool child waits for its next job inside ``SimpleQueue.get``, holding the queue's read
lock. When it is killed there — what the OOM killer does to all of a worker's children at once
(celery/celery#2011) — Celery gives its queues, lock still held, to the child that replaces it,
which then waits on that lock forever: the worker accepts messages but runs nothing again. Here a
dead child's queues are closed and a fresh set takes their place, as Celery already does when a
child dies half-way through reading a job.

Use it with ``CELERY_WORKER_POOL = "operations.pool:TaskPool"`` (``manage.py check`` warns,
operations.W016, when a prefork worker would run without it).
"""

from __future__ import annotations

from typing import Any

from celery.concurrency import asynpool, prefork


class AsynPool(asynpool.AsynPool):
    def _process_cleanup_queues(self, proc: Any) -> None:
        # Called by billiard for every child that exited, just before on_process_down; the
        # queues are released here and destroyed once Celery has unhooked them from its loop.
        try:
            proc._operations_used_queues = self._find_worker_queues(proc)
        except ValueError:
            proc._operations_used_queues = None
        super()._process_cleanup_queues(proc)

    def _create_process_handlers(self, hub: Any, *args: Any, **kwargs: Any) -> Any:
        result = super()._create_process_handlers(hub, *args, **kwargs)
        on_process_down = self.on_process_down

        def replace_queues_of_dead_process(proc: Any) -> Any:
            outcome = on_process_down(proc)
            queues = getattr(proc, "_operations_used_queues", None)
            if queues is not None and queues in self._queues and self._queues[queues] is None:
                if self.destroy_queues(queues, proc):
                    self._queues[self.create_process_queues()] = None
            return outcome

        self.on_process_down = replace_queues_of_dead_process
        return result


class TaskPool(prefork.TaskPool):
    Pool = AsynPool
