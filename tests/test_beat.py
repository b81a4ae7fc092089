"""Beat: its scheduler keeps what the admin changed, it runs what is in the database, and its own process reconciles."""

import time
from datetime import timedelta

import pytest
from celery import Celery
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from django_celery_results.models import TaskResult

from operations.beat import OperationsScheduler


def _scheduler():
    app = Celery(set_as_current=False)
    app.conf.result_expires = 86400  # as tapproject's: beat installs celery.backend_cleanup
    app.conf.beat_schedule = {"nightly": {"task": "operations.ping", "schedule": timedelta(hours=24)}}
    scheduler = OperationsScheduler(app=app, lazy=True)
    scheduler.setup_schedule()
    return scheduler


@pytest.mark.django_db(transaction=True)  # the scheduler closes old connections, as beat does
def test_beat_installs_missing_entries_and_keeps_edits_made_in_the_admin():
    _scheduler()
    cleanup = PeriodicTask.objects.get(name="celery.backend_cleanup")
    assert cleanup.crontab is not None and cleanup.crontab.hour == "4"
    nightly = PeriodicTask.objects.get(name="nightly")
    assert (nightly.interval.every, nightly.interval.period) == (86400, "seconds")

    cleanup.crontab.hour = "2"
    cleanup.crontab.save()
    nightly.interval, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    nightly.save()
    _scheduler()  # beat starts again
    assert PeriodicTask.objects.get(name="celery.backend_cleanup").crontab.hour == "2"
    assert PeriodicTask.objects.get(name="nightly").interval.every == 60
    assert not PeriodicTask.objects.filter(name="operations.reconcile").exists()  # not a periodic task


def test_beat_uses_the_database_scheduler(settings):
    assert issubclass(OperationsScheduler, DatabaseScheduler)
    assert settings.CELERY_BEAT_SCHEDULER == "operations.beat:OperationsScheduler"


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_beat_runs_a_task_scheduled_in_the_database(worker, beat):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="test ping", task="operations.ping", interval=every_second, args='["from-beat"]'
    )
    deadline = time.monotonic() + 60
    while not TaskResult.objects.filter(task_name="operations.ping", result__contains="from-beat").exists():
        assert time.monotonic() < deadline, beat.log_text()
        time.sleep(0.2)
    assert "operations.beat.OperationsScheduler" in beat.log_text()
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").count() == 1


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_beats_reconciler_interrupts_a_silent_operation_and_recovers_it_by_its_kinds_policy(worker, beat):
    """No person and no task: the reconciler thread of beat's own process does both."""
    from django.utils import timezone

    from operations import services
    from operations.models import Operation
    from tests.support.ops import status_changes, wait_for

    hour_ago = timezone.now() - timedelta(hours=1)
    manual = services.operation_start(kind="tests.records_manual", params={"steps": 2}, actor="cli")  # no policy: a person
    automatic = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")  # demo: automatic
    for operation in (manual, automatic):
        wait_for(operation.pk, lambda op: op.status == "completed", what="the first run")
        # As if the message of its next step had been lost: running, silent for an hour.
        Operation.objects.filter(pk=operation.pk).update(status="running", heartbeat_at=hour_ago, step_index=1,
                                                         result=None)
    wait_for(manual.pk, lambda op: op.status == "interrupted", timeout=30, what="interrupted by beat")
    done = wait_for(automatic.pk, lambda op: op.status == "completed" and op.run_token == 2, timeout=60,
                    what="resumed by beat and completed")
    assert done.auto_resumes == 1
    changes = status_changes(automatic.pk)[-3:]
    assert [(a, b, actor) for a, b, actor in changes] == [
        ("running", "interrupted", "beat"), ("interrupted", "running", "beat"), ("running", "completed", "worker")]
    note = Operation.objects.get(pk=automatic.pk).events.filter(to_status="interrupted").last().note
    assert "beat resumes it at" in note and "automatic resume 1 of 5" in note
    time.sleep(2)  # the manual one stays where a person will find it
    assert Operation.objects.get(pk=manual.pk).status == "interrupted"


