"""Every write to an operation: start, the user verbs, and the worker's and beat's transitions.

A state change is one conditional UPDATE (``operations.bus``) plus an ``OperationEvent`` row, in
one transaction, with any dispatch on commit. Zero rows changed means the change is refused with
a message that says why. Faces (admin, pages, API, CLI) and the engine call only these functions.
The user verbs (``operation_start`` … ``operation_retry``) are public, exported by ``operations``;
the worker's and beat's transitions below them are internal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial, reduce
from typing import Any

from celery import current_app
from django import forms
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import bus, uploads
from .catalogue import Recovery, get_kind
from .conf import conf, heartbeat_interval
from .exceptions import (  # noqa: F401  (re-exported: callers catch them from here too)
    ConcurrencyLimitReached,
    Fenced,
    IdempotencyConflict,
    InvalidParams,
    OperationError,
    OperationNotFound,
    QuotaExceeded,
    TransitionRefused,
    UnknownKind,
    WorkflowError,
)
from .models import (
    ConcurrencySlot,
    Operation,
    OperationEvent,
    OperationQuota,
    StepBoundary,
    StepCache,
    StepMember,
)
from .states import (
    ACTIVE,
    RELEASES_SLOT,
    TRANSITIONS,
    UNFINISHED,
    VERB_PAST,
    Status,
    label,
    refusal_message,
    transitions_for_verb,
)
from .waiting import SLEEP
from .workflow import (
    build_plan,
    cache_key,
    member_task_id,
    step_arguments,
    validate_plan,
)

log = logging.getLogger("operations")

RUN_STEP_TASK = "operations.run_step"
RUN_MEMBER_TASK = "operations.run_member"


# --- actors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who changes an operation: a user (through a face) or the worker, beat or the CLI."""

    name: str
    via: str
    user: Any = None

    @classmethod
    def coerce(cls, who: Actor | str | Any, via: str = "web") -> Actor:
        """An Actor from an Actor, a system actor's name ("worker", "beat", "cli") or a user."""
        if isinstance(who, Actor):
            return who
        if isinstance(who, str):
            try:
                return SYSTEM_ACTORS[who]
            except KeyError:
                raise ValueError(f"unknown actor {who!r}; a user or one of {sorted(SYSTEM_ACTORS)}") from None
        return cls(name=who.get_username(), via=via, user=who)


WORKER = Actor("worker", "worker")
BEAT = Actor("beat", "beat")
CLI = Actor("cli", "cli")
SYSTEM_ACTORS = {"worker": WORKER, "beat": BEAT, "cli": CLI}


# --- the building blocks ----------------------------------------------------------------------


def _event(operation_id, actor, from_status, to_status, note=""):
    _event_row(operation_id, actor, from_status, to_status, note).save()


def _transition(operation_id, name, actor, *, token=None, note="", assignments=None,
                returning=("previous_status",), record_event=True, conditions=()):
    """Apply transition ``name`` if the row is in one of its source statuses; None if not.

    Must run inside a transaction: the UPDATE, the slot release and the event commit together.
    """
    transition = TRANSITIONS[name]
    now = timezone.now()
    values = {"status": transition.target, "previous_status": bus.Raw(bus.column("status")),
              "updated_at": now}
    if transition.target in {Status.COMPLETED, Status.CANCELLED, Status.FAILED}:
        values["finished_at"] = now
    if transition.target != Status.INTERRUPTED and name != "obey_pause":
        # Beat acts by itself only on an interrupted operation (its automatic resume), a waiting
        # one (its timeout), and a paused one asked to resume at a time (kept from the pause).
        values["resume_at"] = None
    values.update(assignments or {})
    conditions = [bus.in_statuses(transition.sources), *conditions]
    if token is not None:
        conditions.append((f"{bus.column('run_token')} = %s", [token]))
    # A status change always commits durably, even inside a worker's relaxed step transaction.
    row = bus.update(operation_id, values, conditions, returning, durable=True)
    if row is None:
        return None
    if transition.target in RELEASES_SLOT:
        ConcurrencySlot.objects.filter(operation_id=operation_id).delete()
    if transition.target in {Status.COMPLETED, Status.CANCELLED}:  # its upload is never read again
        transaction.on_commit(partial(uploads.discard_for, operation_id), robust=True)
    if record_event:
        _event(operation_id, actor, row[0], transition.target, note)
    return row


def dispatch_on_commit(operation_id, run_token, index, steps):
    """Publish the message for step ``index`` once the transaction that made it due commits.

    The message names only (operation, run token, step); the plan stays in the row. If the
    publish fails, the row still says running and the reconciler notices the silence.
    """
    route = step_route(steps[index]) if index < len(steps) else {}

    def publish():
        current_app.send_task(RUN_STEP_TASK, args=[operation_id, run_token, index], **route)

    transaction.on_commit(publish, robust=True)


def publish_overlapped(operation_id, run_token, index, steps, hop):
    """Publish the message for step ``index`` now, while the advance that makes it due is still in
    flight (``step_advance(during=…)``): it carries the advance's ``hop``, and its claim runs the
    step only once the row carries that token, i.e. once that advance, and no other, won. A
    failed publish is logged, as on commit: the reconciler notices the silence."""
    try:
        current_app.send_task(RUN_STEP_TASK, args=[operation_id, run_token, index], kwargs={"hop": hop},
                              **step_route(steps[index]))
    except Exception:
        log.exception("operation %s: could not publish step %s of run %s", operation_id, index, run_token)


def advance_can_overlap():
    """Whether the next advance can publish its step's message while it runs (``step_advance``'s
    ``during``): a single statement on PostgreSQL, outside any transaction."""
    return bus.can_overlap()


def new_hop():
    """A token for one overlapped advance (63 bits: two advances never draw the same)."""
    return secrets.randbits(63)


def step_route(entry):
    """Where a step's message goes: its queue and priority options (none: the default queue)."""
    options = entry.get("options", {})
    return {key: options[key] for key in ("queue", "priority") if key in options}


def _acquire_slot(operation_id, kind, owner_id):
    """Take one of the kind's ``max_concurrent`` slots; the unique key makes two takers impossible."""
    limit = kind.concurrency_limit()
    if not limit:
        return
    scope = "global" if kind.concurrency_scope == "global" else f"user:{owner_id}"
    for slot in range(limit):
        try:
            with transaction.atomic():
                ConcurrencySlot.objects.create(kind=kind.name, scope=scope, slot=slot, operation_id=operation_id)
            return
        except IntegrityError:
            continue
    holders = list(ConcurrencySlot.objects.filter(kind=kind.name, scope=scope)
                   .order_by("slot").values_list("operation_id", flat=True))
    where = "at a time" if kind.concurrency_scope == "global" else "per user at a time"
    held = ", ".join(str(h) for h in holders) or "another operation"
    raise ConcurrencyLimitReached(
        f"{kind.name} allows {limit} unfinished operation(s) {where}; "
        f"operation {held} holds the slot — wait for it to end, or cancel it"
    )


def _compensate(operation_id, kind_name):
    """Run the kind's compensation (inside the cancel's transaction); return what it undid."""
    try:
        kind = get_kind(kind_name)
    except UnknownKind:
        return f"kind {kind_name} is no longer registered: nothing was compensated"
    if kind.compensate is None:
        return "nothing to undo"
    return kind.compensate(Operation.objects.get(pk=operation_id)) or "compensation ran"


def _cancel(operation_id, name, actor, *, token=None, note="", conditions=()):
    with transaction.atomic():
        row = _transition(operation_id, name, actor, token=token, record_event=False,
                          returning=("previous_status", "kind"), conditions=conditions)
        if row is None:
            return None
        undone = _compensate(operation_id, row[1])
        _event(operation_id, actor, row[0], Status.CANCELLED, f"{note}compensation: {undone}")
        _revoke_members_on_commit(operation_id)
        return row


def _terminate(operation_id, actor):
    """Stop the processes running the run's steps first, then cancel with compensation: a step
    stuck inside its transaction holds its locks (SQLite's only write lock among them) until its
    process is gone. A stopped step's message is acknowledged, never run again; a late write of
    one that was not reached is refused by the cancelled status."""
    token = Operation.objects.filter(pk=operation_id).values_list("run_token", flat=True).first()
    stopped = _stop_step_processes(operation_id, token)
    if stopped is None:
        what = "no worker answered (a step still running there can write nothing: it is cancelled)"
    else:
        what = f"stopped {stopped} worker process(es) running its step"
    return _cancel(operation_id, "terminate", actor, token=token, note=f"terminated: {what}; ")


def _stop_step_processes(operation_id, run_token):
    """Broadcast the workers' terminate command (operations.control) and count what they
    stopped; None when no worker could be asked or none answered within TAP_TERMINATE_TIMEOUT."""
    from .control import TERMINATE_COMMAND

    try:
        with current_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            replies = current_app.control.broadcast(
                TERMINATE_COMMAND, arguments={"operation_id": operation_id, "run_token": run_token},
                reply=True, timeout=conf.TERMINATE_TIMEOUT, connection=connection)
    except Exception:  # the broker is away: the cancel still fences every late write
        log.exception("operation %s: could not ask the workers to stop its step", operation_id)
        return None
    answers = [answer for reply in replies or [] for answer in reply.values() if isinstance(answer, dict)]
    return sum(int(answer.get("stopped", 0)) for answer in answers) if answers else None


