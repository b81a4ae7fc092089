"""``manage.py check``: each setting that would fail late has its own message (docs/settings.md).

Every check is run against a configuration that trips it and one that does not. The Celery
checks are given a Celery app of their own, configured as a host's would be.
"""

import sqlite3
import subprocess
import sys

import pytest
from celery import Celery
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.sqlite3.base import DatabaseWrapper
from django.test.utils import modify_settings

from operations import checks
from operations.conf import conf
from tests.support.worker import ROOT


def ids(messages):
    return sorted(message.id for message in messages)


@pytest.fixture(autouse=True)
def _no_broker_url_in_the_environment(monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery prefers it to broker_url


def celery_app(**config):
    """A Celery app configured like a host's, with the JSON-only defaults and the docs' settings."""
    app = Celery("host", set_as_current=False)
    app.conf.update({"broker_url": "redis://127.0.0.1:6379/0", "worker_prefetch_multiplier": 1,
                     "db_reuse_max": 1000, "worker_pool": "operations.pool:TaskPool", **config})
    return app


def test_the_configuration_of_the_docs_passes_every_celery_check():
    assert checks.celery_problems(celery_app()) == []


# --- E001: the app's own settings -----------------------------------------------------------------


@pytest.mark.parametrize("setting, value, expected", [
    ("TAP_HEARTBEAT_LEASE", "120", "TAP_HEARTBEAT_LEASE must be a positive number of seconds, not '120'"),
    ("TAP_AUTO_RESUME", "yes", "TAP_AUTO_RESUME must be True or False, not 'yes'"),
    ("TAP_KIND_MODULES", "myapp.kinds", "TAP_KIND_MODULES must be a list of dotted module paths"),
    ("TAP_CONTROL_THROTTLE", "lots", 'TAP_CONTROL_THROTTLE must be a rate such as "120/min"'),
    ("TAP_CSV_CHUNK_ROWS", 0, "TAP_CSV_CHUNK_ROWS must be a positive integer, not 0"),  # the demo's
])
def test_e001_a_setting_of_the_wrong_type_is_named_at_check_time_and_where_it_is_used(settings, setting,
                                                                                       value, expected):
    assert checks.check_settings() == []
    setattr(settings, setting, value)
    (message,) = checks.check_settings()
    assert message.id == "operations.E001" and message.msg.startswith(expected), message.msg
    assert setting in message.hint
    if setting.startswith("TAP_CSV"):
        return
    with pytest.raises(ImproperlyConfigured, match=setting):  # and where it is read, not a TypeError
        getattr(conf, setting.removeprefix("TAP_"))


def test_every_setting_has_a_default_that_passes_its_own_check(settings):
    for app_settings in conf.instances:
        for option in app_settings.options():
            if hasattr(settings, app_settings.setting_name(option.name)):
                delattr(settings, app_settings.setting_name(option.name))
    for app_settings in conf.instances:
        assert app_settings.problems() == []
        for option in app_settings.options():
            getattr(app_settings, option.name)
    assert conf.HEARTBEAT_LEASE == 120 and conf.RECONCILE_INTERVAL == 30 and conf.DURABLE_STEP_COMMITS is False


# --- E002 / E003: the apps beside it --------------------------------------------------------------


@pytest.mark.parametrize("app, id", [("django_celery_beat", "operations.E002"),
                                     ("rest_framework", "operations.E003")])
def test_e002_e003_apps_the_operations_app_needs(app, id):
    assert checks.check_installed_apps() == []
    with modify_settings(INSTALLED_APPS={"remove": [app]}):
        (message,) = checks.check_installed_apps()
    assert message.id == id and app in message.hint


# --- E004–E013: Celery ----------------------------------------------------------------------------


def test_e004_no_celery_app_configured():
    fallback = Celery("default", set_as_current=False)  # what Celery gives a project without one
    assert ids(checks.celery_problems(fallback)) == ["operations.E004"]


@pytest.mark.parametrize("setting", ["accept_content"])
def test_e005_non_json_content_is_refused(setting):
    (message,) = checks.celery_problems(celery_app(accept_content=["json", "pickle"]))
    assert message.id == "operations.E005" and "pickle" in message.msg


def test_e006_the_task_serializer_must_be_json():
    app = celery_app(task_serializer="pickle", accept_content=["json"])
    assert ids(checks.celery_problems(app)) == ["operations.E006"]


def test_e007_e008_the_step_tasks_keep_acks_late_and_reject_on_worker_lost():
    assert checks.celery_problems(celery_app()) == []  # the tasks set both themselves
    app = celery_app(task_annotations={"operations.run_step": {"acks_late": False},
                                       "operations.run_member": {"reject_on_worker_lost": False}})
    messages = checks.celery_problems(app)
    assert ids(messages) == ["operations.E007", "operations.E008"]
    assert "operations.run_step" in messages[0].msg and "operations.run_member" in messages[1].msg


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "sqs://"])
def test_e009_the_visibility_timeout_must_outlast_the_lease(settings, url):
    assert checks.celery_problems(celery_app(broker_url=url)) == []  # kombu's defaults: 1 h, 30 min
    settings.TAP_HEARTBEAT_LEASE = 120
    app = celery_app(broker_url=url, broker_transport_options={"visibility_timeout": 60})
    (message,) = checks.celery_problems(app)
    assert message.id == "operations.E009" and "60" in message.msg


