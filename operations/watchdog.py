"""A worker's watchdog: notices a pool that no longer takes work, and makes the worker exit.

A prefork worker can wedge: its main process still receives messages and answers pings, but no
pool process ever takes a job again (children killed while holding a queue lock, celery/celery
#2011; ``operations.pool`` prevents the known case on event-loop brokers, not on the filesystem
broker's blocking pool). The watchdog, a thread of the worker's main process, looks every few
seconds at the messages the worker holds: when one has waited longer than TAP_WATCHDOG_TIMEOUT
for a pool process while fewer jobs run than the pool has processes, the pool is wedged. It
logs why, kills the pool's processes and exits with status 70, for its supervisor (``python -m
operations.supervise``, systemd, a container's restart policy) to start a fresh worker. The
operation it held goes silent; beat's reconciler marks it interrupted and resumes it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery import bootsteps
from celery.worker import state

from .conf import conf

log = logging.getLogger("operations.watchdog")

EXIT_WEDGED = 70  # EX_SOFTWARE


def waiting_too_long(now: float, seen: dict[str, float], *, reserved: list[Any], active: list[Any],
                     processes: int, timeout: float) -> Any | None:
    """The request that shows the pool is wedged, if any; ``seen`` remembers when each request
    was first seen waiting (and forgets those that left)."""
    waiting = {id(request): request for request in reserved if not getattr(request, "time_start", None)}
    for key in list(seen):
        if key not in waiting:
            del seen[key]
    for key in waiting:
        seen.setdefault(key, now)
    running = sum(1 for request in active if getattr(request, "time_start", None))
    if running >= processes:
        return None  # every process busy: waiting is normal
    for key, since in seen.items():
        if now - since > timeout:
            return waiting[key]
    return None


class Watchdog(bootsteps.StartStopStep):
    """Worker bootstep (main process) that runs the watchdog thread for prefork pools."""

    requires = ("celery.worker.components:Pool",)
    label = "operations watchdog"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.stopped = threading.Event()

    def start(self, worker: Any) -> None:
        timeout = conf.WATCHDOG_TIMEOUT
        pool = getattr(worker.pool, "_pool", None)
        if not timeout or pool is None or not hasattr(pool, "_pool"):  # not a prefork pool
            return
        threading.Thread(target=self.watch, args=(worker, float(timeout)), name="operations-watchdog",
                         daemon=True).start()

    def stop(self, worker: Any) -> None:
        self.stopped.set()

    def watch(self, worker: Any, timeout: float) -> None:
        seen: dict[str, float] = {}
        while not self.stopped.wait(min(5.0, timeout / 4)):
            request = waiting_too_long(time.monotonic(), seen, reserved=list(state.reserved_requests),
                                       active=list(state.active_requests), processes=worker.concurrency,
                                       timeout=timeout)
            if request is not None and not self.stopped.is_set():
                self.exit(worker, request, timeout)

    def exit(self, worker: Any, request: Any, timeout: float) -> None:
        log.critical("the pool has taken no job for %.0fs (%s is still waiting, %d process(es)): the worker is "
                     "wedged and exits, for its supervisor to start a new one", timeout,
                     getattr(request, "name", request), worker.concurrency)
        for process in list(getattr(worker.pool._pool, "_pool", [])):
            try:
                os.kill(process.pid, signal.SIGKILL)
            except (OSError, TypeError):
                pass
        logging.shutdown()
        os._exit(EXIT_WEDGED)


def install(app: Any) -> None:
    """Add the watchdog to ``app``'s workers (a worker that is not prefork ignores it)."""
    steps = app.steps["worker"]
    if Watchdog not in steps:
        steps.add(Watchdog)
