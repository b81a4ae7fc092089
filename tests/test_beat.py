"""django-celery-beat: the periodic tasks are in the database after migrate, and beat runs them."""

import subprocess
import sys
import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from django_celery_results.models import TaskResult

from operations.beat import OperationsScheduler, install_periodic_tasks
from tests.support.worker import ROOT


@pytest.mark.django_db
def test_backend_cleanup_is_installed_by_migrate():
    task = PeriodicTask.objects.get(name="celery.backend_cleanup")
    assert task.task == "celery.backend_cleanup"
    assert task.enabled
    assert task.crontab is not None and task.crontab.hour == "4"


@pytest.mark.django_db
def test_installing_again_keeps_edits_made_in_the_admin():
    task = PeriodicTask.objects.get(name="celery.backend_cleanup")
    task.crontab.hour = "2"
    task.crontab.save()
    from django_celery_beat.models import CrontabSchedule

    assert install_periodic_tasks(PeriodicTask, CrontabSchedule, IntervalSchedule) == []
    assert PeriodicTask.objects.get(name="celery.backend_cleanup").crontab.hour == "2"


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
    # Beat re-installed nothing it found in the table, and left backend_cleanup in place.
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").count() == 1
