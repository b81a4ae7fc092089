"""The periodic tasks the operations app relies on, kept in django-celery-beat's tables.

They are installed by a data migration (so they are visible in the admin right after
``migrate``) and again, if missing, whenever beat starts. Existing entries are never overwritten:
an interval or crontab edited in the admin stays edited. (django-celery-beat's own scheduler
resets ``celery.backend_cleanup`` on every start, which is why beat uses the subclass below.)
"""

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler


def periodic_task_specs():
    return [
        {
            "name": "celery.backend_cleanup",
            "task": "celery.backend_cleanup",
            "crontab": {"minute": "0", "hour": "4"},
            "description": "Deletes task results older than CELERY_RESULT_EXPIRES.",
        },
        {
            "name": "operations.reconcile",
            "task": "operations.reconcile",
            "every_seconds": settings.TAP_RECONCILE_INTERVAL,
            "description": "Marks operations whose worker went silent for longer than "
                           "TAP_HEARTBEAT_LEASE as interrupted (or re-dispatches them).",
        },
    ]


def install_periodic_tasks(PeriodicTask, CrontabSchedule, IntervalSchedule):
    """Create the periodic tasks that do not exist yet; return the names created.

    Takes the model classes so the data migration (historical models) and the scheduler (real
    models) share this one piece of code.
    """
    created = []
    for spec in periodic_task_specs():
        if PeriodicTask.objects.filter(name=spec["name"]).exists():
            continue
        schedule = {}
        if "crontab" in spec:
            schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=spec["crontab"]["minute"],
                hour=spec["crontab"]["hour"],
                day_of_week="*",
                day_of_month="*",
                month_of_year="*",
                timezone="UTC",
            )
        else:
            schedule["interval"], _ = IntervalSchedule.objects.get_or_create(
                every=spec["every_seconds"], period="seconds"
            )
        PeriodicTask.objects.create(
            name=spec["name"], task=spec["task"], description=spec["description"], **schedule
        )
        created.append(spec["name"])
    return created


def install_periodic_tasks_migration(apps, schema_editor):
    """RunPython entry point: the same installer, on the migration's historical models."""
    install_periodic_tasks(
        apps.get_model("django_celery_beat", "PeriodicTask"),
        apps.get_model("django_celery_beat", "CrontabSchedule"),
        apps.get_model("django_celery_beat", "IntervalSchedule"),
    )


class OperationsScheduler(DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler that adds missing entries instead of resetting them."""

    def install_default_entries(self, data):
        from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

        install_periodic_tasks(PeriodicTask, CrontabSchedule, IntervalSchedule)