def test_e010_kinds_that_take_uploads_need_a_folder(settings):
    assert checks.check_uploads() == []
    del settings.TAP_UPLOAD_DIR
    settings.MEDIA_ROOT = str(ROOT / "var" / "media-for-the-check")
    assert checks.check_uploads() == []  # MEDIA_ROOT/operations/uploads
    settings.MEDIA_ROOT = ""
    (message,) = checks.check_uploads()
    assert message.id == "operations.E010" and "csv_import" in message.msg  # a demo kind with a file field


def test_w011_prefetch_should_be_one():
    (message,) = checks.celery_problems(celery_app(worker_prefetch_multiplier=4))
    assert message.id == "operations.W011"


def test_w012_connections_should_outlive_a_task():
    app = Celery("host", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:6379/0", worker_prefetch_multiplier=1,
                    worker_pool="operations.pool:TaskPool")
    (message,) = checks.celery_problems(app)
    assert message.id == "operations.W012" and "CELERY_DB_REUSE_MAX" in message.msg


@pytest.mark.parametrize("pool", ["prefork", None])
def test_w016_the_prefork_pool_should_be_the_apps(pool):
    (message,) = checks.celery_problems(celery_app(worker_pool=pool))
    assert message.id == "operations.W016" and "operations.pool:TaskPool" in message.hint
    assert checks.celery_problems(celery_app(worker_pool="threads")) == []  # not prefork: nothing to fix


def test_e013_the_filesystem_broker_needs_one_shared_folder(tmp_path):
    good = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    assert checks.celery_problems(celery_app(broker_url="filesystem://", broker_transport_options=good)) == []
    app = celery_app(broker_url="filesystem://", broker_transport_options={"data_folder_in": str(tmp_path)})
    assert ids(checks.celery_problems(app)) == ["operations.E013"]


# --- E014 / W015: SQLite --------------------------------------------------------------------------


def _sqlite(path, **options):
    return DatabaseWrapper({"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": options,
                            "TIME_ZONE": None, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False,
                            "AUTOCOMMIT": True, "ATOMIC_REQUESTS": False, "USER": "", "PASSWORD": "",
                            "HOST": "", "PORT": "", "TEST": {}}, alias="probe")


@pytest.mark.django_db  # the probe connections are not the test database, but Django asks for the mark
def test_e014_w015_sqlite_needs_wal_and_immediate_transactions(tmp_path):
    sqlite3.connect(tmp_path / "plain.sqlite3").close()
    plain = _sqlite(tmp_path / "plain.sqlite3")
    try:
        assert ids(checks.database_problems("probe", plain)) == ["operations.E014", "operations.W015"]
    finally:
        plain.close()
    tuned = _sqlite(tmp_path / "tuned.sqlite3", init_command="PRAGMA journal_mode=WAL;",
                    transaction_mode="IMMEDIATE")
    try:
        assert checks.database_problems("probe", tuned) == []
    finally:
        tuned.close()


def test_this_project_passes_every_check_with_its_database():
    """tapproject is the app's first host: its dev settings raise nothing, warnings included."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default", "--fail-level", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TAP_VAR_DIR": str(ROOT / "var" / "test" / "check")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
