"""Celery tasks of the operations app: thin wrappers that take ids and call the engine or services."""

import os
import socket

from celery import shared_task
from celery.signals import task_prerun
from django.db import close_old_connections

from . import engine


@task_prerun.connect
def _drop_stale_connections(**kwargs):
    """Keep healthy connections across tasks (CELERY_DB_REUSE_MAX), drop broken or old ones."""
    close_old_connections()


# acks_late + reject_on_worker_lost, whatever the host's defaults: a step's message is acknowledged
# only after the step ran, and given back if its pool process dies meanwhile (manage.py check
# E007 / E008 report a host setting that turns either off).
STEP_OPTIONS = {"bind": True, "ignore_result": True, "acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="operations.run_step", **STEP_OPTIONS)
def run_step(self, operation_id, run_token, index):
    """One step of an operation; the message carries only what identifies the step."""
    engine.run_step(self, operation_id, run_token, index)


@shared_task(name="operations.run_member", **STEP_OPTIONS)
def run_member(self, operation_id, run_token, index, member_index):
    """One member of a group step (e.g. one task of a batch), run in parallel with the others."""
    engine.run_member(self, operation_id, run_token, index, member_index)


@shared_task(name="operations.reconcile", ignore_result=True)
def reconcile():
    """One round of the reconciler, on a worker (beat runs it in its own process by itself)."""
    from .reconciler import reconcile_once

    return reconcile_once()


@shared_task(name="operations.ping")
def ping(payload=None):
    """Round trip through broker, worker and result backend: used by health checks and tests."""
    return {"pong": payload, "hostname": socket.gethostname(), "pid": os.getpid()}
