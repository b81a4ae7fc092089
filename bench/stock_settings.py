"""The benchmarks' settings with kombu's own transports (TAP_BROKER_TRANSPORTS off): the worker
that runs ``overhead.py``'s *stock hop*, a bare Celery hop as Celery ships it."""

from tapproject.settings.dev import *  # noqa: F401,F403

TAP_BROKER_TRANSPORTS = False