def _revoke_members_on_commit(operation_id):
    """Revoke the unfinished group members of a cancelled operation, so their waiting messages do
    not take a worker each. Only once cancelled: a member's task id is the same in every run, and
    a worker drops a revoked id for hours. Best effort: a member that starts anyway finds its
    operation cancelled at the claim and does nothing."""
    task_ids = [str(task_id) for task_id in StepMember.objects.filter(operation_id=operation_id)
                .exclude(state=StepMember.State.SUCCESS).values_list("task_id", flat=True)]
    if task_ids:
        transaction.on_commit(partial(_revoke, operation_id, task_ids), robust=True)


def _revoke(operation_id, task_ids):
    # One short try to reach the broker: a revoke is not worth a worker or a request hanging on it.
    with current_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        current_app.control.revoke(task_ids, connection=connection)
    log.info("operation %s: revoked %s unfinished task(s)", operation_id, len(task_ids))


def _refuse(operation_id, actor, verb, reason, *, record=False):
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    if record:
        with transaction.atomic():
            _event(operation_id, actor, status, status, f"{verb} refused: {reason}")
    raise TransitionRefused(
        f"operation {operation_id} cannot be {VERB_PAST[verb]}: {reason}",
        operation_id=operation_id, status=status,
    )


# --- start ------------------------------------------------------------------------------------


