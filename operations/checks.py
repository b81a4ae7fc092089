"""``manage.py check`` for what the app's guarantees need (docs/settings.md lists every id).

Each check finds at start-up what would otherwise fail only later, inside a worker or under load,
and its hint names the fix. The Celery checks read the host's Celery app (the one its
``<project>/celery.py`` creates), so they see the configuration the workers will run with.
"""

from __future__ import annotations

from typing import Any

from celery._state import get_current_app
from django.apps import apps
from django.core import checks
from django.db import connections
from django.forms import FileField

from . import tasks  # noqa: F401  (the engine's tasks, so the Celery checks see their options)
from .catalogue import all_kinds
from .conf import AppSettings, conf

TAG = "operations"
STEP_TASKS = ("operations.run_step", "operations.run_member")
#: Broker schemes with a visibility timeout after which an unacknowledged message is redelivered.
VISIBILITY_TIMEOUT_DEFAULTS = {"redis": 3600, "rediss": 3600, "sqs": 1800}


def _error(id: int, msg: str, hint: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"operations.E{id:03d}")


def _warning(id: int, msg: str, hint: str) -> checks.Warning:
    return checks.Warning(msg, hint=hint, id=f"operations.W{id:03d}")


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001: a TAP_ setting whose value cannot be used."""
    return [_error(1, message, f"Fix {setting} in your settings, or remove it to get the default "
                               "(docs/settings.md).")
            for settings_of_app in AppSettings.instances for setting, message in settings_of_app.problems()]


@checks.register(TAG)
def check_installed_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E002 / E003: apps the operations app needs beside it."""
    found = []
    if not apps.is_installed("django_celery_beat"):
        found.append(_error(2, "django_celery_beat is not in INSTALLED_APPS: the operations app's "
                               "migrations and the schedules of its periodic tasks need it.",
                            'Add "django_celery_beat" to INSTALLED_APPS.'))
    if not apps.is_installed("rest_framework"):
        found.append(_error(3, "rest_framework is not in INSTALLED_APPS: the operations API "
                               "(/api/operations/) cannot render its pages.",
                            'Add "rest_framework" to INSTALLED_APPS.'))
    return found


