"""How the app fits itself into the host's Celery app and database connections when Django starts.

- the Celery app gets the app's fixed broker transport for its broker URL (``operations.brokers``);
- beat's process gets the reconciler thread (``operations.reconciler``), and a worker's main
  process the watchdog that notices a wedged pool (``operations.watchdog``);
- PostgreSQL sessions of worker processes get ``idle_in_transaction_session_timeout``, so that a
  worker frozen inside a transaction (SIGSTOP, a hung host) cannot hold its rows' locks past the
  heartbeat lease: the server ends that session and a resumed run can take the rows over.

Each is on by default and can be turned off by a setting (docs/settings.md).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery._state import _get_active_apps, connect_on_app_finalize
from django.db import connections
from django.db.backends.signals import connection_created

from . import brokers, reconciler, watchdog
from .conf import conf

log = logging.getLogger("operations")

_configured: set[int] = set()


def configure_celery_app(app: Any) -> None:
    """Give ``app`` the app's broker transport (unless the host chose one) and the watchdog."""
    if id(app) in _configured:
        return
    _configured.add(id(app))
    if conf.BROKER_TRANSPORTS and not app.conf.broker_transport:
        transport = brokers.transport_for(app.conf.broker_url)
        if transport:
            app.conf.broker_transport = transport
    watchdog.install(app)


def install() -> None:
    """Called by ``OperationsConfig.ready``: every Celery app, now and later, beat, and the database."""
    for app in list(_get_active_apps()):
        configure_celery_app(app)
    connect_on_app_finalize(configure_celery_app)
    signals.beat_init.connect(reconciler.start, weak=False, dispatch_uid="operations.reconciler")
    signals.beat_embedded_init.connect(reconciler.start, weak=False, dispatch_uid="operations.reconciler.embedded")
    signals.worker_init.connect(_in_worker, weak=False, dispatch_uid="operations.worker_init")
    connection_created.connect(_session_settings, weak=False, dispatch_uid="operations.session_settings")


# --- PostgreSQL session settings of worker processes --------------------------------------------

_worker = False


def _in_worker(**kwargs: Any) -> None:
    """A worker starts (before its pool forks): its sessions, and its children's, get the settings.
    Connections opened before now (checks, imports) are closed so that they reopen with them."""
    global _worker
    _worker = True
    connections.close_all()


def idle_in_transaction_timeout_ms() -> int:
    """TAP_IDLE_IN_TRANSACTION_TIMEOUT in milliseconds (None: the lease; 0: leave the server's)."""
    seconds = conf.IDLE_IN_TRANSACTION_TIMEOUT
    if seconds is None:
        seconds = conf.HEARTBEAT_LEASE
    return int(seconds * 1000)


def session_settings_sql(connection: Any) -> tuple[str, list[Any]] | None:
    """The statement that sets up a worker's PostgreSQL session, or None when there is none to run."""
    if connection.vendor != "postgresql":
        return None
    timeout = idle_in_transaction_timeout_ms()
    options = str(connection.settings_dict.get("OPTIONS", {}).get("options", ""))
    if not timeout or "idle_in_transaction_session_timeout" in options:  # off, or the host set it
        return None
    return "SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [f"{timeout}ms"]


def _session_settings(sender: Any, connection: Any, **kwargs: Any) -> None:
    if not _worker:
        return
    statement = session_settings_sql(connection)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)