def clean_params(kind, params, files=None):
    """Validate ``params`` with the kind's form; raise InvalidParams naming each bad field."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidParams({"params": ["must be an object of parameter names to values"]})
    form = kind.form(data=params, files=files)
    errors = {}
    unknown = sorted(set(params) - set(form.fields))
    if unknown:
        errors["__all__"] = [
            f"unknown parameter(s) for {kind.name}: {', '.join(unknown)}; "
            f"expected: {', '.join(form.fields) or 'none'}"
        ]
    if not form.is_valid():
        for name, messages in form.errors.get_json_data().items():
            errors.setdefault(name, []).extend(m["message"] for m in messages)
    if errors:
        raise InvalidParams(errors)
    return form.params()




def quota_of(owner: Any) -> tuple[int | None, float | None]:
    """(max unfinished, max work seconds) for ``owner``: their OperationQuota, else the settings;
    no limit for staff, or when nobody owns the operation (the CLI, beat)."""
    if owner is None or getattr(owner, "is_staff", False):
        return None, None
    own = OperationQuota.objects.filter(user=owner).values_list("max_unfinished", "max_work_seconds").first()
    unfinished, work = own or (None, None)
    return (conf.USER_MAX_UNFINISHED if unfinished is None else unfinished,
            conf.USER_MAX_WORK_SECONDS if work is None else work)


def _check_quota(spec, cleaned, owner):
    max_unfinished, max_work = quota_of(owner)
    if max_work is not None and spec.work_seconds is not None:
        asked = spec.work_seconds(cleaned)
        if asked > max_work:
            raise QuotaExceeded(f"this {spec.name} asks for {asked:,.0f} worker-seconds; your quota is "
                                f"{max_work:,.0f} per operation (ask a staff member to raise it)")
    if max_unfinished is not None:
        # One start at a time per owner counts (the row lock; SQLite's write lock does as much).
        type(owner).objects.select_for_update().filter(pk=owner.pk).exists()
        unfinished = Operation.objects.filter(owner=owner, status__in=UNFINISHED).count()
        if unfinished >= max_unfinished:
            raise QuotaExceeded(f"you have {unfinished} unfinished operation(s), your quota is {max_unfinished}: "
                                f"let one finish, or cancel one (a staff member can raise the quota)")


def operation_start(*, kind: str, params: Mapping[str, Any] | None = None, owner: Any = None,
                    actor: Actor | str | Any, files: Mapping[str, Any] | None = None,
                    idempotency_key: str | None = None, deadline: float | None = None,
                    schedule: Any = None, pause_window: str | None = None) -> Operation:
    """Validate, plan and start an operation of ``kind``; its first step is dispatched on commit.

    With an ``idempotency_key``, a start the same owner already made with that key returns the
    operation it started instead (``operation_start_once`` says which happened). ``deadline``
    (seconds from now; default: the kind's) ends it, as the kind says, if it has not ended by then.
    """
    return operation_start_once(kind=kind, params=params, owner=owner, actor=actor, files=files,
                                idempotency_key=idempotency_key, deadline=deadline, schedule=schedule,
                                pause_window=pause_window)[0]


#: The longest idempotency key (a UUID is 36 characters; Stripe allows 255).
MAX_IDEMPOTENCY_KEY = 200


def operation_start_once(*, kind: str, params: Mapping[str, Any] | None = None, owner: Any = None,
                         actor: Actor | str | Any, files: Mapping[str, Any] | None = None,
                         idempotency_key: str | None = None, deadline: float | None = None,
                         schedule: Any = None, pause_window: str | None = None) -> tuple[Operation, bool]:
    """``operation_start``, and whether it started one: (operation, True), or (the operation this
    owner started with ``idempotency_key`` before, False) — as ``get_or_create`` answers. The
    same key with another kind, parameters or file is refused (``IdempotencyConflict``, a 409).

    The key is kept as long as the operation it started (retention removes both). The unique
    index on (owner, key) makes two concurrent starts with one key start one operation: the
    second waits for the first to commit, then answers with its operation.

    The concurrency slot is taken before the kind prepares its input (e.g. stores an upload), so
    a refused start leaves nothing behind; any error rolls the whole start back.
    """
    actor = Actor.coerce(actor)
    key = _idempotency_key(idempotency_key)
    window = _pause_window(pause_window)
    fingerprint = _start_fingerprint(kind, params, files, deadline, window) if key else ""
    if key:
        earlier = _started_with(owner, key, fingerprint)
        if earlier is not None:
            return earlier, False
    try:
        spec = get_kind(kind)
    except UnknownKind as exc:
        raise InvalidParams({"kind": [str(exc)]}) from None
    cleaned = clean_params(spec, params, files)
    seconds = _deadline_seconds(spec, deadline)
    now = timezone.now()
    try:
        with transaction.atomic():
            _check_quota(spec, cleaned, owner)
            if key:  # the owner's row lock (a quota) or the write lock (SQLite) was just taken
                earlier = _started_with(owner, key, fingerprint)
                if earlier is not None:
                    return earlier, False
            operation = Operation.objects.create(
                owner=owner, kind=spec.name, status=Status.RUNNING, run_token=1,
                idempotency_key=key, start_fingerprint=fingerprint, schedule=schedule, pause_window=window,
                deadline_seconds=seconds, deadline_at=now + timedelta(seconds=seconds) if seconds else None,
                created_at=now, started_at=now, heartbeat_at=now, updated_at=now,
            )
            _acquire_slot(operation.pk, spec, operation.owner_id)
            if spec.prepare is not None:
                cleaned = spec.prepare(cleaned, files)
            try:
                plan = build_plan(spec.build(cleaned), pause_every=spec.pause_every)
            except WorkflowError as exc:
                raise InvalidParams({"__all__": [str(exc)]}) from None
            operation.params, operation.workflow = cleaned, plan
            operation.progress_total = len(plan["steps"]) if spec.progress == "steps" else None
            operation.save(update_fields=["params", "workflow", "progress_total"])
            said = f"started with {len(plan['steps'])} step(s)"
            if seconds:
                said += f"; deadline {operation.deadline_at:%Y-%m-%d %H:%M:%S} ({seconds:g} s)"
            if key:
                said += f"; idempotency key {key!r}"
            _event(operation.pk, actor, "", Status.RUNNING, said)
            dispatch_on_commit(operation.pk, operation.run_token, 0, plan["steps"])
    except IntegrityError:
        # Another start with this key committed between our look and our insert (PostgreSQL
        # without a quota lock): the unique index refused ours, and everything rolled back.
        earlier = _started_with(owner, key, fingerprint) if key else None
        if earlier is None:
            raise
        return earlier, False
    return operation, True


def _idempotency_key(key):
    if key is None or key == "":
        return ""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY or "\x00" in key:
        raise InvalidParams({"idempotency_key": [
            f"an idempotency key is a text of 1 to {MAX_IDEMPOTENCY_KEY} characters (a UUID, say), not {key!r:.60}"]})
    return key.strip()


def _pause_window(window):
    if window is None or window == "":
        return ""
    from .windows import parse_window

    try:
        parse_window(window)
    except ValueError as exc:
        raise InvalidParams({"pause_window": [str(exc)]}) from None
    return window.strip()


def _start_fingerprint(kind, params, files, deadline, window=""):
    """What a start asked for, as a hash: a second start with the same key must ask the same."""
    uploaded = sorted((name, getattr(f, "name", ""), getattr(f, "size", None)) for name, f in (files or {}).items())
    asked = {"kind": kind, "params": params or {}, "files": uploaded, "deadline": deadline}
    if window:
        asked["pause_window"] = window
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()


def _started_with(owner, key, fingerprint):
    mine = Operation.objects.filter(owner__isnull=True) if owner is None else Operation.objects.filter(owner=owner)
    earlier = mine.filter(idempotency_key=key).first()
    if earlier is None:
        return None
    if earlier.start_fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"idempotency key {key!r} already started operation {earlier.pk} ({earlier.kind}) with another "
            f"kind, parameters, file or deadline; use a new key for a new start", operation_id=earlier.pk)
    return earlier


def _deadline_seconds(spec, deadline):
    """The operation's deadline in seconds from its start: as asked, else the kind's, else none."""
    if deadline is None:
        return spec.deadline
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= MAX_DEADLINE:
        raise InvalidParams({"deadline": [f"a deadline is a number of seconds above 0 and at most "
                                          f"{MAX_DEADLINE:g} (a year), not {deadline!r}"]})
    return float(deadline)


MAX_DEADLINE = 366 * 24 * 3600.0


# --- the user verbs ---------------------------------------------------------------------------


def operation_pause(*, operation: Operation | int, actor: Actor | str | Any,
                    resume_at: datetime | None = None) -> Operation:
    """Ask the worker to pause at the next pause point (a waiting operation: at once). With
    ``resume_at``, beat resumes it by itself then (within TAP_RECONCILE_INTERVAL), unless a
    person resumes or cancels it first."""
    if resume_at is None:
        return _apply_verb(operation, "pause", actor)
    at = future_time(resume_at, "resume_at")
    return _apply_verb(operation, "pause", actor, assignments={"resume_at": at},
                       note_more=f"; beat resumes it at {_when(at)}")


def operation_resume(*, operation: Operation | int, actor: Actor | str | Any,
                     at: datetime | None = None) -> Operation:
    """Resume a paused or interrupted operation (new run token), or withdraw a pending pause.
    With ``at``, a paused operation stays paused and beat resumes it then (``resume_at``)."""
    if at is None:
        return _apply_verb(operation, "resume", actor)
    return _plan_resume(operation, Actor.coerce(actor), future_time(at, "at"))


def _plan_resume(operation, actor, at):
    operation_id = getattr(operation, "pk", operation)
    with transaction.atomic():
        row = bus.update(operation_id, {"resume_at": at, "updated_at": timezone.now()},
                         [bus.in_statuses({Status.PAUSED})], ("status",))
        if row is not None:
            _event(operation_id, actor, Status.PAUSED, Status.PAUSED, f"resume planned: beat resumes it at {_when(at)}")
            return Operation.objects.get(pk=operation_id)
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    if status is None:
        raise OperationNotFound(f"operation {operation_id} does not exist")
    raise TransitionRefused(f"operation {operation_id} is {label(status).lower()}; only paused operations can be "
                            f"resumed at a time (pause it with a resume time instead)",
                            operation_id=operation_id, status=status)


#: How far ahead a time may be planned (a resume, a deadline): a year.
MAX_AHEAD = timedelta(days=366)


def future_time(value: Any, field: str) -> datetime:
    """An aware datetime in the next year from a datetime or ISO 8601 text; InvalidParams naming
    ``field`` otherwise (a naive time is in the current time zone)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidParams({field: [f"give a time in ISO 8601 (2026-12-01T22:00:00+00:00), not {value!r:.60}"]}) from None
    if not isinstance(value, datetime):
        raise InvalidParams({field: [f"give a time (ISO 8601), not {value!r:.60}"]})
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    now = timezone.now()
    if value <= now:
        raise InvalidParams({field: [f"{value.isoformat()} has passed; give a time to come"]})
    if value > now + MAX_AHEAD:
        raise InvalidParams({field: [f"{value.isoformat()} is more than a year ahead"]})
    return value


def _when(at):
    return timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S %Z")


def operation_cancel(*, operation: Operation | int, actor: Actor | str | Any) -> Operation:
    """Cancel: at the next pause point if running, at once (with compensation) otherwise."""
    return _apply_verb(operation, "cancel", actor)


def operation_retry(*, operation: Operation | int, actor: Actor | str | Any) -> Operation:
    """Resume a failed operation from the step that failed."""
    return _apply_verb(operation, "retry", actor)


def operation_terminate(*, operation: Operation | int, actor: Actor | str | Any) -> Operation:
    """Cancel an active operation now, even inside a step that never reaches a pause point: the
    worker process running its step is stopped (its uncommitted writes roll back with its
    connection), then the kind's compensation runs and the operation ends cancelled."""
    return _apply_verb(operation, "terminate", actor)


def operation_fork(*, operation: Operation | int, from_step: int, actor: Actor | str | Any) -> Operation:
    """Run an operation again from step ``from_step`` (1-based, as every face numbers steps), as
    a new operation of the same kind, owner, parameters and plan, linked both ways, that starts
    with the value carried into that step — without redoing the steps before it.

    Legal whatever the original's status, from any step it reached (``selectors.fork_steps``:
    the first, each completed step boundary, the step it stopped or failed at); the original is
    not changed, but its history records the fork. The new operation is started like any other
    (owner's quota, the kind's concurrency limit, the plan checked against the allowlist again)
    and its first step is dispatched on commit.
    """
    from .selectors import fork_steps

    actor = Actor.coerce(actor)
    operation_id = getattr(operation, "pk", operation)
    original = Operation.objects.filter(pk=operation_id).first()
    if original is None:
        raise OperationNotFound(f"operation {operation_id} does not exist")
    try:
        spec = get_kind(original.kind)
        validate_plan(original.workflow)
    except (WorkflowError, UnknownKind) as exc:
        _refuse(operation_id, actor, "fork", str(exc))
    steps = original.workflow["steps"]
    allowed = fork_steps(original)
    where = f"operation {operation_id} can be forked from step {listed_steps(allowed)} of {len(steps)}, not {from_step!r}"
    if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 1:
        raise InvalidParams({"from_step": [f"give a step number: {where}"]})
    if from_step not in allowed:  # a step number, but one it has not reached (yet): a conflict, as a verb
        raise TransitionRefused(where, operation_id=operation_id, status=original.status)
    index = from_step - 1
    carry = (None if index == 0 else
             StepBoundary.objects.filter(operation_id=operation_id, step_index=index).values_list("carry", flat=True).get())
    try:
        params = uploads.copy_for(original.params)
    except FileNotFoundError:
        _refuse(operation_id, actor, "fork", "the file it read was uploaded and has been removed since it ended; "
                                             "start a new operation with the file")
    owner = original.owner
    counts_steps = spec.progress == "steps"
    now = timezone.now()
    try:
        with transaction.atomic():
            _check_quota(spec, params, owner)
            fork = Operation.objects.create(
                owner=owner, kind=spec.name, status=Status.RUNNING, run_token=1, params=params,
                workflow=original.workflow, step_index=index, carry=carry,
                progress_done=index if counts_steps else 0, progress_total=len(steps) if counts_steps else None,
                forked_from_id=operation_id, forked_at_step=from_step,
                created_at=now, started_at=now, heartbeat_at=now, updated_at=now,
            )
            _acquire_slot(fork.pk, spec, fork.owner_id)
            if index:  # the fork can be forked from where it starts, too
                StepBoundary.objects.create(operation=fork, step_index=index, carry=carry)
            where = f"step {from_step} of {len(steps)}"
            _event(fork.pk, actor, "", Status.RUNNING, f"forked from operation {operation_id} at {where}")
            _event(operation_id, actor, original.status, original.status,
                   f"forked: operation {fork.pk} runs it again from {where}")
            dispatch_on_commit(fork.pk, fork.run_token, index, steps)
    except BaseException:
        if params is not original.params:
            uploads.discard(params)  # the fork's copy of the upload, which nothing else reads
        raise
    return fork


#: What an edit may say of one remaining step (``operation_edit(steps=[...])``).
STEP_EDIT_KEYS = frozenset({"step", "task", "args", "kwargs", "skip"})


def operation_edit(*, operation: Operation | int, actor: Actor | str | Any,
                   params: Mapping[str, Any] | None = None, steps: list[dict] | None = None) -> Operation:
    """Change what a paused operation has left to run; a resume runs the edited plan.

    ``params``: new values of the kind's ``editable`` parameters, checked by the kind's form
    fields; the plan is built again from them and its remaining steps replace the stored ones.
    ``steps``: edits of single remaining steps, ``{"step": N, "kwargs": {...}}`` (or ``"args"``,
    ``"task"``), or ``{"step": N, "skip": true}`` to leave it out (N is 1-based, as the pages
    number steps). The edited plan is checked as a start's is (only registered steps, arguments
    bound against each step's signature); a refusal names what was wrong and changes nothing.
    One conditional UPDATE (still paused, same run and write sequence); an event records the diff.
    """
    actor = Actor.coerce(actor)
    operation_id = getattr(operation, "pk", operation)
    row = Operation.objects.filter(pk=operation_id).first()
    if row is None:
        raise OperationNotFound(f"operation {operation_id} does not exist")
    if row.status != Status.PAUSED:
        raise TransitionRefused(f"operation {operation_id} is {row.get_status_display().lower()}; only paused "
                                f"operations can be edited (pause it first)", operation_id=operation_id, status=row.status)
    try:
        spec = get_kind(row.kind)
    except UnknownKind as exc:
        raise TransitionRefused(f"operation {operation_id} cannot be edited: {exc}", operation_id=operation_id,
                                status=row.status) from None
    done, plan = row.step_index, row.workflow
    changes, new_params = [], dict(row.params)
    if params:
        new_params, changes = _edited_params(spec, row.params, params)
        rebuilt = _plan_of(spec, new_params, plan["pause_every"])
        if rebuilt["steps"][:done] != plan["steps"][:done] or len(rebuilt["steps"]) < done:
            raise InvalidParams({"params": ["this change would alter steps already done; fork the operation instead"]})
        plan = {**plan, "steps": plan["steps"][:done] + rebuilt["steps"][done:]}
    checkpoint = row.checkpoint
    if steps:
        plan, step_changes, head_changed = _edited_steps(plan, done, steps)
        changes += step_changes
        if head_changed:
            checkpoint = None  # the head step is not the one whose cursor this was
    if not changes:
        raise InvalidParams({"__all__": ["nothing to change: give params or steps that differ from the plan's"]})
    try:
        validate_plan(plan)
    except WorkflowError as exc:
        raise InvalidParams({"steps": [str(exc)]}) from None
    assignments = {"params": new_params, "workflow": plan, "checkpoint": checkpoint, "updated_at": timezone.now()}
    if spec.progress == "steps":
        assignments["progress_total"] = len(plan["steps"])
    with transaction.atomic():
        changed = bus.update(operation_id, assignments, [
            bus.in_statuses({Status.PAUSED}), (f"{bus.column('run_token')} = %s", [row.run_token]),
            (f"{bus.column('fence')} = %s", [row.fence])])
        if changed is None:
            _refuse(operation_id, actor, "edit", "it changed while the edit was checked; look again and retry")
        _event(operation_id, actor, Status.PAUSED, Status.PAUSED, "edited: " + "; ".join(changes))
    return Operation.objects.get(pk=operation_id)


def _edited_params(spec, stored, edits):
    if not isinstance(edits, Mapping):
        raise InvalidParams({"params": ["must be an object of parameter names to values"]})
    not_editable = sorted(set(edits) - set(spec.editable))
    if not_editable:
        allowed = ", ".join(spec.editable) or "none"
        raise InvalidParams({name: [f"{spec.name} does not let {name} change while paused (editable: {allowed})"]
                             for name in not_editable})
    form, errors, new, changes = spec.form(), {}, dict(stored), []
    for name, value in edits.items():
        try:
            new[name] = form.param_value(name, value)
        except forms.ValidationError as exc:
            errors[name] = list(exc.messages)
            continue
        if new[name] != stored.get(name):
            changes.append(f"{name} {stored.get(name)!r} → {new[name]!r}")
    if errors:
        raise InvalidParams(errors)
    return new, changes


def _plan_of(spec, params, pause_every):
    try:
        return build_plan(spec.build(params), pause_every=pause_every)
    except (WorkflowError, KeyError, TypeError, ValueError) as exc:
        raise InvalidParams({"params": [f"the plan cannot be built from them: {exc}"]}) from None


def _edited_steps(plan, done, edits):
    """Apply step edits to a copy of ``plan``; returns (plan, changes described, head changed)."""
    if not isinstance(edits, list):
        raise InvalidParams({"steps": ["must be a list of step edits"]})
    steps, skipped, changes = [dict(entry) for entry in plan["steps"]], set(), []
    length = len(steps)
    for position, edit in enumerate(edits):
        where = f"steps[{position}]"
        if not isinstance(edit, dict) or not isinstance(edit.get("step"), int) or isinstance(edit.get("step"), bool):
            raise InvalidParams({where: ['give {"step": N, …} with N a step number']})
        unknown = sorted(set(edit) - STEP_EDIT_KEYS)
        if unknown:
            raise InvalidParams({where: [f"unknown key(s) {', '.join(unknown)}; a step edit has "
                                         f"{', '.join(sorted(STEP_EDIT_KEYS))}"]})
        number = edit["step"]
        if not done < number <= length:
            raise InvalidParams({where: [f"step {number}: only the remaining steps, {done + 1}–{length}, can be edited"]})
        index = number - 1
        if "group" in steps[index]:
            raise InvalidParams({where: [f"step {number} is a group of tasks; a group's tasks cannot be edited"]})
        if edit.get("skip"):
            skipped.add(index)
            changes.append(f"step {number} ({steps[index]['task']}) skipped")
            continue
        for key in ("task", "args", "kwargs"):
            if key in edit and edit[key] != steps[index].get(key):
                changes.append(f"step {number} {key} {steps[index].get(key)!r} → {edit[key]!r}")
                steps[index][key] = edit[key]
    kept = [entry for index, entry in enumerate(steps) if index not in skipped]
    if len(kept) <= done and skipped:
        raise InvalidParams({"steps": ["an edit cannot skip every remaining step; cancel the operation instead"]})
    head_changed = done in skipped or (done < length and steps[done] != plan["steps"][done])
    return {**plan, "steps": kept}, changes, head_changed


def listed_steps(numbers):
    """1–5, 8 (the numbers in runs)."""
    runs, numbers = [], sorted(numbers)
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs) or "(none)"


