"""Reads: which operations a user may see, an operation's remaining workflow, its data rows."""

from django.utils import timezone

from .catalogue import UnknownKind, get_kind
from .conf import conf, heartbeat_interval
from .exceptions import DATA_ERROR_NOTE
from .models import Operation, OperationEvent, StepBoundary, StepMember
from .states import ACTIVE, TERMINAL, Status, legal_verbs

#: The orders a list may be read in (the API's ``?ordering=``); newest first by default.
LIST_ORDERINGS = ("-created_at", "created_at", "-updated_at", "updated_at", "-id", "id")


def operation_list(*, user=None, status=None, kind=None, mine=False, owner=None, created_after=None,
                   created_before=None, ordering="-created_at"):
    """Newest first; a non-staff user (or anyone, with ``mine``) sees only their own operations.

    ``status`` and ``kind`` may be one value or a list of them; ``owner`` (a username) narrows a
    staff member's view; ``created_after`` / ``created_before`` bound the creation time."""
    tiebreak = "id" if ordering.lstrip("-") == "id" else ("-id" if ordering.startswith("-") else "id")
    queryset = Operation.objects.select_related("owner").order_by(ordering, tiebreak)
    if user is not None and (mine or not user.is_staff):
        queryset = queryset.filter(owner=user)
    if status:
        queryset = queryset.filter(status__in=[status] if isinstance(status, str) else status)
    if kind:
        queryset = queryset.filter(kind__in=[kind] if isinstance(kind, str) else kind)
    if owner:
        queryset = queryset.filter(owner__username=owner)
    if created_after:
        queryset = queryset.filter(created_at__gte=created_after)
    if created_before:
        queryset = queryset.filter(created_at__lt=created_before)
    return queryset


def operation_get(*, operation_id, user=None):
    """The operation, if ``user`` may see it; Operation.DoesNotExist otherwise (a 404, not a 403)."""
    return operation_list(user=user).get(pk=operation_id)


def run_is_running(*, operation_id: int, run_token: int) -> bool:
    """Whether run ``run_token`` still runs: no pause or cancel pending, and no other run took over
    (one indexed read; group members ask it through ``operations.checkpoint()``)."""
    return Operation.objects.filter(pk=operation_id, run_token=run_token, status=Status.RUNNING).exists()


def can_control(user, operation, verb):
    """Owners control their operations; staff control others' with the verb's model permission."""
    if not user.is_authenticated:
        return False
    if operation.owner_id == user.pk:
        return True
    return user.is_staff and user.has_perm(f"operations.{verb}_operation")


def schedule_list(*, user):
    """The schedules ``user`` may see: their own; staff see all."""
    from .models import Schedule

    schedules = Schedule.objects.select_related("owner", "periodic_task__interval", "periodic_task__crontab")
    return schedules.order_by("name") if user.is_staff else schedules.filter(owner=user).order_by("name")


def can_manage_schedule(user, schedule, permission):
    """Owners manage their schedules; staff manage others' with the model permission
    (``pause_schedule``, ``delete_schedule``)."""
    if not user.is_authenticated:
        return False
    if schedule.owner_id == user.pk:
        return True
    return user.is_staff and user.has_perm(f"operations.{permission}_schedule")


def operation_events(*, operation):
    return OperationEvent.objects.filter(operation=operation).order_by("at", "id")


def remaining_workflow(operation):
    """What is left to run: the steps from the head on, the carried value and the in-step cursor
    (a hidden parameter's value, a server path, shows as ``<name>``)."""
    steps = operation.steps
    return _redacted(operation, {
        "next_step": operation.step_index,
        "steps_total": len(steps),
        "pause_every": (operation.workflow or {}).get("pause_every", 1),
        "carry": operation.carry,
        "checkpoint": operation.checkpoint,
        "steps": steps[operation.step_index:],
    })


def _redacted(operation, value):
    """``value`` with every string equal to one of the operation's hidden parameters replaced by
    ``<name>``: a plan's arguments repeat the parameters it was built from."""
    kind = _kind_or_none(operation)
    params = operation.params if isinstance(operation.params, dict) else {}
    secrets = {params[name]: f"<{name}>" for name in (kind.hidden_params if kind else ())
               if isinstance(params.get(name), str) and params[name]}
    if not secrets:
        return value

    def walk(item):
        if isinstance(item, str):
            return secrets.get(item, item)
        if isinstance(item, dict):
            return {key: walk(child) for key, child in item.items()}
        if isinstance(item, list):
            return [walk(child) for child in item]
        return item

    return walk(value)


