"""Tappable workflows — the public Python API.

A developer marks Celery tasks as operation steps with :func:`step` and hands a chain of their
signatures to a kind (see :mod:`operations.catalogue`). The engine turns the chain into a *plan*:
signature-style dicts, written once to ``Operation.workflow``; only steps registered here can ever
be rebuilt from that JSON (the allowlist), and their arguments must fit their functions.

    @step(atomic=False)            # pure: writes nothing to the database
    def add(x, y):
        return x + y

    chain(add.s(4, 6), add.s(3))   # a pause point at every step boundary (pause_every=1)
"""

import inspect
import json
from dataclasses import dataclass
from typing import Callable

from celery import shared_task
from celery.canvas import Signature, _chain

PLAN_VERSION = 1
#: Signature options a plan keeps; anything else in a stored step is refused.
STEP_OPTIONS = frozenset({"queue", "priority", "max_retries", "retry_delay"})
STEP_KEYS = frozenset({"task", "args", "kwargs", "options", "immutable"})


class WorkflowError(ValueError):
    """A plan that cannot run: the message names the step and what is wrong with it."""


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


#: The allowlist: task name → step. Filled by :func:`step` at import time.
STEPS: dict[str, StepSpec] = {}


def step(func=None, *, name=None, atomic=True, context=False, max_retries=0, retry_delay=1.0,
         **task_options):
    """Register ``func`` as an operation step; it stays a plain Celery task of the same name.

    ``atomic`` (default) runs the body in the same transaction as the engine's advance, so a
    step's own writes and its progress commit together or not at all; pure steps set it False.
    ``context=True`` passes a StepContext first, for in-step checkpoints of long loops.
    """

    def register(func):
        task_name = name or f"{func.__module__}.{func.__name__}"
        if task_name.startswith("celery."):
            raise WorkflowError(f"'{task_name}': the celery.* namespace is reserved for Celery")
        STEPS[task_name] = StepSpec(task_name, func, atomic, context, max_retries, retry_delay)
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


def build_plan(workflow, *, pause_every=1):
    """Turn a chain (or list of signatures) into the plan stored in ``Operation.workflow``."""
    if not isinstance(pause_every, int) or pause_every < 1:
        raise WorkflowError(f"pause_every must be a positive integer, got {pause_every!r}")
    steps = []
    for index, sig in enumerate(_signatures(workflow)):
        if not isinstance(sig, Signature) or isinstance(sig, _chain) or sig.get("subtask_type"):
            raise WorkflowError(f"step {index}: only plain task signatures can be steps, not {sig!r}")
        entry = {"task": sig.task, "args": list(sig.args), "kwargs": dict(sig.kwargs)}
        options = {k: v for k, v in (sig.options or {}).items() if k in STEP_OPTIONS}
        if options:
            entry["options"] = options
        if sig.immutable:
            entry["immutable"] = True
        steps.append(entry)
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
        validate_step(index, entry)


def validate_step(index, entry):
    if not isinstance(entry, dict):
        raise WorkflowError(f"step {index} is not a signature dict: {entry!r}")
    task = entry.get("task")
    where = f"step {index} ({task})"
    unknown_keys = set(entry) - STEP_KEYS
    if unknown_keys:
        raise WorkflowError(f"{where} has unsupported keys: {', '.join(sorted(unknown_keys))}")
    if not isinstance(task, str):
        raise WorkflowError(f"step {index} names no task")
    if task.startswith("celery."):
        raise WorkflowError(f"step {index} names '{task}', a Celery built-in task, not an operation step")
    spec = STEPS.get(task)
    if spec is None:
        raise WorkflowError(f"step {index} names '{task}', which is not a registered operation step")
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise WorkflowError(f"{where}: args must be a list and kwargs an object")
    options = entry.get("options", {})
    if not isinstance(options, dict) or set(options) - STEP_OPTIONS:
        raise WorkflowError(f"{where}: unsupported options {sorted(set(options) - STEP_OPTIONS)}")
    try:
        json.dumps([args, kwargs])
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"{where}: arguments are not JSON: {exc}") from None
    prefix = [None] if spec.context else []
    if index > 0 and not entry.get("immutable"):
        prefix.append(None)  # the value carried from the previous step
    try:
        inspect.signature(spec.func).bind(*prefix, *args, **kwargs)
    except TypeError as exc:
        raise WorkflowError(f"{where}: arguments do not fit the step: {exc}") from None
    return spec


def step_arguments(index, entry, carry):
    """The positional and keyword arguments of a step, with the carried value in front."""
    args = list(entry.get("args", []))
    if index > 0 and not entry.get("immutable"):
        args.insert(0, carry)
    return args, dict(entry.get("kwargs", {}))


def is_pause_point(index, plan_pause_every, length):
    """Step boundaries where a pending pause or cancel is obeyed: every nth, and the end."""
    return index % plan_pause_every == 0 or index >= length
