"""Celery tasks of the operations app. Tasks take ids, never model instances."""

import os
import socket

from celery import shared_task


@shared_task(name="operations.ping")
def ping(payload=None):
    """Round trip through broker, worker and result backend: used by health checks and tests."""
    return {"pong": payload, "hostname": socket.gethostname(), "pid": os.getpid()}