def operation_is_active(operation):
    return operation.status in ACTIVE


def operation_actions(operation, user=None):
    """The user verbs that apply now (the buttons to show), and that ``user`` may use."""
    verbs = legal_verbs(operation.status)
    return verbs if user is None else [v for v in verbs if can_control(user, operation, v)]


def fork_steps(operation):
    """The steps (1-based) a fork of ``operation`` may start from: the first, and each later step
    it reached whose carried value is kept (every completed step boundary, and the step it
    stopped or failed at) — never past its last step."""
    length = len(operation.steps)
    if not length:
        return []
    last = min(operation.step_index, length - 1)
    kept = StepBoundary.objects.filter(operation=operation, step_index__gt=0, step_index__lte=last)
    return [1] + [index + 1 for index in kept.order_by("step_index").values_list("step_index", flat=True)]


def operation_lineage(operation):
    """(the operation it was forked from or None, with the step; its forks, oldest first)."""
    forks = list(Operation.objects.filter(forked_from=operation).order_by("created_at", "id")
                 .only("id", "kind", "status", "forked_at_step", "created_at"))
    origin = (Operation.objects.filter(pk=operation.forked_from_id).only("id", "kind", "status").first()
              if operation.forked_from_id else None)
    return origin, forks


def operation_row_count(operation):
    """Rows of data the operation has stored right now, or None for kinds that store none."""
    try:
        kind = get_kind(operation.kind)
    except UnknownKind:
        return None
    return kind.count_rows(operation) if kind.count_rows else None


def operation_dependents(operation):
    """(what, how many) a deletion of ``operation`` removes with it, counted, never listed."""
    return [("history event(s)", OperationEvent.objects.filter(operation=operation).count()),
            ("group task(s)", StepMember.objects.filter(operation=operation).count()),
            ("kept step value(s)", StepBoundary.objects.filter(operation=operation).count()),
            ("row(s) of data it stored", operation_row_count(operation) or 0)]


def operation_kept_until(operation):
    """When retention will delete a finished operation (None: never, or it has not finished)."""
    from datetime import timedelta

    from .catalogue import kept_days

    if operation.finished_at is None or operation.status not in ("completed", "cancelled", "failed"):
        return None
    days = kept_days(_kind_or_none(operation), operation.status)
    return None if days is None else operation.finished_at + timedelta(days=days)


def operation_cancel_effect(operation):
    try:
        return get_kind(operation.kind).cancel_effect
    except UnknownKind:
        return "Unknown kind: nothing will be compensated."


def _kind_or_none(operation):
    try:
        return get_kind(operation.kind)
    except UnknownKind:
        return None


def heartbeat_age(operation, now=None):
    """Seconds since the last sign of life of a worker (or of the last dispatch); None if never."""
    if operation.heartbeat_at is None:
        return None
    return max(0.0, ((now or timezone.now()) - operation.heartbeat_at).total_seconds())


#: How often an open page asks again (seconds): fast while it moves, slower while it waits for a
#: person or for beat (a resume from the CLI or another tab still shows within ~2 s), never once
#: it is over.
POLL_ACTIVE, POLL_WAITING = 1, 2


def poll_seconds(operation):
    """How often the operation's page refreshes its live part; None once nothing can change it."""
    if operation.status in ACTIVE:
        return POLL_ACTIVE
    if operation.status in TERMINAL:
        return None
    return POLL_WAITING


#: The result shown inline on the page, in characters of JSON; the download has all of it.
RESULT_SHOWN_CHARS = 2000


def result_table(operation):
    """(columns, rows) of the operation's result as its kind lays it out, or None."""
    kind = _kind_or_none(operation)
    if operation.result is None or kind is None or kind.result_table is None:
        return None
    return kind.result_table(operation.result)


def can_start_again(operation):
    """A finished, failed or cancelled operation can be the template of a new one (Start again)."""
    return operation.status in TERMINAL or operation.status == Status.FAILED


def retry_note(operation):
    """For a failed operation, what Retry will do — said plainly when its input is at fault."""
    if operation.status != Status.FAILED:
        return None
    if DATA_ERROR_NOTE in (operation.error or ""):
        return ("Retry runs it again from where it stopped, on the same input, and a data error fails the same "
                "way: correct the input and use Start again.")
    return "Retry runs it again from where it stopped (its finished steps and checkpoints are kept)."


