"""What the benchmarks share: their environment, their own services, and their worker.

Each benchmark owns a PostgreSQL database (dropped and recreated at start), a Redis database and
a ``var/`` folder, and runs one prefork worker with ``--concurrency 1`` against them
(``tests/support/worker.py``'s WorkerProcess), so numbers from different benchmarks compare.

Nothing here imports Django models at import time: a worker imports a benchmark module (for its
kinds) and, through it, this one.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAINTENANCE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/"


def database_url(name):
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def broker_url(db):
    return f"{REDIS_URL}{db}"


def configure_environment(*, database_url, broker_url, var_dir, kind_modules=""):
    """The environment of this process and of the worker; set before Django reads settings.

    dev settings, as the project runs them, but with DEBUG off (as in production) so neither
    process records every query it runs. The worker inherits all of it, ``TAP_VAR_DIR`` too, so
    it sees the same files (e.g. the CSV folder, ``$TAP_VAR_DIR/csv``).
    """
    os.environ.update(
        DJANGO_SETTINGS_MODULE="tapproject.settings.dev",
        DEBUG="false",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        TAP_KIND_MODULES=kind_modules,
        TAP_VAR_DIR=str(var_dir),
        PYTHONUNBUFFERED="1",
    )


def reset_database(name):
    """A fresh database ``name``: no leftover rows from an earlier run."""
    import psycopg

    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def reset_broker(url, *, queue=None):
    """No leftover messages: flush the whole Redis db, or only ``queue``'s keys in it.

    ``queue`` is for a Redis db that other sessions use for other queues (a test slot): only
    this queue's lists (with their priority variants), its binding and its unacknowledged
    messages are removed.
    """
    import json

    import redis

    client = redis.Redis.from_url(url)
    if queue is None:
        client.flushdb()
        return
    names = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    names += [key for key in client.scan_iter(match=f"{queue}\x06\x16*")]  # priority lists
    client.delete(*names)
    for tag, payload in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(payload)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def setup_django():
    """Django and the Celery app, configured from the environment; the database migrated."""
    import django

    django.setup()
    from django.core.management import call_command

    import tapproject  # noqa: F401  (the Celery app, configured from the settings)

    call_command("migrate", verbosity=0)


def make_worker(log_path, *, name="bench"):
    """The benchmarks' worker: one prefork pool process (``--concurrency 1``); a fresh log."""
    from tests.support.worker import WorkerProcess

    worker = WorkerProcess(dict(os.environ), log_path, concurrency=1, pool="prefork", name=name)
    worker.log_path.unlink(missing_ok=True)
    return worker


@contextmanager
def running(worker):
    """Start ``worker``, wait until it has run a task end to end, stop it (warm) at the end."""
    worker.start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