def operation_approve(*, operation: Operation | int, actor: Actor | str | Any, payload: Any = None) -> Operation:
    """Wake a waiting operation (whatever it waits for): it goes on with the next step, with
    ``payload`` as the carried value if one is given (else the value carried into the wait)."""
    return _wake_verb(operation, "approve", actor, payload=payload)


def operation_signal(*, operation: Operation | int, name: str, actor: Actor | str | Any,
                     payload: Any = None) -> Operation:
    """Send the signal ``name`` to a waiting operation: it goes on only if it waits for that
    name (refused otherwise, naming what it waits for), with ``payload`` carried on."""
    return _wake_verb(operation, "signal", actor, payload=payload, signal=name)


def operation_reject(*, operation: Operation | int, actor: Actor | str | Any) -> Operation:
    """End a waiting operation: cancelled, with the kind's compensation."""
    return _apply_verb(operation, "reject", actor)


def _wake_verb(operation, name, actor, *, payload, signal=None):
    actor = Actor.coerce(actor)
    operation_id = getattr(operation, "pk", operation)
    for _ in range(10):
        row = Operation.objects.filter(pk=operation_id).values_list("status", "waiting_for").first()
        if row is None:
            raise OperationNotFound(f"operation {operation_id} does not exist")
        status, waiting_for = row
        if status != Status.WAITING:
            raise TransitionRefused(refusal_message(operation_id, status, name), operation_id=operation_id, status=status)
        if signal is not None and (signal != waiting_for or signal == SLEEP):
            raise TransitionRefused(f"operation {operation_id} waits for {waiting_for!r}, not {signal!r}",
                                    operation_id=operation_id, status=status)
        if _wake(operation_id, name, actor, payload=payload, waiting_for=waiting_for) is not None:
            return Operation.objects.get(pk=operation_id)
    raise TransitionRefused(f"operation {operation_id} kept changing state; try again", operation_id=operation_id)


def _wake(operation_id, name, actor, *, payload, waiting_for, note=""):
    """waiting → running past the wait step, with a new run token and the payload carried on
    (None: the value carried into the wait); the next step is dispatched on commit."""
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidParams({"payload": [f"must be JSON: {exc}"]}) from None
    plan, kind_name, index, carry = (Operation.objects.filter(pk=operation_id)
                                     .values_list("workflow", "kind", "step_index", "carry").get())
    carry = carry if payload is None else payload
    following = index + 1
    kind = _kind_or_none(kind_name)
    counts_steps = kind is None or kind.progress == "steps"
    assignments = {"run_token": bus.Raw(f"{bus.column('run_token')} + 1"), "fence": bus.Raw(f"{bus.column('fence')} + 1"),
                   "step_index": following, "carry": carry, "checkpoint": None, "waiting_for": "",
                   "heartbeat_at": timezone.now()}
    if counts_steps:
        assignments["progress_done"] = following
    with transaction.atomic():
        row = _transition(operation_id, name, actor, record_event=False, assignments=assignments,
                          conditions=[(f"{bus.column('waiting_for')} = %s", [waiting_for])],
                          returning=("previous_status", "run_token"))
        if row is None:
            return None
        StepBoundary.objects.update_or_create(operation_id=operation_id, step_index=following,
                                              defaults={"carry": carry})
        said = note or f"{VERB_PAST.get(name, name)}: the wait for {waiting_for!r} ended"
        given = "" if payload is None else f"; carried on: {json.dumps(payload)[:200]}"
        _event(operation_id, actor, Status.WAITING, Status.RUNNING, said + given)
        dispatch_on_commit(operation_id, row[1], following, plan["steps"])
        return row


def _kind_or_none(kind_name):
    try:
        return get_kind(kind_name)
    except UnknownKind:
        return None


#: The user verbs by name: the one table every face dispatches through (pages, API, admin, CLI).
USER_VERBS: dict[str, Callable[..., Operation]] = {
    "pause": operation_pause, "resume": operation_resume, "cancel": operation_cancel, "retry": operation_retry,
    "terminate": operation_terminate, "approve": operation_approve, "reject": operation_reject,
}


def operation_apply(verb: str, *, operation: Operation | int, actor: Actor | str | Any) -> Operation:
    """The user verb ``verb`` (pause, resume, cancel, retry) on one operation."""
    try:
        service = USER_VERBS[verb]
    except KeyError:
        raise ValueError(f"unknown verb {verb!r}; expected one of {', '.join(USER_VERBS)}") from None
    return service(operation=operation, actor=actor)


@dataclass
class BulkOutcome:
    changed: list
    refused: list


def operations_apply(verb: str, operations: Iterable[Operation | int], *, actor: Actor | str | Any) -> BulkOutcome:
    """Apply a user verb to each operation (an admin action on a selection); collect refusals."""
    outcome = BulkOutcome([], [])
    for operation in operations:
        try:
            outcome.changed.append(operation_apply(verb, operation=operation, actor=actor))
        except OperationError as exc:
            outcome.refused.append(str(exc))
    return outcome


def operations_fork(operations: Iterable[Operation | int], *, actor: Actor | str | Any) -> BulkOutcome:
    """Fork each operation from where it stopped (the last step it reached: the failed step of a
    failed one, the last step of a completed one) — the admin's action on a selection."""
    from .selectors import fork_steps

    outcome = BulkOutcome([], [])
    for operation in operations:
        original = operation if isinstance(operation, Operation) else Operation.objects.filter(pk=operation).first()
        if original is None:
            outcome.refused.append(f"operation {operation} does not exist")
            continue
        try:
            where = (fork_steps(original) or [1])[-1]
            outcome.changed.append(operation_fork(operation=original, from_step=where, actor=actor))
        except OperationError as exc:
            outcome.refused.append(str(exc))
    return outcome


