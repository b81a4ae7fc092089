"""Production settings: they refuse to start without secrets and pass Django's deploy checks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "tapproject.settings.production",
    "SECRET_KEY": "k3y-" + "x7Qp9vLm2Rt8Wz4Nc6Bh1Jd5Fs0Gy3Ua" * 2,
    "DATABASE_URL": "postgres://tap:tap@db.internal:5432/tap",
    "CELERY_BROKER_URL": "redis://redis.internal:6379/0",
    "ALLOWED_HOSTS": "tap.example.com",
}


def run_manage(env, *args):
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TAP_VAR_DIR": str(ROOT / "var" / "test" / "prod")}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
        capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_passes_without_warnings():
    result = run_manage(PRODUCTION_ENV, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_missing_secret_key_refuses_to_start_with_a_clear_message():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = run_manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in the environment for production" in result.stderr


def test_weak_secret_key_is_refused():
    result = run_manage({**PRODUCTION_ENV, "SECRET_KEY": "django-insecure-short"}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_missing_database_url_is_refused():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "DATABASE_URL"}
    result = run_manage(env, "check")
    assert result.returncode != 0
    assert "DATABASE_URL must be set" in result.stderr


def test_dev_defaults_are_the_embedded_default(settings):
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is True
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert settings.CELERY_RESULT_BACKEND == "django-db"
    assert settings.CELERY_RESULT_EXPIRES.total_seconds() > 0


def test_embedded_default_is_sqlite_wal_and_filesystem_broker(tmp_path):
    code = (
        "from django.conf import settings; from django.db import connection;"
        "cur = connection.cursor(); cur.execute('PRAGMA journal_mode'); print(cur.fetchone()[0]);"
        "cur.execute('PRAGMA busy_timeout'); print(cur.fetchone()[0]);"
        "print(settings.CELERY_BROKER_URL); print(settings.DATABASES['default']['NAME'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TAP_VAR_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    journal, busy, broker, name = result.stdout.split()[-4:]
    assert journal == "wal"
    assert int(busy) >= 5000
    assert broker == "filesystem://localhost/"
    assert name == str(tmp_path / "db.sqlite3")


def test_each_broker_url_gets_its_transport():
    """Redis URLs use the transport whose workers survive a Redis restart (operations/brokers/redis.py)."""
    code = "from tapproject.celery import app; print(type(app.connection_for_write().transport).__module__)"
    expected = {
        "redis://127.0.0.1:6379/0": "operations.brokers.redis",
        "amqp://guest:guest@127.0.0.1:5672//": "kombu.transport.pyamqp",
        "filesystem://localhost/": "operations.brokers.filesystem",
    }
    for url, module in expected.items():
        result = run_manage({"CELERY_BROKER_URL": url}, "shell", "-c", code)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == module, url
