"""Test-suite plumbing: the backend matrix, the real worker, and the no-skip rule under CI.

``make test`` runs pytest once per backend (``TAP_TEST_BACKEND``): the whole suite on
``sqlite-fs``, then the ``integration`` tests on ``pg-redis`` and ``pg-rabbitmq``. Each session
shares one real worker subprocess, started against the database pytest-django created.
"""

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

BACKEND = os.environ.get("TAP_TEST_BACKEND", "sqlite-fs")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _tcp_open(url, default_port):
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), 3):
            return True
    except OSError:
        return False


def unreachable_services():
    """Names of the services this backend needs that do not accept connections."""
    from django.conf import settings

    missing = []
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql") and not _tcp_open(
        f"postgres://{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}", 5432
    ):
        missing.append(f"PostgreSQL at {db.get('HOST')}:{db.get('PORT')}")
    broker = settings.CELERY_BROKER_URL
    if broker.startswith("redis") and not _tcp_open(broker, 6379):
        missing.append(f"Redis at {broker}")
    if broker.startswith("amqp") and not _tcp_open(broker, 5672):
        missing.append(f"RabbitMQ at {broker}")
    return missing


#: The sessions of make test and make test-long (Makefile): (backend, only the integration tests,
#: the minutes tests instead of the others).
SESSIONS = (("sqlite-fs", False, False), ("pg-redis", True, False), ("pg-rabbitmq", True, False),
            ("pg-redis", True, True))


def _taken_by(item, backend, integration_only, minutes):
    marker = item.get_closest_marker("backends")
    return ((marker is None or backend in marker.args)
            and (not integration_only or item.get_closest_marker("integration") is not None)
            and bool(item.get_closest_marker("minutes")) == minutes)


def _running_nowhere(items):
    """Tests that no session takes (their ``backends`` left out sqlite-fs, but they are not
    ``integration``; or ``minutes`` but not on pg-redis): they would pass by never running."""
    return [item.nodeid for item in items if not any(_taken_by(item, *session) for session in SESSIONS)]


def pytest_collection_modifyitems(config, items):
    if nowhere := _running_nowhere(items):
        raise pytest.UsageError(
            "these tests would run in no session of make test (sqlite-fs: every test; pg-redis and pg-rabbitmq: "
            "the integration tests; make test-long: the integration and minutes tests on pg-redis): "
            + ", ".join(nowhere))
    selected, deselected = [], []
    long_tests = os.environ.get("TAP_LONG_TESTS") == "1"
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker and BACKEND not in marker.args:
            deselected.append(item)
        elif bool(item.get_closest_marker("minutes")) != long_tests:  # make test-long runs only those
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected

    needs_services = [item for item in items if item.get_closest_marker("integration")]
    missing = unreachable_services() if needs_services else []
    if missing:
        message = f"backend {BACKEND}: not reachable: {', '.join(missing)}"
        if IN_CI:
            pytest.exit(f"{message}. Under CI=true real-service tests must run, not skip.", 3)
        for item in needs_services:
            item.add_marker(pytest.mark.skip(reason=message))


_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if IN_CI and _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"backend: {BACKEND}")
    if IN_CI and _skipped:
        terminalreporter.write_line(
            f"CI=true: {len(_skipped)} test(s) skipped; every test must run under CI:", red=True
        )
        for nodeid in _skipped:
            terminalreporter.write_line(f"  {nodeid}", red=True)


# --- the real worker --------------------------------------------------------------------------


def database_url_for_subprocess():
    """The URL of the database pytest-django created, for workers and commands run as subprocesses."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def _purge_broker():
    """Drop messages a previous run left behind: they name ids this new database reuses."""
    from django.conf import settings

    from tapproject.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return
    if settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
        return
    app.control.purge()


@pytest.fixture(scope="session")
def subprocess_env(django_db_setup, django_db_blocker):
    """Environment for subprocesses (workers, beat, manage.py) that share the test database."""
    from django.conf import settings

    with django_db_blocker.unblock():
        url = database_url_for_subprocess()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tapproject.settings.test",
        DATABASE_URL=url,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        TAP_VAR_DIR=str(settings.VAR_DIR),
        TAP_TEST_BACKEND=BACKEND,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def worker_log_dir():
    from django.conf import settings

    folder = Path(settings.VAR_DIR) / "logs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def session_worker(subprocess_env, worker_log_dir, django_db_blocker):
    """One worker for the whole session (per backend); tests that kill it get it restarted."""
    from tests.support.worker import WorkerProcess

    _purge_broker()
    worker = WorkerProcess(subprocess_env, worker_log_dir / "worker.log", concurrency=2)
    worker.start()
    with django_db_blocker.unblock():
        worker.wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def worker(session_worker, transactional_db):
    """The session's real worker, alive, with committed data visible to it."""
    if not session_worker.alive():
        session_worker.start()
        session_worker.wait_ready()
    return session_worker


@pytest.fixture
def beat(worker, subprocess_env, worker_log_dir):
    """A real beat next to the worker, for the test only: its reconciler thread runs every second
    (TAP_RECONCILE_INTERVAL in settings.test) and resumes what the kinds' recovery policy says."""
    from tests.support.worker import BeatProcess

    process = BeatProcess(subprocess_env, worker_log_dir / "beat.log", worker_log_dir / "beat-schedule").start()
    try:
        yield process.wait_reconciling()
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    """Each test starts with no throttle history: the cache (files under the slot's var/) would
    otherwise carry the control throttle's counts from earlier tests and sessions of the minute."""
    from django.core.cache import cache

    cache.clear()
