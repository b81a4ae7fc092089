"""The engine: runs one step of an operation per broker message, and decides what comes next.

A message names only ``(operation_id, run_token, index)``. Per step the engine makes one round
trip before the step (heartbeat + status + position, ``services.step_claim``) and one transaction
after it (the step's own writes when ``atomic``, the advance guarded by token and fence, and then
either the next message on commit, or — at a pause point with a pause or cancel pending, or after
the last step — the transition that stops the chain). The plan itself is read once per run and
cached, so a step costs the same at the start of a 1000-step workflow as at its end.
"""

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections, transaction

from . import services
from .catalogue import get_kind
from .models import Operation
from .states import Status
from .workflow import STEPS, is_pause_point, step_arguments

log = logging.getLogger("operations.engine")


class StopStep(Exception):
    """Raised out of a checkpoint when a pause or cancel is pending; the engine obeys it."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


# --- the plan cache ---------------------------------------------------------------------------

_PLANS = OrderedDict()
_PLANS_MAX = 256


def _plan(operation_id, run_token):
    """The plan of a run: written before the run was dispatched and never changed during it."""
    key = (operation_id, run_token)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    workflow, kind = Operation.objects.filter(pk=operation_id).values_list("workflow", "kind").get()
    try:
        count_steps = get_kind(kind).progress == "steps"
    except LookupError:
        count_steps = True
    plan = (workflow["steps"], workflow["pause_every"], count_steps)
    _PLANS[key] = plan
    if len(_PLANS) > _PLANS_MAX:
        _PLANS.popitem(last=False)
    return plan


# --- heartbeats -------------------------------------------------------------------------------


class Heartbeat:
    """One thread per worker process that keeps the heartbeat of long steps fresh."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = {}
        self._pid = None

    @property
    def interval(self):
        return max(0.5, settings.TAP_HEARTBEAT_LEASE / 4)

    @contextmanager
    def beating(self, operation_id, run_token):
        self._ensure_thread()
        key = (operation_id, run_token)
        with self._lock:
            self._active[key] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(key, None)

    def _ensure_thread(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()  # a forked pool child starts its own thread
        self._active = {}
        threading.Thread(target=self._loop, name="operations-heartbeat", daemon=True).start()

    def _loop(self):
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            with self._lock:
                due = [key for key, last in self._active.items() if now - last >= self.interval]
            for operation_id, run_token in due:
                try:
                    close_old_connections()
                    services.operation_heartbeat(operation_id, run_token)
                    with self._lock:
                        if (operation_id, run_token) in self._active:
                            self._active[(operation_id, run_token)] = time.monotonic()
                except Exception:  # a missed beat is retried; the lease is several beats long
                    log.exception("heartbeat of operation %s failed", operation_id)


heartbeat = Heartbeat()


# --- the step context (in-step checkpoints) ---------------------------------------------------


class StepContext:
    """Handed to steps registered with ``context=True``: their cursor and their checkpoints.

    ``state`` is the cursor of the last checkpoint (None on a first run). Write each chunk inside
    ``with ctx.checkpoint(new_state, done=..., total=...):`` — the chunk's writes, the new cursor
    and the progress commit in one transaction guarded by the run token; if a pause or cancel is
    pending, the block raises StopStep after committing, and the engine obeys it.
    """

    def __init__(self, operation_id, run_token, index, fence, state, attempt):
        self.operation_id = operation_id
        self.run_token = run_token
        self.index = index
        self.fence = fence
        self.state = state
        self.attempt = attempt

    @contextmanager
    def checkpoint(self, state, *, done=None, total=None):
        if transaction.get_connection().in_atomic_block:
            raise RuntimeError("checkpoints commit on their own: register the step with @step(atomic=False)")
        with transaction.atomic():
            yield
            status = services.step_checkpoint(
                self.operation_id, self.run_token, self.fence, state, done=done, total=total,
            )
        self.fence += 1
        self.state = state
        if status != Status.RUNNING:
            raise StopStep(status)

    def heartbeat(self):
        services.operation_heartbeat(self.operation_id, self.run_token)


# --- one step ---------------------------------------------------------------------------------


def run_step(task, operation_id, run_token, index):
    """Execute step ``index`` of run ``run_token``, or do nothing if the message is stale."""
    claim = services.step_claim(operation_id, run_token)
    if claim is None or claim.step_index != index:
        _log_stale(operation_id, run_token, index, claim)
        return
    steps, pause_every, count_steps = _plan(operation_id, run_token)
    length = len(steps)
    if (claim.status != Status.RUNNING and is_pause_point(index, pause_every, length)) or index >= length:
        services.operation_at_pause_point(operation_id, run_token, claim.status, index=index,
                                          length=length, result=claim.carry)
        return

    entry = steps[index]
    name = entry.get("task")
    spec = STEPS.get(name)
    if spec is None:
        services.operation_fail(operation_id, run_token,
                                f"step {index} names '{name}', which is not a registered operation step")
        return
    args, kwargs = step_arguments(index, entry, claim.carry)
    attempt = task.request.retries or 0
    ctx = StepContext(operation_id, run_token, index, claim.fence, claim.checkpoint, attempt)
    if spec.context:
        args.insert(0, ctx)

    def advance(result):
        status = services.step_advance(operation_id, run_token, ctx.fence, index, result,
                                       count_step=count_steps)
        following = index + 1
        if following >= length or (status != Status.RUNNING and is_pause_point(following, pause_every, length)):
            services.operation_at_pause_point(operation_id, run_token, status, index=following,
                                              length=length, result=result)
        else:
            services.dispatch_on_commit(operation_id, run_token, following, steps)

    try:
        with heartbeat.beating(operation_id, run_token):
            if spec.atomic:
                with transaction.atomic():
                    advance(spec.func(*args, **kwargs))
            else:
                result = spec.func(*args, **kwargs)
                with transaction.atomic():
                    advance(result)
    except StopStep as stop:
        services.operation_at_pause_point(operation_id, run_token, stop.status, index=index, length=length,
                                          where=f"inside step {index} of {length}, at its last checkpoint")
    except services.Fenced as exc:
        log.warning("%s: another run owns the operation now; this step's writes were rolled back", exc)
    except Exception as exc:
        _failed(task, operation_id, run_token, index, name, spec, entry, attempt, exc)


def _failed(task, operation_id, run_token, index, name, spec, entry, attempt, exc):
    options = entry.get("options", {})
    max_retries = options.get("max_retries", spec.max_retries)
    delay = options.get("retry_delay", spec.retry_delay)
    what = f"{type(exc).__name__}: {exc}"
    if attempt < max_retries:
        services.operation_note(
            operation_id, f"step {index} ({name}) attempt {attempt + 1} of {max_retries + 1} failed: "
                          f"{what}; retrying in {delay}s")
        raise task.retry(countdown=delay, max_retries=max_retries, exc=exc)
    log.warning("operation %s: step %s (%s) failed: %s", operation_id, index, name, what,
                exc_info=sys.exc_info())
    services.operation_fail(
        operation_id, run_token,
        f"step {index} ({name}) failed after {attempt + 1} attempt(s): {what}")


def _log_stale(operation_id, run_token, index, claim):
    if claim is not None:
        log.warning("operation %s: ignored step %s of run %s: the operation is already at step %s "
                    "(a duplicate delivery)", operation_id, index, run_token, claim.step_index)
        return
    row = Operation.objects.filter(pk=operation_id).values_list("status", "run_token").first()
    if row is None:
        log.warning("operation %s: ignored step %s: no such operation", operation_id, index)
    elif row[1] != run_token:
        log.warning("operation %s: ignored step %s of run %s: stale run token (the operation is on run %s)",
                    operation_id, index, run_token, row[1])
    else:
        log.warning("operation %s: ignored step %s of run %s: the operation is %s",
                    operation_id, index, run_token, row[0])
