"""Settings for the test suite and for the worker subprocesses it starts.

``TAP_TEST_BACKEND`` picks one of the real-service combinations the suite runs against:
``sqlite-fs`` (default: SQLite + filesystem broker), ``pg-redis`` and ``pg-rabbitmq``.
Explicit ``DATABASE_URL`` / ``CELERY_BROKER_URL`` still win, so a worker started by a fixture is
pointed at the very database pytest-django created.
"""

import os
from pathlib import Path

# TAP_TEST_SLOT (0-9) lets several test sessions share the machine's services: each slot has its
# own database, Redis database, queue name and var/ folder.
SLOT = os.environ.get("TAP_TEST_SLOT", "")
if SLOT and not (SLOT.isdigit() and int(SLOT) < 10):
    raise RuntimeError(f"TAP_TEST_SLOT={SLOT!r}; expected a digit 0-9")
_suffix = f"_{SLOT}" if SLOT else ""
BACKENDS = {
    "sqlite-fs": {
        "DATABASE_URL": None,
        "CELERY_BROKER_URL": "filesystem://localhost/",
    },
    "pg-redis": {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/tapproject{_suffix}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:6379/{5 + int(SLOT or 0)}",
    },
    "pg-rabbitmq": {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/tapproject{_suffix}",
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
    },
}
TAP_TEST_BACKEND = os.environ.setdefault("TAP_TEST_BACKEND", "sqlite-fs")
if TAP_TEST_BACKEND not in BACKENDS:
    raise RuntimeError(f"TAP_TEST_BACKEND={TAP_TEST_BACKEND!r}; expected one of {sorted(BACKENDS)}")
_root = Path(__file__).resolve().parent.parent.parent
os.environ.setdefault("TAP_VAR_DIR", str(_root / "var" / "test" / f"{TAP_TEST_BACKEND}{_suffix}"))
for _name, _value in BACKENDS[TAP_TEST_BACKEND].items():
    if _value is not None:
        os.environ.setdefault(_name, _value)
# Short leases so the reconciler's behaviour is observable within a test (base.py also derives
# PostgreSQL's idle-in-transaction timeout from it).
os.environ.setdefault("TAP_HEARTBEAT_LEASE", "6")

from .base import *  # noqa: E402,F403
from .base import DATABASES, VAR_DIR  # noqa: E402

DEBUG = False
CELERY_TASK_DEFAULT_QUEUE = f"celery{_suffix}"
# Broadcasts too (a cancelled batch's revokes): on a shared RabbitMQ, another slot's workers would
# drop their own tasks of the same ids (the same test SECRET_KEY, the same operation ids).
CELERY_CONTROL_EXCHANGE = f"celery{_suffix}"
SECRET_KEY = "test-only-key-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ"
ALLOWED_HOSTS = ["*"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
# The worker subprocesses must see the database pytest-django creates, so SQLite's test
# database is a file, not pytest's default in-memory database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
# Kinds only the tests use (flaky steps, row-writing steps), and the docs/extending.md example.
TAP_KIND_MODULES = ["tests.support.kinds", "docs.examples.publish"]
TAP_RECONCILE_INTERVAL = 1
# A wedged worker (every pool process killed at once) exits after this long, for its supervisor.
TAP_WATCHDOG_TIMEOUT = 8
# Fault injection (tests/faults): a worker started with TAP_FAULTS loads the injector, and
# TAP_FAULT_VISIBILITY makes Redis redeliver unacknowledged messages after that many seconds.
if os.environ.get("TAP_FAULTS"):
    TAP_KIND_MODULES.append("tests.faults.inject")
if os.environ.get("TAP_FAULT_VISIBILITY"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {  # noqa: F405
        **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
        "visibility_timeout": int(os.environ["TAP_FAULT_VISIBILITY"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
TAP_BATCH_MIN_SECONDS = TAP_BATCH_MAX_SECONDS = 0.0

from .base import STATIC_ROOT  # noqa: E402

STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing folder even when using finders
# No quotas in the suite (it starts hundreds of operations per user); their own test sets them.
TAP_USER_MAX_UNFINISHED = TAP_USER_MAX_WORK_SECONDS = None
# Beat's first automatic resume after 1 s (then 2, 4, …): the fault suite waits less.
TAP_AUTO_RESUME_BACKOFF = 1
