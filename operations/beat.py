"""django-celery-beat's scheduler, as the app would have it.

(The reconciler is not a periodic task: it runs in a thread of beat's own process, see
``operations.reconciler``.)
"""

from __future__ import annotations

from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler


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
