"""How the app fits itself into the host's Celery app and database connections when Django starts.

- the Celery app gets the app's fixed broker transport for its broker URL (``operations.brokers``);
- beat's process gets the reconciler thread (``operations.reconciler``), and a worker's main
  process the watchdog that notices a wedged pool (``operations.watchdog``);
- PostgreSQL sessions of worker processes get ``idle_in_transaction_session_timeout``, so that a
  worker frozen inside a transaction (SIGSTOP, a hung host) cannot hold its rows' locks past the
  heartbeat lease: the server ends that session and a resumed run can take the rows over;
- … and TCP keepalives and a user timeout that end the session within the same time when the
  worker's host is gone without a word (a network partition, a host that lost power). The
  idle-in-transaction timeout does not cover that: a session cut off in the middle of a COPY is
  *active*, waiting for the rest of the data, and would hold the rows it already took — the
  resumed run's replay of that chunk waits on them — for the server's default keepalive of 2 h
  (tests/faults/test_partitions.py).

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


#: Keepalive probes the server sends to a silent worker before it gives up on it.
KEEPALIVE_PROBES = 3


def dead_client_settings(timeout_ms: int) -> dict[str, str]:
    """Server-side TCP settings that end a worker's session within ``timeout_ms`` of its host going
    silent: keepalive probes from half of it on, and a user timeout for what the server sent and
    the worker never acknowledged (keepalives do not run while such data waits).

    A live worker's kernel answers the probes even when the worker is frozen or busy, so only a
    host that is gone (or cut off) loses its session.
    """
    seconds = max(2, timeout_ms // 1000)
    idle = seconds // 2
    interval = max(1, (seconds - idle) // KEEPALIVE_PROBES)
    return {"tcp_keepalives_idle": str(idle), "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(KEEPALIVE_PROBES), "tcp_user_timeout": f"{seconds * 1000}ms"}


def session_settings(connection: Any) -> dict[str, str]:
    """The settings a worker's PostgreSQL session gets, less those the host set in ``OPTIONS``:
    all follow TAP_IDLE_IN_TRANSACTION_TIMEOUT (how long a stuck worker session may keep its
    locks), and none is set when it is 0."""
    if connection.vendor != "postgresql":
        return {}
    timeout = idle_in_transaction_timeout_ms()
    if not timeout:
        return {}
    options = str(connection.settings_dict.get("OPTIONS", {}).get("options", ""))
    wanted = {"idle_in_transaction_session_timeout": f"{timeout}ms", **dead_client_settings(timeout)}
    return {name: value for name, value in wanted.items() if name not in options}


def session_settings_sql(connection: Any) -> tuple[str, list[Any]] | None:
    """The statement that sets up a worker's PostgreSQL session, or None when there is none to run."""
    settings = session_settings(connection)
    if not settings:
        return None
    calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
    return f"SELECT {calls}", [part for item in settings.items() for part in item]


def _session_settings(sender: Any, connection: Any, **kwargs: Any) -> None:
    if not _worker:
        return
    statement = session_settings_sql(connection)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(*statement)
