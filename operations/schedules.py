"""Schedules: start an operation of a kind, with fixed parameters, at every firing of a beat entry.

A ``Schedule`` row holds the kind, parameters and owner; its timing is a django-celery-beat
``PeriodicTask`` (a crontab or an interval) that calls ``operations.fire_schedule`` with the
schedule's id. Pausing a schedule disables that entry; beat's DatabaseScheduler sees the change
on its next sync. Every write here goes through these services and leaves a ``ScheduleEvent``.

A firing is a start like any other (the owner's quota, the kind's ``max_concurrent``); a refused
one is an event, not an error. Its idempotency key is the beat message's id, so a firing
delivered twice (acks_late, a worker lost) starts one operation.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.schedules import crontab as celery_crontab
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .catalogue import get_kind
from .exceptions import (
    InvalidParams,
    OperationError,
    OperationNotFound,
    TransitionRefused,
    UnknownKind,
)
from .models import Operation, Schedule, ScheduleEvent
from .services import Actor, clean_params, operation_start_once

log = logging.getLogger("operations")

FIRE_TASK = "operations.fire_schedule"
#: The shortest interval a schedule may have: shorter is a loop, not a schedule.
MIN_EVERY = 1.0
#: Events kept per schedule (firings and verbs); older ones go as new ones come.
EVENTS_KEPT = 500


def schedule_create(*, name: str, kind: str, params: dict | None = None, owner: Any = None,
                    actor: Actor | str | Any, crontab: str | None = None, every: float | None = None) -> Schedule:
    """A schedule that starts ``kind`` with ``params`` (checked now, as a start checks them)
    at each firing of ``crontab`` ("*/5 * * * *": minute hour day-of-month month day-of-week, in
    TIME_ZONE) or ``every`` seconds — one of the two."""
    from django_celery_beat.models import PeriodicTask

    actor = Actor.coerce(actor)
    errors = {}
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name or len(name) > 150:
        errors["name"] = ["give the schedule a name of 1 to 150 characters"]
    elif Schedule.objects.filter(name=name).exists():
        errors["name"] = [f"a schedule named {name!r} exists already"]
    try:
        spec = get_kind(kind)
    except UnknownKind as exc:
        errors["kind"] = [str(exc)]
        spec = None
    if errors:
        raise InvalidParams(errors)
    clean_params(spec, params)  # refused now, not at every firing; each firing checks them again
    params = dict(params or {})
    timing = _timing(crontab, every)
    with transaction.atomic():
        task = PeriodicTask.objects.create(name=f"operations schedule: {name}", task=FIRE_TASK, args="[]", **timing)
        schedule = Schedule.objects.create(name=name, kind=spec.name, params=params, owner=owner, periodic_task=task)
        task.args = json.dumps([schedule.pk])
        task.save(update_fields=["args"])
        _event(schedule, actor, f"created: {spec.name} {_describe(task)}")
    return schedule


def schedule_pause(*, schedule: Schedule | int, actor: Actor | str | Any) -> Schedule:
    """No more firings until it is resumed (operations it started go on)."""
    return _set_enabled(schedule, Actor.coerce(actor), False)


def schedule_resume(*, schedule: Schedule | int, actor: Actor | str | Any) -> Schedule:
    """Fire again, from the next time its timing says."""
    return _set_enabled(schedule, Actor.coerce(actor), True)


def schedule_delete(*, schedule: Schedule | int, actor: Actor | str | Any) -> None:
    """Delete the schedule and its beat entry; the operations it started stay (unlinked)."""
    actor = Actor.coerce(actor)
    found = _get(schedule)
    with transaction.atomic():
        found.periodic_task.delete()  # the schedule goes with it (one-to-one, cascade)
    log.info("schedule %r deleted by %s", found.name, actor.name)


def schedule_fire(schedule_id: int, *, firing_id: str, now: Any = None) -> Operation | None:
    """Beat's firing (the ``operations.fire_schedule`` task): start the operation, or record why
    not. Returns the operation started (or started by the same firing before), None if refused."""
    from .services import BEAT

    schedule = Schedule.objects.select_related("owner", "periodic_task").filter(pk=schedule_id).first()
    if schedule is None:
        log.warning("schedule %s fired but does not exist any more", schedule_id)
        return None
    if not schedule.periodic_task.enabled:
        return None  # paused after the firing was sent
    now = now or timezone.now()
    try:
        operation, created = operation_start_once(
            kind=schedule.kind, params=schedule.params, owner=schedule.owner, actor=BEAT, schedule=schedule,
            idempotency_key=f"schedule:{schedule.pk}:{firing_id}")
    except OperationError as exc:
        with transaction.atomic():
            Schedule.objects.filter(pk=schedule.pk).update(refused=F("refused") + 1, last_fired_at=now,
                                                           last_outcome=f"refused: {exc}")
            _event(schedule, BEAT, f"firing refused: {exc}")
        log.warning("schedule %r: firing refused: %s", schedule.name, exc)
        return None
    if created:
        with transaction.atomic():
            Schedule.objects.filter(pk=schedule.pk).update(fired=F("fired") + 1, last_fired_at=now,
                                                           last_outcome=f"started operation {operation.pk}")
            _event(schedule, BEAT, f"fired: started operation {operation.pk}", operation=operation)
    return operation


# --- helpers ----------------------------------------------------------------------------------


def _timing(crontab, every):
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule

    if (crontab is None) == (every is None):
        raise InvalidParams({"__all__": ["give a crontab (\"*/5 * * * *\") or an interval in seconds, one of the two"]})
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not MIN_EVERY <= every <= 366 * 86400:
            raise InvalidParams({"every": [f"an interval is a number of seconds from {MIN_EVERY:g} to a year, not {every!r}"]})
        interval, _ = IntervalSchedule.objects.get_or_create(every=int(round(every)), period=IntervalSchedule.SECONDS)
        return {"interval": interval}
    fields = crontab.split() if isinstance(crontab, str) else []
    if len(fields) != 5:
        raise InvalidParams({"crontab": [f"a crontab has five fields (minute hour day-of-month month day-of-week), "
                                         f"e.g. \"*/5 * * * *\"; not {crontab!r:.60}"]})
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    if any(len(field) > 64 for field in fields):
        raise InvalidParams({"crontab": ["a crontab field has at most 64 characters"]})
    try:
        celery_crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    except Exception as exc:  # celery's parser says what is wrong in its own exceptions
        raise InvalidParams({"crontab": [f"{crontab!r:.80}: {exc}"]}) from None
    entry, _ = CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week,
        timezone=settings.TIME_ZONE)
    return {"crontab": entry}


def _describe(task):
    if task.interval_id:
        return f"every {task.interval.every} s"
    c = task.crontab
    return f"at crontab {c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week} ({c.timezone})"


def describe_timing(schedule: Schedule) -> str:
    """When it fires, for people: "every 60 s", "at crontab */5 * * * * (UTC)"."""
    return _describe(schedule.periodic_task)


def _get(schedule):
    schedule_id = getattr(schedule, "pk", schedule)
    found = Schedule.objects.select_related("periodic_task").filter(pk=schedule_id).first()
    if found is None:
        raise OperationNotFound(f"schedule {schedule_id} does not exist")
    return found


def _set_enabled(schedule, actor, enabled):
    from django_celery_beat.models import PeriodicTask

    found = _get(schedule)
    verb = "resumed" if enabled else "paused"
    with transaction.atomic():
        changed = PeriodicTask.objects.filter(pk=found.periodic_task_id, enabled=not enabled).update(enabled=enabled)
        if not changed:
            raise TransitionRefused(f"schedule {found.name!r} is {'running' if enabled else 'paused'} already")
        # update() sends no signal: tell beat's DatabaseScheduler that its entries changed
        from django_celery_beat.models import PeriodicTasks

        PeriodicTasks.update_changed()
        _event(found, actor, verb)
    return _get(found)


def _event(schedule, actor, note, operation=None):
    ScheduleEvent.objects.create(schedule=schedule, actor=actor.name, via=actor.via, note=note, operation=operation)
    stale = (ScheduleEvent.objects.filter(schedule=schedule).order_by("-at", "-id")
             .values_list("id", flat=True)[EVENTS_KEPT:EVENTS_KEPT + 100])
    if stale:
        ScheduleEvent.objects.filter(pk__in=list(stale)).delete()
