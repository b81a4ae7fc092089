"""The periodic tasks the operations app relies on, and how they get onto the host's beat.

The reconciler is added to the Celery app's ``beat_schedule`` when Django starts in a process
(see ``operations.integration``; beat reads its schedule after that), so it runs under whichever scheduler the host's beat uses: Celery's
own (a schedule file), django-celery-beat's ``DatabaseScheduler`` (which copies it into its table
at every start, interval included), or ``OperationsScheduler`` below (which adds it once and then
keeps what the admin shows). Its interval is TAP_RECONCILE_INTERVAL, read when the process starts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler

from .conf import conf

RECONCILE_ENTRY = "operations.reconcile"


def beat_entries() -> dict[str, dict[str, Any]]:
    """The app's entries, in Celery's ``beat_schedule`` form."""
    interval = conf.RECONCILE_INTERVAL
    return {
        RECONCILE_ENTRY: {
            "task": "operations.reconcile",
            "schedule": timedelta(seconds=interval),
            # A reconcile that waited longer than an interval in the queue (no worker up) is
            # useless: the next one is already on its way.
            "options": {"expires": max(1.0, float(interval))},
        },
    }


def add_beat_entries(app: Any) -> None:
    """Put the app's entries into ``app.conf.beat_schedule``; the host's own entries of the same
    name win (that is how a host changes one, e.g. to route it to a queue)."""
    app.conf.beat_schedule = {**beat_entries(), **(app.conf.beat_schedule or {})}


class OperationsScheduler(DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler that adds missing entries instead of resetting them.

    The stock scheduler rewrites every entry of ``beat_schedule`` (and ``celery.backend_cleanup``)
    into its table at each start, undoing what an operator changed in the admin. This one creates
    the entries that are not in the table yet and leaves the others as they are.
    """

    def update_from_dict(self, mapping: dict[str, dict[str, Any]]) -> None:
        from django_celery_beat.models import PeriodicTask

        existing = set(PeriodicTask.objects.filter(name__in=list(mapping)).values_list("name", flat=True))
        missing = {}
        for name, entry in mapping.items():
            if name in existing:
                continue
            options = dict(entry.get("options") or {})
            if "expires" in options:  # django-celery-beat's table calls it expire_seconds
                options.setdefault("expire_seconds", options.pop("expires"))
            missing[name] = {**entry, "options": options}
        super().update_from_dict(missing)