def shown_params(operation):
    """The operation's parameters as people may see them: without those its kind hides (server
    paths; the source's name is shown instead)."""
    kind = _kind_or_none(operation)
    hidden = kind.hidden_params if kind else ()
    params = operation.params if isinstance(operation.params, dict) else {}
    return {name: value for name, value in params.items() if name not in hidden}


def shown_heartbeat_age(operation, now=None):
    """The heartbeat's age where it means something to people: an active operation (is it still
    moving?) or an interrupted one (how long since its worker was heard from); else None."""
    if operation.status not in ACTIVE and operation.status != Status.INTERRUPTED:
        return None
    return heartbeat_age(operation, now)


def silence(operation, now=None):
    """For an active operation silent longer than two heartbeat intervals: what to tell people
    (its worker may be gone or stuck). None while it shows signs of life, or is not active."""
    age = heartbeat_age(operation, now)
    if operation.status not in ACTIVE or age is None or age <= 2 * heartbeat_interval():
        return None
    lease = conf.HEARTBEAT_LEASE
    then = ("beat calls it interrupted" if age < lease
            else "beat calls it interrupted at its next round (is beat running?)")
    return (f"No sign of life from a worker for {human_duration(age)} (a running step reports every "
            f"{human_duration(heartbeat_interval())}): its worker may be gone or stuck; {then} after "
            f"{human_duration(lease)} without one.")


def human_duration(seconds):
    """12 s, 3 min 4 s, 2 h 5 min — for ETAs and silences."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def operation_speed(operation, events):
    """(units per second over the time it was active, seconds left at that rate) — None when unknown,
    and when the operation is silent: a stalled operation has no rate and no end in sight."""
    if silence(operation):
        return None, None
    active, since = 0.0, None
    for event in events:
        if since is not None:
            active += (event.at - since).total_seconds()
        since = event.at if event.to_status in ACTIVE else None
    if since is not None:
        active += (timezone.now() - since).total_seconds()
    if active <= 0 or not operation.progress_done:
        return None, None
    rate = operation.progress_done / active
    left = None
    if operation.progress_total and operation.status in ACTIVE:
        left = max(0.0, (operation.progress_total - operation.progress_done) / rate)
    return rate, left


def operation_lineage_page(operation, user):
    """The detail page's cards that are not polled: where the operation was forked from, its
    forks, the steps a fork may start from if ``user`` may fork it, and the edit form."""
    origin, forks = operation_lineage(operation)
    may_fork = can_control(user, operation, "fork")
    return {"origin": origin, "forks": forks, "fork_steps": fork_steps(operation) if may_fork else [],
            "edit_form": edit_form(operation, user)}


def edit_form(operation, user, data=None):
    """The kind's form cut down to its editable parameters, filled with the operation's values:
    for a paused operation whose kind has some, if ``user`` may edit it; else None."""
    kind = _kind_or_none(operation)
    if (operation.status != Status.PAUSED or kind is None or not kind.editable
            or not can_control(user, operation, "edit")):
        return None
    form = kind.form(data=data, initial={name: operation.params.get(name) for name in kind.editable})
    for name in list(form.fields):
        if name not in kind.editable:
            del form.fields[name]
    return form


def operation_page(operation, user):
    """Everything the detail page (and its live fragment) shows, read in a fixed number of queries."""
    events = list(operation_events(operation=operation))
    kind = _kind_or_none(operation)
    rate, seconds_left = operation_speed(operation, events)
    return {
        "events": events,
        "actions": operation_actions(operation, user),
        "is_active": operation.status in ACTIVE,
        "poll_seconds": poll_seconds(operation),
        "is_terminal": operation.status in TERMINAL,
        "kind_label": kind.label if kind else operation.kind,
        "unit": kind.progress_unit if kind else "steps",
        "rate": rate,
        "seconds_left": seconds_left,
        "heartbeat_age": shown_heartbeat_age(operation),
        "shown_params": shown_params(operation),
        "result_table": result_table(operation),
        "can_start_again": can_start_again(operation),
        "retry_note": retry_note(operation),
        "silence": silence(operation),
        "row_count": operation_row_count(operation),
        "cancel_effect": operation_cancel_effect(operation),
        "remaining": remaining_workflow(operation),
    }