@checks.register(TAG)
def check_uploads(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E010: a kind takes file uploads, but there is no folder to keep them in."""
    takes_files = [kind.name for kind in all_kinds()
                   if any(isinstance(field, FileField) for field in kind.form.base_fields.values())]
    if takes_files and conf.UPLOAD_DIR is None:
        return [_error(10, f"kind(s) {', '.join(takes_files)} take file uploads, but neither "
                           "TAP_UPLOAD_DIR nor MEDIA_ROOT is set.",
                       "Set TAP_UPLOAD_DIR (or MEDIA_ROOT) to a folder every web and worker process "
                       "can read and write.")]
    return []


@checks.register(TAG)
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return celery_problems(get_current_app())


def celery_problems(app: Any) -> list[checks.CheckMessage]:
    """E004–E009, W011–W013, W016: the Celery configuration the engine's guarantees assume."""
    if app.main == "default" and getattr(app, "_config_source", None) is None:  # Celery's fallback app
        return [_error(4, "no Celery app is configured: starting an operation would publish to "
                          "Celery's default broker (amqp://localhost).",
                       "Create <project>/celery.py with app.config_from_object('django.conf:settings', "
                       "namespace='CELERY') and import it in <project>/__init__.py "
                       "(docs/installation.md).")]
    c = app.conf
    found = []
    unsafe = sorted({str(name) for name in (c.accept_content or [])} - {"json", "application/json"})
    if unsafe:
        found.append(_error(5, f"Celery accepts {', '.join(unsafe)} messages (accept_content): a message "
                               "from the broker could run code, and steps must be JSON.",
                            'Set CELERY_ACCEPT_CONTENT = ["json"].'))
    if c.task_serializer != "json":
        found.append(_error(6, f"Celery serializes tasks with {c.task_serializer!r}: the engine's messages "
                               "and plans are JSON.",
                            'Set CELERY_TASK_SERIALIZER = "json" (the default).'))
    for name in STEP_TASKS:
        task = app.tasks[name]
        if not task.acks_late:
            found.append(_error(7, f"{name} is not acks_late: a message would be acknowledged before its step "
                                   "ran, and a worker that dies mid-step would lose it.",
                                f"Remove what turns acks_late off for {name} (CELERY_TASK_ANNOTATIONS?)."))
        if not task.reject_on_worker_lost:
            found.append(_error(8, f"{name} is not reject_on_worker_lost: when a pool process dies mid-step "
                                   "its message is acknowledged and lost instead of redelivered.",
                                f"Remove what turns reject_on_worker_lost off for {name} "
                                "(CELERY_TASK_ANNOTATIONS?)."))
    found += _broker_problems(c)
    if c.worker_prefetch_multiplier != 1:
        found.append(_warning(11, f"worker_prefetch_multiplier is {c.worker_prefetch_multiplier}: each worker "
                                  "process reserves that many step messages, which wait behind a long step "
                                  "instead of running elsewhere.",
                              "Set CELERY_WORKER_PREFETCH_MULTIPLIER = 1."))
    if str(c.worker_pool or "prefork") in {"prefork", "processes", "celery.concurrency.prefork:TaskPool"}:
        found.append(_warning(16, "the workers run Celery's own prefork pool: when all its processes are killed at "
                                  "once (the OOM killer), it can wedge and run nothing again.",
                              'Set CELERY_WORKER_POOL = "operations.pool:TaskPool" (the same pool, with that '
                              "fixed), and run workers under a supervisor (python -m operations.supervise)."))
    if not c.get("CELERY_DB_REUSE_MAX") and not c.get("db_reuse_max"):
        found.append(_warning(12, "CELERY_DB_REUSE_MAX is not set: Celery closes the database connections "
                                  "around every task, so every step opens a new one.",
                              "Set CELERY_DB_REUSE_MAX = 1000 (the app closes broken or old connections "
                              "before each step itself)."))
    return found


def _broker_problems(c: Any) -> list[checks.CheckMessage]:
    url = c.broker_url[0] if isinstance(c.broker_url, (list, tuple)) and c.broker_url else c.broker_url
    scheme = str(url or "").split("://", 1)[0].lower()
    options = c.broker_transport_options or {}
    found = []
    if scheme in VISIBILITY_TIMEOUT_DEFAULTS:
        timeout = options.get("visibility_timeout", VISIBILITY_TIMEOUT_DEFAULTS[scheme])
        if not isinstance(timeout, (int, float)) or timeout <= conf.HEARTBEAT_LEASE:
            found.append(_error(9, f"the {scheme} broker's visibility_timeout ({timeout!r} s) is not longer than "
                                   f"TAP_HEARTBEAT_LEASE ({conf.HEARTBEAT_LEASE} s): the broker would hand a "
                                   "running step's message to a second worker.",
                                'Set CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 21600} (longer '
                                "than your longest step)."))
    if scheme == "filesystem":
        inbox, outbox = options.get("data_folder_in"), options.get("data_folder_out")
        if not inbox or inbox != outbox:
            found.append(_error(13, "the filesystem broker needs data_folder_in and data_folder_out set to the "
                                    f"same folder (got {inbox!r} and {outbox!r}): otherwise workers never see "
                                    "what the web publishes.",
                                 'Set CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": F, '
                                 '"data_folder_out": F, "control_folder": G} with absolute paths.'))
    return found


@checks.register(checks.Tags.database)
def check_database(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E014 / W015 (``check --database``, and ``migrate``): SQLite set up for concurrent writers."""
    return [message for alias in databases or [] for message in database_problems(alias, connections[alias])]


def database_problems(alias: str, connection: Any) -> list[checks.CheckMessage]:
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return []
    found = []
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()[0]
    if str(mode).lower() != "wal":
        found.append(_error(14, f"SQLite database {alias!r} is in {mode} journal mode: a worker's writes "
                                "would lock readers out ('database is locked').",
                             'Add "init_command": "PRAGMA journal_mode=WAL;" to its OPTIONS (or run '
                             "PRAGMA journal_mode=WAL once)."))
    if connection.settings_dict.get("OPTIONS", {}).get("transaction_mode") != "IMMEDIATE":
        found.append(_warning(15, f"SQLite database {alias!r} starts transactions DEFERRED: two writers "
                                  "can fail at once with 'database is locked' instead of waiting.",
                              'Add "transaction_mode": "IMMEDIATE" (and a "timeout") to its OPTIONS.'))
    return found


__all__ = ["celery_problems", "check_celery", "check_database", "check_installed_apps", "check_settings",
           "check_uploads", "database_problems"]