def _apply_verb(operation, verb, actor, **options):
    actor = Actor.coerce(actor)
    operation_id = getattr(operation, "pk", operation)
    for _ in range(10):
        status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
        if status is None:
            raise OperationNotFound(f"operation {operation_id} does not exist")
        transition = next((t for t in transitions_for_verb(verb) if status in t.sources), None)
        if transition is None:
            raise TransitionRefused(refusal_message(operation_id, status, verb),
                                    operation_id=operation_id, status=status)
        if _VERB_HANDLERS[transition.name](operation_id, actor, **options) is not None:
            return Operation.objects.get(pk=operation_id)
        # The status moved between the read and the conditional UPDATE: decide again.
    raise TransitionRefused(f"operation {operation_id} kept changing state; try again",
                            operation_id=operation_id)


def _simple(name, note=""):
    def handler(operation_id, actor, *, assignments=None, note_more=""):
        with transaction.atomic():
            return _transition(operation_id, name, actor, note=note + note_more, assignments=assignments)
    return handler


def _redispatch(name):
    """resume / retry by a person: check the stored plan, take a new run token, dispatch the head
    step. A person's resume also clears the poison and automatic-resume counts."""

    def handler(operation_id, actor):
        return _dispatch_run(operation_id, name, actor, assignments={"deaths": 0, "auto_resumes": 0},
                             fresh_deadline=True)

    return handler


def _dispatch_run(operation_id, name, actor, *, assignments, conditions=(), note="", fresh_deadline=False):
    verb = TRANSITIONS[name].verb
    plan, kind_name, owner_id, deadline_at, deadline_seconds = (
        Operation.objects.filter(pk=operation_id)
        .values_list("workflow", "kind", "owner_id", "deadline_at", "deadline_seconds").get())
    now = timezone.now()
    if fresh_deadline and deadline_seconds and deadline_at and deadline_at <= now:
        # A person runs it again after its deadline ended it: as long again, from now.
        deadline_at = now + timedelta(seconds=deadline_seconds)
        assignments = {**assignments, "deadline_at": deadline_at}
        note += f"new deadline {_when(deadline_at)}; "
    try:
        validate_plan(plan)
        kind = get_kind(kind_name)
    except (WorkflowError, UnknownKind) as exc:
        _refuse(operation_id, actor, verb, str(exc), record=True)
    with transaction.atomic():
        row = _transition(
            operation_id, name, actor,
            assignments={"run_token": bus.Raw(f"{bus.column('run_token')} + 1"),
                         "heartbeat_at": timezone.now(), "error": "", "finished_at": None, **assignments},
            returning=("previous_status", "run_token", "step_index"),
            record_event=False, conditions=conditions,
        )
        if row is None:
            return None
        previous, token, index = row
        if previous in RELEASES_SLOT:
            _acquire_slot(operation_id, kind, owner_id)
        _event(operation_id, actor, previous, Status.RUNNING,
               f"{note}run {token} dispatched: {index} of {len(plan['steps'])} step(s) done")
        dispatch_on_commit(operation_id, token, index, plan["steps"])
        return row


def _withdraw_pause(operation_id, actor):
    """The run goes on. Group members that a worker held back while the pause was pending have
    no message any more: they get a new one (a duplicate of a live one cannot start twice)."""
    with transaction.atomic():
        row = _transition(operation_id, "withdraw_pause", actor, returning=("previous_status", "run_token", "step_index"),
                          note="pause withdrawn before it landed; the run continues")
        if row is None:
            return None
        _, token, index = row
        steps = Operation.objects.filter(pk=operation_id).values_list("workflow", flat=True).get()["steps"]
        if index < len(steps) and "group" in steps[index]:
            held = StepMember.objects.filter(operation_id=operation_id, step_index=index,
                                             state=StepMember.State.PENDING)
            for member_index, task_id in held.values_list("member_index", "task_id"):
                _dispatch_member_on_commit(operation_id, token, index, member_index, task_id,
                                           steps[index]["group"][member_index])
        return row


_VERB_HANDLERS = {
    "pause": _simple("pause", "the worker pauses at the next pause point"),
    "withdraw_pause": lambda operation_id, actor: _withdraw_pause(operation_id, actor),
    "resume": _redispatch("resume"),
    "retry": _redispatch("retry"),
    "request_cancel": _simple("request_cancel", "the worker cancels at the next pause point"),
    "cancel_now": lambda operation_id, actor: _cancel(operation_id, "cancel_now", actor),
    "terminate": lambda operation_id, actor: _terminate(operation_id, actor),
    "reject": lambda operation_id, actor: _cancel(operation_id, "reject", actor, note="rejected; "),
    "pause_wait": _simple("pause_wait", "paused while waiting; a resume waits again"),
}


# --- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    status: str
    step_index: int
    fence: int
    carry: object
    checkpoint: object
    #: Workers lost while running the head step at this fence (the poison count).
    deaths: int = 0
    #: The token of the last overlapped advance (``publish_overlapped``).
    hop: int = 0


def step_claim(operation_id, run_token):
    """Before a step: read status, position, cursor and poison count in one round trip.

    None if the message is stale (another run token, or the operation is not active). A read,
    not a write: the advance that sent this message wrote the heartbeat a moment ago, so only a
    message that waited longer than a heartbeat interval in the queue refreshes it (a second
    round trip, before the step, so beat never takes a step that just began for a silent one),
    and so does the first message of a run, to record that a worker took it (``claimed_run``).
    An UPDATE here cost each step through the broker a WAL record and a commit (~0.1 ms).
    """
    stale_before = timezone.now() - timedelta(seconds=heartbeat_interval())
    heartbeat = bus.column("heartbeat_at")
    row = bus.select(
        operation_id, ("status", "step_index", "fence", "carry", "checkpoint", "deaths", "death_fence", "hop",
                       f"CASE WHEN {heartbeat} IS NULL OR {heartbeat} < %s OR NOT ({_taken()}) THEN 1 ELSE 0 END"),
        [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token])],
        column_params=[bus.db_datetime(stale_before)],
    )
    if row is None:
        return None
    status, index, fence, carry, checkpoint, deaths, death_fence, hop, silent = row
    if silent and not operation_heartbeat(operation_id, run_token):
        return None  # ended or taken over since the read
    # Workers lost at this very fence: at another one, the operation got further since.
    deaths_here = deaths if death_fence == fence else 0
    return Claim(status, index, fence, bus.load_json(carry), bus.load_json(checkpoint), deaths_here, hop)


def _taken():
    """SQL: a worker took a message of the current run (``step_claim`` records it)."""
    return f"{bus.column('claimed_run')} IS NOT NULL AND {bus.column('claimed_run')} = {bus.column('run_token')}"


def _death_counted():
    """SET clauses that count one more worker lost at the current fence (1 if it got further).

    Only if a worker took the run's message: a run nobody took (no worker consuming its queue
    yet, the message lost in the broker) lost no worker, and must not bring the poison limit
    nearer."""
    fence, death_fence = bus.column("fence"), bus.column("death_fence")
    return {"deaths": bus.Raw(f"CASE WHEN {death_fence} = {fence} THEN {bus.column('deaths')} ELSE 0 END"
                              f" + CASE WHEN {_taken()} THEN 1 ELSE 0 END"),
            "death_fence": bus.Raw(fence)}


def step_worker_lost(operation_id, run_token, index):
    """A worker's main process saw the pool process running the message of step ``index`` die
    (killed, out of memory): one more death towards the poison limit; the broker gives the
    message back. The head may be past ``index``: a sticky slice started there and died further on."""
    return bus.update(operation_id, _death_counted(),
                      [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token]),
                       (f"{bus.column('step_index')} >= %s", [index])], returning=("deaths",)) is not None


def _guarded(run_token, fence):
    return [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token]),
            (f"{bus.column('fence')} = %s", [fence])]


def step_advance(operation_id, run_token, fence, index, carry, *, count_step, hop=None, during=None):
    """After a step: move the head past it with its result, in the step's transaction (and keep
    the result as the value carried into the next step, for a fork from there).

    Raises Fenced (rolling the step's own writes back) if another run moved the row on.
    Returns the row's status, so a pending pause or cancel is seen without another query.
    With ``during``, the advance sets ``hop`` and ``during()`` runs while the server runs it
    (where ``bus.can_overlap()``): the next step's message goes out meanwhile.
    """
    now = timezone.now()
    values = {"step_index": index + 1, "fence": bus.Raw(f"{bus.column('fence')} + 1"),
              "carry": carry, "checkpoint": None, "heartbeat_at": now, "updated_at": now}
    if count_step:
        values["progress_done"] = index + 1
    if during is not None:
        values["hop"] = hop
    status = bus.advance(operation_id, values, _guarded(run_token, fence), durable=conf.DURABLE_STEP_COMMITS,
                         during=during)
    if status is None:
        raise Fenced(f"operation {operation_id}: step {index} lost its fence (run {run_token})")
    return status


def step_checkpoint(operation_id, run_token, fence, state, *, done=None, total=None):
    """Inside a long step: commit the cursor (with the chunk's writes) and report the status."""
    now = timezone.now()
    values = {"fence": bus.Raw(f"{bus.column('fence')} + 1"), "checkpoint": state,
              "heartbeat_at": now, "updated_at": now}
    if done is not None:
        values["progress_done"] = done
    if total is not None:
        values["progress_total"] = total
    row = bus.update(operation_id, values, _guarded(run_token, fence), returning=("status",))
    if row is None:
        raise Fenced(f"operation {operation_id}: checkpoint lost its fence (run {run_token})")
    return row[0]


