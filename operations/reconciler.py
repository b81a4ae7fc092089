"""The reconciler: finds operations whose worker went silent, and brings them back.

It runs in a thread of **beat's own process** (started when beat starts, stand-alone or embedded
in a worker with ``-B``), not as a task on the workers. A task would wait for a free pool process
— exactly what is missing when every pool process of every worker is dead or wedged (an OOM
killer takes them all at once). Beat runs no step code, so a step cannot kill it; every
deployment runs exactly one beat, so no election is needed; and it already talks to the database.
Every TAP_RECONCILE_INTERVAL seconds it marks active operations whose heartbeat is older than the
lease ``interrupted`` and resumes those whose automatic resume is due, ends waits and sleeps whose
time came, resumes paused operations whose planned resume is due, and ends those past their
deadline or step time limit (``operations.services``); every TAP_RETENTION_INTERVAL seconds it
deletes the finished operations retention says are due.
Both are conditional UPDATEs, so a second reconciler (the ``operations.reconcile`` task run by
hand, another beat by mistake) does no harm.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import close_old_connections, connection

from . import services
from .conf import conf

log = logging.getLogger("operations.reconciler")


def reconcile_once() -> tuple[list[int], list[int]]:
    """One round: (ids marked interrupted, ids beat moved on by itself: resumed automatically or
    as planned, whose wait or sleep ended, or which it ended past their deadline)."""
    close_old_connections()
    interrupted = services.operations_reconcile()
    moved = (services.operations_recover() + services.operations_expire_waits()
             + services.operations_resume_planned() + services.operations_end_late()
             + services.operations_keep_windows())
    return interrupted, moved


def retain_once() -> services.PurgeOutcome:
    """One retention round (TAP_RETENTION): delete the finished operations that are due."""
    close_old_connections()
    return services.operations_retain()


class Reconciler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="operations-reconciler", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        log.info("reconciler started in this process (every %ss)", conf.RECONCILE_INTERVAL)
        retained_at = None
        while not self.stopped.is_set():
            try:
                interrupted, resumed = reconcile_once()
                if interrupted or resumed:
                    log.info("reconciler: interrupted %s, moved on %s", interrupted, resumed)
                if retained_at is None or time.monotonic() - retained_at >= conf.RETENTION_INTERVAL:
                    retained_at = time.monotonic()
                    retain_once()
                interval = conf.RECONCILE_INTERVAL
            except Exception:  # the database is away, say: try again next round
                log.exception("reconciler round failed; trying again")
                connection.close()
                interval = 5.0
            self.stopped.wait(interval)

    def stop(self) -> None:
        self.stopped.set()


_started: Reconciler | None = None


def start(sender: Any = None, **kwargs: Any) -> Reconciler:
    """``beat_init`` / ``beat_embedded_init``: one reconciler per process."""
    global _started
    if _started is None or not _started.is_alive():
        _started = Reconciler()
        _started.start()
    return _started
