"""Tappable workflows: ``@step``, and how a Celery chain becomes a stored plan (and back).

A developer marks Celery tasks as operation steps with :func:`step` (exported by ``operations``)
and hands a chain of their signatures to a kind (see :mod:`operations.catalogue`). The engine turns the chain into a *plan*:
signature-style dicts, written once to ``Operation.workflow``; only steps registered here can ever
be rebuilt from that JSON (the allowlist), and their arguments must fit their functions.

    @step(atomic=False)            # pure: writes nothing to the database
    def add(x, y):
        return x + y

    chain(add.s(4, 6), add.s(3))   # a pause point at every step boundary (pause_every=1)
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from celery import shared_task
from celery.canvas import Signature, _chain, chord, group
from django.utils.crypto import salted_hmac

from .exceptions import MemberStopped, WorkflowError

F = TypeVar("F", bound=Callable[..., Any])

PLAN_VERSION = 1
#: Signature options a plan keeps; anything else in a stored step is refused.
STEP_OPTIONS = frozenset({"queue", "priority", "max_retries", "retry_delay", "time_limit"})
STEP_KEYS = frozenset({"task", "args", "kwargs", "options", "immutable"})
#: Most members one group step may have.
MAX_GROUP_MEMBERS = 10_000


@dataclass(frozen=True)
class StepSpec:
    name: str
    func: Callable
    #: Run the step's body and the engine's advance in one transaction (steps that write rows).
    atomic: bool
    #: The function takes a :class:`operations.engine.StepContext` as its first argument.
    context: bool
    max_retries: int
    retry_delay: float
    #: A pure step whose result depends only on its arguments: computed once, then reused.
    cache: bool = False
    #: Keyword arguments that do not change the result (e.g. how long to take): not in the key.
    cache_exclude: tuple = ()


#: The allowlist: task name → step. Filled by :func:`step` at import time.
STEPS: dict[str, StepSpec] = {}


@overload
def step(func: F, /) -> F: ...
@overload
def step(*, name: str | None = None, atomic: bool = True, context: bool = False, max_retries: int = 0,
         retry_delay: float = 1.0, cache: bool = False, cache_exclude: tuple[str, ...] | list[str] = (),
         **task_options: Any) -> Callable[[F], F]: ...


def step(func=None, *, name=None, atomic=True, context=False, max_retries=0, retry_delay=1.0,
         cache=False, cache_exclude=(), **task_options):
    """Register ``func`` as an operation step; it stays a plain Celery task of the same name.

    ``atomic`` (default) runs the body in the same transaction as the engine's advance, so a
    step's own writes and its progress commit together or not at all; pure steps set it False.
    ``context=True`` passes a StepContext first, for in-step checkpoints of long loops.
    ``cache=True`` (pure steps) stores results by task and arguments; a later call with the same
    inputs — in any operation — returns the stored result without running the body.
    """

    def register(func):
        task_name = name or f"{func.__module__}.{func.__name__}"
        if task_name.startswith("celery."):
            raise WorkflowError(f"'{task_name}': the celery.* namespace is reserved for Celery")
        if cache and context:
            raise WorkflowError(f"'{task_name}': a cached step cannot take a context")
        STEPS[task_name] = StepSpec(task_name, func, atomic, context, max_retries, retry_delay, cache,
                                    tuple(cache_exclude))
        return shared_task(name=task_name, **task_options)(func)

    return register(func) if func is not None else register


def _signatures(workflow):
    if isinstance(workflow, _chain):
        return list(workflow.tasks)
    if isinstance(workflow, Signature):
        return [workflow]
    if isinstance(workflow, (list, tuple)):
        return list(workflow)
    raise WorkflowError(f"expected a Celery chain or a list of signatures, got {type(workflow).__name__}")


def _entry(index, sig):
    if not isinstance(sig, Signature) or isinstance(sig, (_chain, group, chord)) or sig.get("subtask_type"):
        raise WorkflowError(f"steps[{index}]: only task signatures and groups of them can be steps, not {sig!r}")
    entry = {"task": sig.task, "args": list(sig.args), "kwargs": dict(sig.kwargs)}
    options = {k: v for k, v in (sig.options or {}).items() if k in STEP_OPTIONS}
    if options:
        entry["options"] = options
    if sig.immutable:
        entry["immutable"] = True
    return entry


def build_plan(workflow, *, pause_every=1):
    """Turn a chain (or list of signatures and groups) into the plan stored in ``Operation.workflow``.

    A ``group`` becomes one step whose members run in parallel; its result is the list of theirs.
    (A chain turns a group followed by a task into a chord: header and body become two steps.)
    """
    if not isinstance(pause_every, int) or pause_every < 1:
        raise WorkflowError(f"pause_every must be a positive integer, got {pause_every!r}")
    steps = []
    for sig in _signatures(workflow):
        parts = [sig.tasks, sig.body] if isinstance(sig, chord) else [sig]
        for part in parts:
            index = len(steps)
            if isinstance(part, group) or isinstance(part, (list, tuple)):
                members = part.tasks if isinstance(part, group) else part
                steps.append({"group": [_entry(index, member) for member in members]})
            else:
                steps.append(_entry(index, part))
    plan = {"version": PLAN_VERSION, "pause_every": pause_every, "steps": steps}
    validate_plan(plan)
    return plan


def validate_plan(plan):
    """Check a plan rebuilt from JSON before anything is published; raise WorkflowError if unfit."""
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list):
        raise WorkflowError("the stored workflow has no list of steps")
    if plan.get("version") != PLAN_VERSION:
        raise WorkflowError(f"the stored workflow has version {plan.get('version')!r}, expected {PLAN_VERSION}")
    pause_every = plan.get("pause_every")
    if not isinstance(pause_every, int) or isinstance(pause_every, bool) or pause_every < 1:
        raise WorkflowError(f"the stored workflow's pause_every is {pause_every!r}, expected a positive integer")
    if not plan["steps"]:
        raise WorkflowError("the workflow has no steps")
    for index, entry in enumerate(plan["steps"]):
        if isinstance(entry, dict) and "group" in entry:
            members = entry["group"]
            if set(entry) != {"group"} or not isinstance(members, list) or not members:
                raise WorkflowError(f"steps[{index}]: a group step is {{\"group\": [signature dicts]}}")
            if len(members) > MAX_GROUP_MEMBERS:
                raise WorkflowError(f"steps[{index}]: {len(members)} members; at most {MAX_GROUP_MEMBERS}")
            for member_index, member in enumerate(members):
                validate_step(index, member, where=f"steps[{index}].group[{member_index}]")
        else:
            validate_step(index, entry)


@functools.lru_cache(maxsize=1024)
def _signature(func):
    """A step function's signature, read once (a 1000-step plan checks the same few functions)."""
    return inspect.signature(func)