def step_still_owns(operation_id, run_token, fence=None):
    """Whether this run (and write sequence) still owns the operation: a failure of a run that
    does not is a stale duplicate's, to be discarded rather than reported."""
    row = Operation.objects.filter(pk=operation_id).values_list("status", "run_token", "fence").first()
    return bool(row) and row[0] in ACTIVE and row[1] == run_token and (fence is None or row[2] == fence)


def operation_heartbeat(operation_id, run_token):
    """A sign of life from a worker running ``run_token``, which it has thereby taken."""
    return bus.update(
        operation_id, {"heartbeat_at": timezone.now(), "claimed_run": bus.Raw(bus.column("run_token"))},
        [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token])],
        returning=("id",), durable=False,
    ) is not None


def operation_at_pause_point(operation_id, run_token, status, *, index, length, result=None, where=None):
    """At a pause point: obey a pending pause or cancel, or complete after the last step.

    Returns True when the chain stops here (paused, cancelled, completed, or no longer this
    run's), False when it goes on. ``status`` was read before: if a user moved the row since
    (withdrew the pause, cancelled on top of it, paused before the completion), the transition
    changes nothing, and the row is read and decided again — a chain must never stop silently.
    """
    while True:
        stopped = _stop_at_pause_point(operation_id, run_token, status, index=index, length=length,
                                       result=result, where=where)
        if stopped is not None:
            return stopped
        status = (Operation.objects.filter(pk=operation_id, run_token=run_token, status__in=ACTIVE)
                  .values_list("status", flat=True).first())
        if status is None:
            return True


def _stop_at_pause_point(operation_id, run_token, status, *, index, length, result, where):
    """One attempt: True if stopped here, False if the chain goes on, None if the row moved."""
    if status == Status.PAUSE_REQUESTED:
        if where is None:
            where = ("after the last step; resume completes it" if index >= length
                     else f"after {index} of {length} step(s)")
        with transaction.atomic():
            row = _transition(operation_id, "obey_pause", WORKER, token=run_token, note=f"paused {where}")
    elif status == Status.CANCEL_REQUESTED:
        row = _cancel(operation_id, "obey_cancel", WORKER, token=run_token)
    elif index >= length:
        with transaction.atomic():
            row = _transition(
                operation_id, "complete", WORKER, token=run_token,
                assignments={"result": result,
                             "progress_done": bus.Raw(f"COALESCE({bus.column('progress_total')}, {bus.column('progress_done')})")},
                note=f"completed {length} step(s)",
            )
    else:
        return False
    return None if row is None else True


def operation_wait(operation_id, run_token, fence, index, *, name, timeout, state=None):
    """The worker at a wait step: running → waiting, holding no worker; beat ends the wait after
    ``timeout`` seconds, if given, as the step says. Returns the status now: waiting; the pause or
    cancel that was asked first (the caller obeys it); None if this run no longer owns it."""
    until = timezone.now() + timedelta(seconds=timeout) if timeout else None
    limit = f", at most {timeout:g} s" if timeout else ""
    said = f"asleep until {_when(until)}" if name == SLEEP else f"waiting for {name!r}{limit}"
    with transaction.atomic():
        row = _transition(operation_id, "wait", WORKER, token=run_token, note=said,
                          assignments={"waiting_for": name, "resume_at": until, "step_index": index,
                                       "checkpoint": state},
                          conditions=[(f"{bus.column('fence')} = %s", [fence])])
    if row is not None:
        return Status.WAITING
    return (Operation.objects.filter(pk=operation_id, run_token=run_token, status__in=ACTIVE)
            .values_list("status", flat=True).first())


def operations_expire_waits(*, now=None):
    """Beat: end the waits whose timeout passed, as each wait step says (``on_timeout``): fail
    (a retry waits again), continue with the value carried into the wait, or cancel. Conditional
    on the wait still being due, so a person's approve in between wins. Returns the ids."""
    now = now or timezone.now()
    ended = []
    for operation_id, plan, index, waiting_for in (
            Operation.objects.filter(status=Status.WAITING, resume_at__lte=now)
            .values_list("id", "workflow", "step_index", "waiting_for")):
        entry = plan["steps"][index] if index < len(plan["steps"]) else {}
        outcome = "continue" if waiting_for == SLEEP else entry.get("kwargs", {}).get("on_timeout", "fail")
        what = f"the wait for {waiting_for!r} timed out"
        if waiting_for == SLEEP:
            row = _wake(operation_id, "wait_timeout", BEAT, payload=None, waiting_for=waiting_for,
                        note="woke up: the sleep ended")
        elif outcome == "continue":
            row = _wake(operation_id, "wait_timeout", BEAT, payload=None, waiting_for=waiting_for,
                        note=f"{what}: it goes on with the value carried into the wait")
        elif outcome == "cancel":
            row = _cancel(operation_id, "cancel_now", BEAT, note=f"{what}; ")
        else:
            with transaction.atomic():
                row = _transition(operation_id, "wait_expired", BEAT, note=what, assignments={
                    "error": f"step {index + 1} of {len(plan['steps'])}: {what}", "waiting_for": ""})
        if row is not None:
            ended.append(operation_id)
    return ended


def step_time_limit_started(operation_id, run_token, fence, index, limit):
    """Before a step with a time limit: the time by which beat stops it (``operations_end_late``).
    False if this run no longer owns the operation."""
    return bus.update(
        operation_id, {"step_deadline_at": timezone.now() + timedelta(seconds=limit), "step_deadline_index": index},
        [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token]),
         (f"{bus.column('fence')} = %s", [fence])], ("id",), durable=False,
    ) is not None


def operation_fail(operation_id, run_token, error):
    """A step failed after its retries: ``failed``, the step stays at the head (or cancel, if asked)."""
    with transaction.atomic():
        if _transition(operation_id, "fail", WORKER, token=run_token, note=error,
                       assignments={"error": error}) is not None:
            return True
    return _cancel(operation_id, "obey_cancel", WORKER, token=run_token) is not None


def operation_poisoned(operation_id, run_token, *, index, deaths, limit):
    """The head step lost as many workers as the poison limit allows: fail, saying why."""
    return operation_fail(operation_id, run_token, _poison_error(index, deaths, limit))


def operation_note(operation_id, note, actor=WORKER):
    """An event that changes nothing (a retried step, a refused request): history only."""
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    _event(operation_id, actor, status, status, note)


# --- the step cache ---------------------------------------------------------------------------


def cache_get(spec, args, kwargs):
    """(True, result) if a cached step has run with these arguments before, else (False, None)."""
    if not spec.cache:
        return False, None
    row = StepCache.objects.filter(key=cache_key(spec, args, kwargs)).values_list("result").first()
    return (False, None) if row is None else (True, row[0])


def cache_put(spec, args, kwargs, result):
    if spec.cache:
        StepCache.objects.bulk_create(
            [StepCache(key=cache_key(spec, args, kwargs), task=spec.name,
                       arguments={"args": args, "kwargs": kwargs}, result=result)],
            ignore_conflicts=True,
        )


# --- group steps ------------------------------------------------------------------------------


def group_fan_out(operation_id, run_token, index, members, *, count_members):
    """Create (or reset) the members of group step ``index`` and dispatch those not done.

    Members whose result is cached are done at once, without a message. Members an earlier run
    left started are pending again (that run's writes are fenced off by its token). Returns True
    when every member is already done.
    """
    from .workflow import STEPS

    with transaction.atomic():
        carry = bus.load_json(Operation.objects.filter(pk=operation_id).values_list("carry", flat=True).get())
        known = set(StepMember.objects.filter(operation_id=operation_id, step_index=index)
                    .values_list("member_index", flat=True))
        StepMember.objects.bulk_create([
            StepMember(operation_id=operation_id, step_index=index, member_index=i,
                       task_id=member_task_id(operation_id, index, i))
            for i in range(len(members)) if i not in known
        ])
        not_done = StepMember.objects.filter(operation_id=operation_id, step_index=index).exclude(
            state=StepMember.State.SUCCESS)
        not_done.update(state=StepMember.State.PENDING, error="")
        now = timezone.now()
        to_dispatch = []
        for member_index, task_id in not_done.values_list("member_index", "task_id"):
            entry = members[member_index]
            spec = STEPS.get(entry["task"])
            args, kwargs = step_arguments(index, entry, carry)
            hit, result = cache_get(spec, args, kwargs) if spec else (False, None)
            if hit:
                StepMember.objects.filter(operation_id=operation_id, step_index=index, member_index=member_index
                                          ).update(state=StepMember.State.SUCCESS, result=result, cached=True,
                                                   finished_at=now)
            else:
                to_dispatch.append((member_index, task_id, entry))
        done = len(members) - len(to_dispatch)
        values = {"heartbeat_at": now, "updated_at": now}
        if count_members:
            values.update(progress_done=done, progress_total=len(members))
        if bus.update(operation_id, values, [bus.in_statuses(ACTIVE),
                                             (f"{bus.column('run_token')} = %s", [run_token])]) is None:
            raise Fenced(f"operation {operation_id}: group step {index} lost its run {run_token}")
        for member_index, task_id, entry in to_dispatch:
            _dispatch_member_on_commit(operation_id, run_token, index, member_index, task_id, entry)
    return not to_dispatch


def _dispatch_member_on_commit(operation_id, run_token, index, member_index, task_id, entry):
    def publish():
        current_app.send_task(RUN_MEMBER_TASK, args=[operation_id, run_token, index, member_index],
                              task_id=str(task_id), **step_route(entry))

    transaction.on_commit(publish, robust=True)


def _member(operation_id, index, member_index):
    return StepMember.objects.filter(operation_id=operation_id, step_index=index, member_index=member_index)


