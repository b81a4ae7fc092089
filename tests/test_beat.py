"""Beat: the app's periodic tasks reach the host's schedule, and beat runs what is in the database."""

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from celery import Celery
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from django_celery_results.models import TaskResult

from operations.beat import RECONCILE_ENTRY, OperationsScheduler, add_beat_entries
from tests.support.worker import ROOT


def test_the_reconciler_is_on_the_beat_schedule_with_the_interval_of_the_settings(settings):
    from tapproject.celery import app as project_app

    assert project_app.conf.beat_schedule[RECONCILE_ENTRY]["task"] == "operations.reconcile"
    app = Celery(set_as_current=False)
    settings.TAP_RECONCILE_INTERVAL = 45  # read when the entries are made, not at import
    add_beat_entries(app)
    entry = app.conf.beat_schedule[RECONCILE_ENTRY]
    assert entry["task"] == "operations.reconcile"
    assert entry["schedule"] == timedelta(seconds=45)
    assert entry["options"]["expires"] == 45


def test_a_host_entry_of_the_same_name_wins():
    app = Celery(set_as_current=False)
    app.conf.beat_schedule = {RECONCILE_ENTRY: {"task": "operations.reconcile", "schedule": 5.0,
                                                "options": {"queue": "beat"}}}
    add_beat_entries(app)
    assert app.conf.beat_schedule[RECONCILE_ENTRY]["options"] == {"queue": "beat"}


def _scheduler():
    app = Celery(set_as_current=False)
    app.conf.result_expires = 86400  # as tapproject's: beat also installs celery.backend_cleanup
    add_beat_entries(app)
    scheduler = OperationsScheduler(app=app, lazy=True)
    scheduler.setup_schedule()
    return scheduler


@pytest.mark.django_db(transaction=True)  # the scheduler closes old connections, as beat does
def test_beat_installs_its_entries_and_keeps_edits_made_in_the_admin(settings):
    settings.TAP_RECONCILE_INTERVAL = 7
    _scheduler()
    reconcile = PeriodicTask.objects.get(name=RECONCILE_ENTRY)
    assert (reconcile.task, reconcile.interval.every, reconcile.interval.period) == ("operations.reconcile", 7,
                                                                                     "seconds")
    assert reconcile.expire_seconds == 7
    cleanup = PeriodicTask.objects.get(name="celery.backend_cleanup")
    assert cleanup.crontab is not None and cleanup.crontab.hour == "4"

    cleanup.crontab.hour = "2"
    cleanup.crontab.save()
    reconcile.interval, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    reconcile.save()
    _scheduler()  # beat starts again
    assert PeriodicTask.objects.get(name="celery.backend_cleanup").crontab.hour == "2"
    assert PeriodicTask.objects.get(name=RECONCILE_ENTRY).interval.every == 60
    assert PeriodicTask.objects.filter(name=RECONCILE_ENTRY).count() == 1


def test_beat_uses_the_database_scheduler(settings):
    assert issubclass(OperationsScheduler, DatabaseScheduler)
    assert settings.CELERY_BEAT_SCHEDULER == "operations.beat:OperationsScheduler"


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_beat_runs_a_task_scheduled_in_the_database(worker, subprocess_env, worker_log_dir):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="test ping", task="operations.ping", interval=every_second, args='["from-beat"]'
    )
    log_path = worker_log_dir / "beat.log"
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tapproject", "beat", "--loglevel", "INFO",
             "--schedule", str(worker_log_dir / "beat-schedule")],
            cwd=ROOT, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not TaskResult.objects.filter(task_name="operations.ping",
                                                result__contains="from-beat").exists():
                assert beat.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        finally:
            beat.terminate()
            beat.wait(timeout=30)
    text = log_path.read_text()
    assert "operations.beat.OperationsScheduler" in text
    # Beat installed its own entries next to the one it found in the table.
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").count() == 1
    assert PeriodicTask.objects.filter(name=RECONCILE_ENTRY, task="operations.reconcile").count() == 1