def validate_step(index, entry, where=None):
    where = where or f"steps[{index}]"
    if not isinstance(entry, dict):
        raise WorkflowError(f"{where} is not a signature dict: {entry!r}")
    task = entry.get("task")
    if not isinstance(task, str):
        raise WorkflowError(f"{where} names no task")
    if task.startswith("celery."):
        raise WorkflowError(f"{where} names '{task}', a Celery built-in task, not an operation step")
    spec = STEPS.get(task)
    if spec is None:
        raise WorkflowError(f"{where} names '{task}', which is not a registered operation step")
    where = f"{where} ({task})"
    unknown_keys = set(entry) - STEP_KEYS
    if unknown_keys:
        raise WorkflowError(f"{where} has unsupported keys: {', '.join(sorted(unknown_keys))}")
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise WorkflowError(f"{where}: args must be a list and kwargs an object")
    options = entry.get("options", {})
    if not isinstance(options, dict) or set(options) - STEP_OPTIONS:
        raise WorkflowError(f"{where}: unsupported options {sorted(set(options) - STEP_OPTIONS)}")
    limit = options.get("time_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise WorkflowError(f"{where}: time_limit is a number of seconds above 0, not {limit!r}")
    try:
        json.dumps([args, kwargs])
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"{where}: arguments are not JSON: {exc}") from None
    prefix = [None] if spec.context else []
    if index > 0 and not entry.get("immutable"):
        prefix.append(None)  # the value carried from the previous step
    try:
        _signature(spec.func).bind(*prefix, *args, **kwargs)
    except TypeError as exc:
        raise WorkflowError(f"{where}: arguments do not fit the step: {exc}") from None
    return spec