def member_start(operation_id, run_token, index, member_index):
    """PENDING → STARTED, only while the operation runs on this token; False for a duplicate."""
    return _member(operation_id, index, member_index).filter(
        state=StepMember.State.PENDING, operation__run_token=run_token, operation__status=Status.RUNNING,
    ).update(state=StepMember.State.STARTED) == 1


def member_stop(operation_id, run_token, index, member_index, entry):
    """A member stopped at a checkpoint: STARTED → PENDING, unfinished; returns the operation's
    status, or None if this run no longer owns it.

    The member's row and then the operation's, in one transaction: the operation's row lock orders
    this against a withdrawn pause, so if the pause was withdrawn meanwhile the member is sent
    again here (the withdrawal only sends members that were pending)."""
    with transaction.atomic():
        if not _member(operation_id, index, member_index).filter(state=StepMember.State.STARTED).update(
                state=StepMember.State.PENDING):
            return None
        row = bus.update(operation_id, {"heartbeat_at": timezone.now()},
                         [bus.in_statuses(ACTIVE), (f"{bus.column('run_token')} = %s", [run_token])],
                         returning=("status",))
        if row is None:
            return None
        if row[0] == Status.RUNNING:
            task_id = _member(operation_id, index, member_index).values_list("task_id", flat=True).get()
            _dispatch_member_on_commit(operation_id, run_token, index, member_index, task_id, entry)
        return row[0]


def member_reset(operation_id, index, member_index):
    """STARTED → PENDING before a retry of the member."""
    _member(operation_id, index, member_index).filter(state=StepMember.State.STARTED).update(
        state=StepMember.State.PENDING)


def member_finish(operation_id, run_token, index, member_index, result, *, spec, args, kwargs, cached,
                  count_members):
    """Record a member's result and count it on the operation row, in one transaction."""
    now = timezone.now()
    with transaction.atomic():
        if not _member(operation_id, index, member_index).filter(state=StepMember.State.STARTED).update(
                state=StepMember.State.SUCCESS, result=result, cached=cached, finished_at=now):
            raise Fenced(f"operation {operation_id}: member {member_index} of step {index} is no longer started")
        values = {"heartbeat_at": now, "updated_at": now}
        if count_members:
            values["progress_done"] = bus.Raw(f"{bus.column('progress_done')} + 1")
        row = bus.update(operation_id, values, [bus.in_statuses(ACTIVE),
                                                (f"{bus.column('run_token')} = %s", [run_token])],
                         returning=("status",))
        if row is None:
            raise Fenced(f"operation {operation_id}: member {member_index} of step {index} lost its run {run_token}")
        if not cached:
            cache_put(spec, args, kwargs, result)
        return row[0]


def group_progress(operation_id, index):
    """(members not done, members started) of group step ``index``."""
    members = StepMember.objects.filter(operation_id=operation_id, step_index=index)
    remaining = members.exclude(state=StepMember.State.SUCCESS).count()
    started = members.filter(state=StepMember.State.STARTED).count() if remaining else 0
    return remaining, started


def group_results(operation_id, index):
    return list(StepMember.objects.filter(operation_id=operation_id, step_index=index)
                .order_by("member_index").values_list("result", flat=True))


# --- beat -------------------------------------------------------------------------------------


def _recovery_of(kind_name):
    try:
        return get_kind(kind_name).recovery_policy()
    except UnknownKind:
        return Recovery(auto_resume=False).resolved()


def operations_reconcile(*, lease=None):
    """Mark active operations whose heartbeat is older than the lease ``interrupted``, and plan
    what comes next by their kind's recovery policy: an automatic resume after a backoff, or — for
    a step that lost as many workers as the poison limit without getting further — ``failed``.

    One UPDATE marks them all. Returns the ids marked.
    """
    lease = conf.HEARTBEAT_LEASE if lease is None else lease
    now = timezone.now()
    cutoff = now - timedelta(seconds=lease)
    heartbeat = Operation._meta.get_field("heartbeat_at").get_db_prep_save(cutoff, connection=bus.connection)
    fence, recovered = bus.column("fence"), bus.column("recovered_fence")
    with transaction.atomic():
        rows = bus.update(
            None,
            {"status": Status.INTERRUPTED, "previous_status": bus.Raw(bus.column("status")), "updated_at": now,
             # it got further since the last automatic resume: count those afresh
             "auto_resumes": bus.Raw(f"CASE WHEN {recovered} = {fence} THEN {bus.column('auto_resumes')} ELSE 0 END"),
             # a worker gone silent mid-step is a worker lost there
             **_death_counted()},
            [bus.in_statuses(ACTIVE),
             (f"({bus.column('heartbeat_at')} IS NULL OR {bus.column('heartbeat_at')} < %s)", [heartbeat])],
            returning=("id", "previous_status", "kind", "auto_resumes", "deaths", "step_index", "claimed_run",
                       "run_token"), many=True,
        )
        ids = [row[0] for row in rows]
        ConcurrencySlot.objects.filter(operation_id__in=ids).delete()
        events = []
        for op_id, previous, kind_name, resumes, deaths, index, claimed, token in rows:
            note = (f"no heartbeat for {lease}s: the worker is gone" if claimed == token else
                    f"no heartbeat for {lease}s and no worker took its message: is a worker consuming its queue?")
            policy = _recovery_of(kind_name)
            if deaths >= policy.poison_limit:  # resuming would only lose one more worker
                _event(op_id, BEAT, previous, Status.INTERRUPTED, note)
                error = _poison_error(index, deaths, policy.poison_limit)
                _transition(op_id, "poison", BEAT, note=error, assignments={"error": error})
                continue
            if policy.auto_resume and resumes < policy.attempts:
                at = now + timedelta(seconds=policy.delay(resumes + 1))
                bus.update(op_id, {"resume_at": at}, [bus.in_statuses({Status.INTERRUPTED})])
                note += (f"; beat cancels it at {at:%H:%M:%S}, as asked" if previous == Status.CANCEL_REQUESTED else
                         f"; beat resumes it at {at:%H:%M:%S} (automatic resume {resumes + 1} of {policy.attempts})")
            elif policy.auto_resume:
                note += f"; {resumes} automatic resume(s) in a row did not get it further: resume it by hand"
            events.append(_event_row(op_id, BEAT, previous, Status.INTERRUPTED, note))
        OperationEvent.objects.bulk_create(events)
    return ids


def _poison_error(index, deaths, limit):
    return (f"step {index + 1} lost its worker {deaths} time(s) without getting any further (killed, out of "
            f"memory?): it is not started again (poison limit {limit}, TAP_POISON_LIMIT)")


def _event_row(operation_id, actor, from_status, to_status, note):
    return OperationEvent(operation_id=operation_id, actor=actor.name, actor_user=actor.user, via=actor.via,
                          from_status=from_status or "", to_status=to_status or "", note=note)


def operations_recover(*, now=None):
    """Beat: resume the interrupted operations whose automatic resume is due; returns their ids.

    What someone asked before the interruption still holds: an operation interrupted while a
    cancel was pending is cancelled (with its compensation) instead, and one interrupted while a
    pause was pending is resumed with the pause asked again, so it stops at its next pause point.

    The resume is conditional on ``resume_at`` still being due, so a person's resume or cancel in
    between wins, and two beats cannot both resume one operation.
    """
    now = now or timezone.now()
    due = bus.column("resume_at")
    when = Operation._meta.get_field("resume_at").get_db_prep_save(now, connection=bus.connection)
    resumed = []
    for op_id, resumes, kind_name, before in (Operation.objects.filter(status=Status.INTERRUPTED, resume_at__lte=now)
                                              .values_list("id", "auto_resumes", "kind", "previous_status")):
        policy = _recovery_of(kind_name)
        if before == Status.CANCEL_REQUESTED:  # someone asked for the cancel before the interruption
            if _cancel(op_id, "cancel_now", BEAT) is not None:
                resumed.append(op_id)
            continue
        try:
            row = _dispatch_run(
                op_id, "resume", BEAT,
                assignments={"auto_resumes": bus.Raw(f"{bus.column('auto_resumes')} + 1"),
                             "recovered_fence": bus.Raw(bus.column("fence"))},
                conditions=[(f"{due} IS NOT NULL AND {due} <= %s", [when])],
                note=f"automatic resume {resumes + 1} of {policy.attempts}: ",
            )
        except OperationError as exc:
            log.warning("beat could not resume operation %s: %s", op_id, exc)
            bus.update(op_id, {"resume_at": None}, [bus.in_statuses({Status.INTERRUPTED})])
            continue
        if row is not None:
            resumed.append(op_id)
            if before == Status.PAUSE_REQUESTED:  # asked before the interruption: still asked
                with transaction.atomic():
                    _transition(op_id, "pause", BEAT, note="the pause asked before the interruption still holds")
    return resumed


def operations_resume_planned(*, now=None):
    """Beat: resume the paused operations whose planned resume (``operation_pause(resume_at=…)``,
    ``operation_resume(at=…)``) is due. Conditional on it still being due, so a person's resume
    or cancel in between wins. Returns the ids."""
    now = now or timezone.now()
    due = bus.column("resume_at")
    when = Operation._meta.get_field("resume_at").get_db_prep_save(now, connection=bus.connection)
    resumed = []
    for op_id in (Operation.objects.filter(status=Status.PAUSED, resume_at__lte=now).values_list("id", flat=True)):
        try:
            row = _dispatch_run(op_id, "resume", BEAT, assignments={"deaths": 0, "auto_resumes": 0},
                                conditions=[(f"{due} IS NOT NULL AND {due} <= %s", [when])],
                                note="resumed at the time planned: ")
        except OperationError as exc:
            log.warning("beat could not resume operation %s as planned: %s", op_id, exc)
            bus.update(op_id, {"resume_at": None}, [bus.in_statuses({Status.PAUSED})])
            continue
        if row is not None:
            resumed.append(op_id)
    return resumed


