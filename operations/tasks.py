"""Celery tasks of the operations app: thin wrappers that take ids and call the engine or services."""

import logging
import os
import socket

from billiard.exceptions import WorkerLostError
from celery import shared_task
from celery.signals import task_prerun
from celery.worker.request import Request
from django.db import close_old_connections, connections

from . import engine, services
from .control import STEP_TASKS

log = logging.getLogger("operations.engine")


class StepRequest(Request):
    """A step message, seen from the worker's main process: when the pool process running it
    dies (killed, out of memory), the operation's row counts the death towards the poison limit
    before Celery gives the message back to the broker."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # billiard wraps it
        if isinstance(exc, WorkerLostError) and len(self.args) == 3:
            try:
                close_old_connections()
                services.step_worker_lost(*self.args)
            except Exception:  # the database is away: the reconciler counts it when it interrupts
                log.exception("could not count the lost worker of step message %s", self.args)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


#: Tasks whose first statement, the claim, checks the connection itself (engine._claim). Importing
#: operations.control also registers the worker's terminate command.
CLAIMING_TASKS = STEP_TASKS


@task_prerun.connect
def _drop_stale_connections(task=None, **kwargs):
    """Keep healthy connections across tasks (CELERY_DB_REUSE_MAX), drop broken or old ones.

    A step's claim is its health check: a connection that broke while idle fails the claim's
    read, and the engine opens a new one and claims again. So steps skip the SELECT 1 that
    CONN_HEALTH_CHECKS would send first, a round trip per step."""
    close_old_connections()
    if task is not None and task.name in CLAIMING_TASKS:
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                connection.health_check_done = True


# acks_late + reject_on_worker_lost, whatever the host's defaults: a step's message is acknowledged
# only after the step ran, and given back if its pool process dies meanwhile (manage.py check
# E007 / E008 report a host setting that turns either off).
STEP_OPTIONS = {"bind": True, "ignore_result": True, "acks_late": True, "reject_on_worker_lost": True,
                "Request": StepRequest}


@shared_task(name="operations.run_step", **STEP_OPTIONS)
def run_step(self, operation_id, run_token, index, hop=None):
    """One step of an operation; the message carries only what identifies the step (and, when it
    was published while the advance before it ran, that advance's token)."""
    engine.run_step(self, operation_id, run_token, index, hop=hop)


@shared_task(name="operations.run_member", **STEP_OPTIONS)
def run_member(self, operation_id, run_token, index, member_index):
    """One member of a group step (e.g. one task of a batch), run in parallel with the others."""
    engine.run_member(self, operation_id, run_token, index, member_index)


@shared_task(name="operations.reconcile", ignore_result=True)
def reconcile():
    """One round of the reconciler, on a worker (beat runs it in its own process by itself)."""
    from .reconciler import reconcile_once

    return reconcile_once()


@shared_task(name="operations.fire_schedule", bind=True, ignore_result=True, acks_late=True)
def fire_schedule(self, schedule_id):
    """A schedule's beat entry fired: start its operation (operations.schedules)."""
    from .schedules import schedule_fire

    schedule_fire(schedule_id, firing_id=self.request.id or "")


@shared_task(name="operations.ping")
def ping(payload=None):
    """Round trip through broker, worker and result backend: used by health checks and tests."""
    return {"pong": payload, "hostname": socket.gethostname(), "pid": os.getpid()}