def step_arguments(index, entry, carry):
    """The positional and keyword arguments of a step, with the carried value in front."""
    args = list(entry.get("args", []))
    if index > 0 and not entry.get("immutable"):
        args.insert(0, carry)
    return args, dict(entry.get("kwargs", {}))


def cache_key(spec, args, kwargs):
    """The step cache's key: the task and its inputs, canonically encoded."""
    kwargs = {k: v for k, v in kwargs.items() if k not in spec.cache_exclude}
    canonical = json.dumps([spec.name, args, kwargs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


MEMBER_SALT = "operations.workflow.member_task_id"


def member_task_id(operation_id, index, member_index):
    """The id of a group member, known as soon as the operation exists (clients poll /tasks/<id>).

    Keyed with the SECRET_KEY: from sequential operation ids nobody can work out another user's."""
    digest = salted_hmac(MEMBER_SALT, f"{operation_id}:{index}:{member_index}", algorithm="sha256").digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def is_pause_point(index, plan_pause_every, length):
    """Step boundaries where a pending pause or cancel is obeyed: every nth, and the end."""
    return index % plan_pause_every == 0 or index >= length


# --- checkpoints of group members ------------------------------------------------------------

#: A long group member reads its operation's row at most this often, however often it asks.
MEMBER_CHECK_SECONDS = 0.5


class _MemberWatch:
    """Whether the run a member belongs to still runs, read from the row at most every ``every`` s."""

    def __init__(self, still_running: Callable[[], bool], every: float):
        self._still_running = still_running
        self._every = every
        self._next = time.monotonic() + every  # the member's claim has just read the row
        self.stopped = False

    def should_stop(self) -> bool:
        if not self.stopped and time.monotonic() >= self._next:
            self.stopped = not self._still_running()
            self._next = time.monotonic() + self._every
        return self.stopped


_MEMBER_WATCH: ContextVar[_MemberWatch | None] = ContextVar("operations_member_watch", default=None)


@contextmanager
def watching_member(still_running: Callable[[], bool], *, every: float | None = None) -> Iterator[None]:
    """Set by the engine around a group member's body, so :func:`checkpoint` can answer cheaply."""
    watch = _MemberWatch(still_running, MEMBER_CHECK_SECONDS if every is None else every)
    token = _MEMBER_WATCH.set(watch)
    try:
        yield
    finally:
        _MEMBER_WATCH.reset(token)


def should_stop() -> bool:
    """In a group member: whether its operation no longer runs (pause or cancel requested, or
    another run owns it), so the member's work would be thrown away. False outside a member.

    Cheap enough to call in a tight loop: the row is read at most every MEMBER_CHECK_SECONDS."""
    watch = _MEMBER_WATCH.get()
    return watch is not None and watch.should_stop()


def checkpoint() -> None:
    """In a long group member: stop here if its operation no longer runs (see :func:`should_stop`).

    Raises MemberStopped, which the engine catches: the member goes back to pending, unfinished
    (no result, no retry, no failure) and runs again from the start if the operation resumes —
    members must be idempotent. Frees the worker within one check of a pause or cancel."""
    if should_stop():
        raise MemberStopped()