def operations_keep_windows(*, now=None):
    """Beat: pause the running operations whose pause window (their own, else their kind's) is
    open, with a planned resume when it closes. Returns the ids."""
    from .catalogue import all_kinds
    from .windows import window_closes

    now = now or timezone.now()
    windowed = {kind.name: kind.pause_window for kind in all_kinds() if kind.pause_window}
    paused = []
    for op_id, kind_name, own in (Operation.objects.filter(status=Status.RUNNING)
                                  .filter(~Q(pause_window="") | Q(kind__in=list(windowed)))
                                  .values_list("id", "kind", "pause_window")):
        window = own or windowed.get(kind_name, "")
        closes = window_closes(window, now) if window else None
        if closes is None:
            continue
        with transaction.atomic():
            if _transition(op_id, "pause", BEAT, assignments={"resume_at": closes},
                           note=f"pause window {window}: it pauses at its next pause point; beat resumes it at "
                                f"{_when(closes)}") is not None:
                paused.append(op_id)
    return paused


def operations_end_late(*, now=None):
    """Beat: end the operations past their deadline, and the active ones whose step ran past its
    time limit, as their kind says (``Kind.on_deadline``: failed, or cancelled with
    compensation), the deadline named in the error and the history. An active one's step is
    stopped first, as a terminate stops it. Returns the ids."""
    now = now or timezone.now()
    ended = []
    stamp = partial(_db_time, now)
    for op_id, kind_name, token, status, at, seconds in (
            Operation.objects.filter(status__in=UNFINISHED, deadline_at__lte=now)
            .values_list("id", "kind", "run_token", "status", "deadline_at", "deadline_seconds")):
        why = f"deadline passed: it had to end by {_when(at)}" + (f" ({seconds:g} s after its start)" if seconds else "")
        column = bus.column("deadline_at")
        if _end_late(op_id, kind_name, token, status, why, [(f"{column} IS NOT NULL AND {column} <= %s", [stamp("deadline_at")])]):
            ended.append(op_id)
    for op_id, kind_name, token, status, index, workflow in (
            Operation.objects.filter(status__in=ACTIVE, step_deadline_at__lte=now, step_deadline_index=F("step_index"))
            .values_list("id", "kind", "run_token", "status", "step_index", "workflow")):
        steps = workflow.get("steps", [])
        entry = steps[index] if index < len(steps) else {}
        kind = _kind_or_none(kind_name)
        limit = entry.get("options", {}).get("time_limit") or (kind.step_time_limit if kind else None)
        why = (f"step {index + 1} of {len(steps)} ran past its time limit"
               + (f" of {limit:g} s" if limit else "") + ": it was stopped")
        column = bus.column("step_deadline_at")
        if _end_late(op_id, kind_name, token, status, why, [
                (f"{column} IS NOT NULL AND {column} <= %s", [stamp("step_deadline_at")]),
                (f"{bus.column('step_index')} = %s", [index])]):
            ended.append(op_id)
    return ended


def _db_time(now, field):
    return Operation._meta.get_field(field).get_db_prep_save(now, connection=bus.connection)


def _end_late(operation_id, kind_name, token, status, why, conditions):
    kind = _kind_or_none(kind_name)
    if status in ACTIVE:  # the step may never reach a pause point: stop its process first
        stopped = _stop_step_processes(operation_id, token)
        if stopped:
            why += f" (stopped {stopped} worker process(es) running its step)"
    if kind is not None and kind.on_deadline == "cancel":
        return _cancel(operation_id, "deadline_cancel", BEAT, note=f"{why}; ", conditions=conditions) is not None
    with transaction.atomic():
        return _transition(operation_id, "deadline_fail", BEAT, note=why, conditions=conditions,
                           assignments={"error": why, "waiting_for": ""}) is not None


# --- retention --------------------------------------------------------------------------------


@dataclass
class PurgeOutcome:
    """What a purge deleted (or, dry, would delete): operations by status, and their events."""

    operations: dict[str, int]
    events: int
    dry_run: bool

    @property
    def total(self) -> int:
        return sum(self.operations.values())


def retention_due_by_status(*, now: datetime | None = None) -> dict[str, Q]:
    """Which finished operations retention deletes now, per status: older than the kind's days or
    TAP_RETENTION's (by ``finished_at``). A status that nothing deletes is left out. Each one is
    bounded by its latest cut-off, so that it is a range of the ``op_status_finished`` index."""
    from .catalogue import RETAINED_STATUSES, all_kinds

    now = now or timezone.now()
    due = {}
    for status in RETAINED_STATUSES:
        own = {kind.name: kind.retention[status] for kind in all_kinds() if kind.retention and status in kind.retention}
        days = conf.RETENTION.get(status)
        cutoffs = {}  # kind name (None: every kind without its own days) → finished before
        if days is not None:
            cutoffs[None] = now - timedelta(days=days)
        cutoffs.update({name: now - timedelta(days=kind_days) for name, kind_days in own.items() if kind_days is not None})
        if not cutoffs:
            continue
        which = Q(pk__in=[])
        for name, before in cutoffs.items():
            which |= Q(finished_at__lt=before) & (~Q(kind__in=list(own)) if name is None else Q(kind=name))
        due[status] = Q(status=status, finished_at__lt=max(cutoffs.values())) & which
    return due


def retention_due(*, now: datetime | None = None) -> Q:
    """``retention_due_by_status`` as one condition."""
    return reduce(operator.or_, retention_due_by_status(now=now).values(), Q(pk__in=[]))


def operations_retain(*, now: datetime | None = None, batch: int | None = None) -> PurgeOutcome:
    """Beat: delete the finished operations retention says are due (``retention_due_by_status``)."""
    return _purge(retention_due_by_status(now=now), batch=batch, dry_run=False, actor=BEAT, why="retention")


def operations_purge(*, older_than: timedelta, statuses: Iterable[str] | None = None,
                     kinds: Iterable[str] | None = None, dry_run: bool = False,
                     actor: Actor | str | Any, batch: int | None = None) -> PurgeOutcome:
    """Delete the finished operations (completed, cancelled, failed; or ``statuses`` of those)
    that ended more than ``older_than`` ago — whatever the retention says — with their events,
    step data and stored rows, in batches. ``dry_run`` counts them and deletes nothing."""
    from .catalogue import RETAINED_STATUSES

    statuses = list(statuses or RETAINED_STATUSES)
    unfinished = sorted(set(statuses) - set(RETAINED_STATUSES))
    if unfinished:
        raise InvalidParams({"status": [f"only finished operations are purged ({', '.join(RETAINED_STATUSES)}), "
                                        f"not {', '.join(unfinished)}"]})
    if older_than < timedelta(0):
        raise InvalidParams({"older_than": ["give an age of 0 or more"]})
    before = timezone.now() - older_than
    due = {}
    for status in RETAINED_STATUSES:
        if status in statuses:
            due[status] = Q(status=status, finished_at__lt=before) & (Q(kind__in=list(kinds)) if kinds else Q())
    return _purge(due, batch=batch, dry_run=dry_run, actor=Actor.coerce(actor), why=f"purge by {Actor.coerce(actor).name}")


def _purge(due, *, batch, dry_run, actor, why):
    """Delete ``due`` ({status: which of that status}) in batches of ``batch``
    (TAP_RETENTION_BATCH) operations, one transaction each: memory stays flat (a batch's ids,
    never its rows), and a batch's locks are only on the operations it deletes and their own rows.

    Each status is walked oldest first along the ``op_status_finished`` index, every batch's ids
    from where the last one's ended (a keyset on ``(finished_at, id)``), so that a batch costs
    the same at the end of a large backlog as at its start: reading the first ``batch`` of what
    is left instead would sort the whole remaining backlog at every batch."""
    from .catalogue import RETAINED_STATUSES

    batch = batch or conf.RETENTION_BATCH
    deleted = dict.fromkeys(RETAINED_STATUSES, 0)
    events = 0
    if dry_run:
        for status, which in due.items():
            deleted[status] = Operation.objects.filter(which).count()
            events += OperationEvent.objects.filter(operation__in=Operation.objects.filter(which).values("id")).count()
        return PurgeOutcome(deleted, events, True)
    for status, which in due.items():
        finished = Operation.objects.filter(which)
        after = None  # (finished_at, id) of the last batch's last operation
        while True:
            page = finished if after is None else finished.filter(
                Q(finished_at__gt=after[0]) | Q(finished_at=after[0], pk__gt=after[1]), finished_at__gte=after[0])
            keys = list(page.order_by("finished_at", "id").values_list("finished_at", "id")[:batch])
            if not keys:
                break
            after = keys[-1]
            with transaction.atomic():
                # Locked and checked again: one that a person retried meanwhile is not due any more.
                locked = list(finished.select_for_update().filter(pk__in=[pk for _, pk in keys])
                              .order_by().values_list("id", flat=True))
                _, removed = Operation.objects.filter(pk__in=locked).only("id", "kind", "params", "status").delete()
            events += removed.get(OperationEvent._meta.label, 0)
            deleted[status] += len(locked)
            if len(keys) < batch:
                break
    if any(deleted.values()):
        log.info("%s deleted %s finished operation(s) (%s) with %s event(s)", why, sum(deleted.values()),
                 ", ".join(f"{n} {status}" for status, n in deleted.items() if n), events)
    return PurgeOutcome(deleted, events, False)
