"""The engine: runs the steps of an operation, one broker message per step or per sticky slice.

A message names only ``(operation_id, run_token, index)`` (and ``hop``, below). Per step the
engine makes one round trip before the step (a read of status + position, ``services.step_claim``,
which is also the connection's health check) and one transaction after it (the step's own writes when ``atomic``,
the advance guarded by token and fence — a single statement when it is the only write — and then
either the next message on commit, or — at a pause point with a pause or cancel pending, or after
the last step — the transition that stops the chain). In a sticky slice (``Slice``) the advance of
step i is also the claim of step i+1, which the same worker runs at once: one statement per
trivial step, no broker hop. Where a single-statement advance hands the next step to the broker
(``Run._advance_overlapped``), the message is published while the advance runs and carries the
advance's token; when that message comes back to the same process, the advance was its claim
(``AdvanceClaims``). The plan is read once per run and cached, so a step costs the same at the start
of a 1000-step workflow as at its end.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)

from . import selectors, services
from .catalogue import get_kind
from .conf import conf, heartbeat_interval
from .exceptions import DATA_ERROR_NOTE, DataError, MemberStopped, StopStep
from .models import Operation
from .outages import is_outage
from .states import Status
from .waiting import WaitHere
from .workflow import STEPS, is_pause_point, step_arguments, watching_member

log = logging.getLogger("operations.engine")


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
        spec = get_kind(kind)
        policy = spec.recovery_policy()
        count_steps, poison_limit, recovers = spec.progress == "steps", policy.poison_limit, policy.auto_resume
        step_time_limit = spec.step_time_limit
    except LookupError:
        count_steps, poison_limit, recovers, step_time_limit = True, conf.POISON_LIMIT, False, None
    plan = (workflow["steps"], workflow["pause_every"], count_steps, poison_limit, recovers, step_time_limit)
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
        return heartbeat_interval()

    @contextmanager
    def beating(self, operation_id, run_token):
        self._ensure_thread()
        key = (operation_id, run_token)
        with self._lock:
            self._active[key] = time.monotonic()
        try:
            yield
        finally:
            self.release(operation_id, run_token)

    def release(self, operation_id, run_token):
        """Stop beating for the run in this process: its step committed its advance, and from then
        on only the next step's claim may say the operation is alive. Beating on while the next
        message is published would hide a publish that hangs (a broker cut off, tests/faults/
        test_partitions.py) from beat's reconciler for as long as the publish hangs."""
        with self._lock:
            self._active.pop((operation_id, run_token), None)

    def _ensure_thread(self):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()  # a forked pool child starts its own thread
        self._active = {}
        threading.Thread(target=self._loop, name="operations-heartbeat", daemon=True).start()

    def _loop(self):
        while True:
            try:
                interval = self.interval
            except Exception:  # a bad TAP_HEARTBEAT_LEASE (manage.py check names it): keep beating
                log.exception("heartbeat interval unusable; beating every 5 s")
                interval = 5.0
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                due = [key for key, last in self._active.items() if now - last >= interval]
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
    """Handed to steps registered with ``context=True``: their cursor and their checkpoints (public).

    ``state`` is the cursor of the last checkpoint (None on a first run). Write each chunk inside
    ``with ctx.checkpoint(new_state, done=..., total=...):`` — the chunk's writes, the new cursor
    and the progress commit in one transaction guarded by the run token; if a pause or cancel is
    pending, the block raises StopStep after committing, and the engine obeys it.
    """

    def __init__(self, operation_id: int, run_token: int, index: int, fence: int, state: Any, attempt: int):
        self.operation_id = operation_id
        self.run_token = run_token
        self.index = index
        self.fence = fence
        self.state = state
        self.attempt = attempt
        self._commits = threading.Lock()

    @contextmanager
    def checkpoint(self, state: Any, *, done: int | Callable[[Any], int] | None = None,
                   total: int | Callable[[Any], int] | None = None) -> Iterator[None]:
        """``state`` (and ``done``, ``total``) may be functions of the cursor, called as the chunk
        commits: from the last committed cursor to the new one, and from the new one to the
        progress. Then chunks written by several threads at once, each on its own connection,
        commit one at a time, in fence order, each merging its own part into the others' cursor."""
        if transaction.get_connection().in_atomic_block:
            raise RuntimeError("checkpoints commit on their own: register the step with @step(atomic=False)")
        with ExitStack() as committing:
            with transaction.atomic():
                yield
                committing.enter_context(self._commits)  # released once committed or rolled back
                if callable(state):
                    state = state(self.state)
                status = services.step_checkpoint(
                    self.operation_id, self.run_token, self.fence, state,
                    done=done(state) if callable(done) else done, total=total(state) if callable(total) else total,
                )
            self.fence += 1
            self.state = state
        if status != Status.RUNNING:
            raise StopStep(status)

    def heartbeat(self) -> None:
        """Tell beat this step is alive, for a long stretch without checkpoints."""
        services.operation_heartbeat(self.operation_id, self.run_token)


# --- one step ---------------------------------------------------------------------------------


#: Databases a sticky slice may run on. SQLite has one writer at a time: a worker writing step
#: after step would keep a person's pause or cancel waiting for the lock until its slice ends.
STICKY_VENDORS = frozenset({"postgresql"})


class Slice:
    """A sticky slice: the steps one message runs in a row, within TAP_STICKY_STEPS and
    TAP_STICKY_SECONDS. Only kinds whose recovery resumes by itself run more than one step per
    message: if the worker dies mid-slice, the broker gives back the slice's first message, which
    is stale by then, and beat's reconciler brings the operation back after the lease."""

    def __init__(self, run, sticky):
        self.started = time.monotonic()
        self.steps = 1
        self.limit = (conf.STICKY_STEPS if sticky and run.recovers and connection.vendor in STICKY_VENDORS
                      else 1)

    def may_continue(self, run, following):
        if self.steps >= self.limit or time.monotonic() - self.started >= conf.STICKY_SECONDS:
            return False
        entry, previous = run.steps[following], run.steps[following - 1]
        return "group" not in entry and services.step_route(entry) == services.step_route(previous)


class Run:
    """What a message needs to know about its run: the plan (cached), and how to move on."""

    def __init__(self, operation_id, run_token, *, sticky=False):
        self.operation_id = operation_id
        self.run_token = run_token
        (self.steps, self.pause_every, self.count_steps, self.poison_limit,
         self.recovers, self.step_time_limit) = _plan(operation_id, run_token)
        self.length = len(self.steps)
        # Only run_step's loop runs a slice; a group's last member hands the next step on.
        self.slice = Slice(self, sticky)
        #: The claim of the next step when this worker runs it itself (set by a committed advance).
        self.continue_with = None
        #: Whether the claim of the step being run said running (no pause or cancel pending then).
        self.claimed_running = False

    def stop_here(self, status, index, result=None, where=None):
        """At a pause point: obey a pending pause or cancel, or complete after the last step."""
        return services.operation_at_pause_point(self.operation_id, self.run_token, status, index=index,
                                                 length=self.length, result=result, where=where)

    def advance(self, fence, index, result):
        """Move past step ``index`` (in the step's transaction, or alone when it is the step's only
        write), then continue here, dispatch or stop."""
        following = index + 1
        if (self.claimed_running and following < self.length and services.advance_can_overlap()
                and not self.slice.may_continue(self, following)):
            self._advance_overlapped(fence, index, result)
            return
        status = services.step_advance(self.operation_id, self.run_token, fence, index, result,
                                       count_step=self.count_steps)
        # Registered before the dispatch, so it runs first on commit: the heartbeat stops before
        # the publish of the next message, which may hang.
        transaction.on_commit(lambda: heartbeat.release(self.operation_id, self.run_token))
        stops = following >= self.length or (
            status != Status.RUNNING and is_pause_point(following, self.pause_every, self.length))
        if stops and self.stop_here(status, following, result):
            return
        if status == Status.RUNNING and following < self.length and self.slice.may_continue(self, following):
            # The advance is the claim of the next step: same status read, the fence it set.
            claim = services.Claim(status, following, fence + 1, result, None)
            transaction.on_commit(lambda: setattr(self, "continue_with", claim))
            return
        services.dispatch_on_commit(self.operation_id, self.run_token, following, self.steps)

    def _advance_overlapped(self, fence, index, result):
        """The next step goes through the broker: its message is published while the advance (a
        single statement) runs on the server, instead of after it, and carries the advance's
        token so that it runs only if this advance won. Pause, cancel and completion are decided
        from the advance's status as before; a message already out then finds the operation
        stopped, and is dropped as stale."""
        following, hop = index + 1, services.new_hop()

        def publish():
            heartbeat.release(self.operation_id, self.run_token)  # before a publish that may hang
            services.publish_overlapped(self.operation_id, self.run_token, following, self.steps, hop)

        status = services.step_advance(self.operation_id, self.run_token, fence, index, result,
                                       count_step=self.count_steps, hop=hop, during=publish)
        if status == Status.RUNNING:
            # Should the message come back to this process, the advance was its claim.
            advance_claims.keep(self.operation_id, self.run_token,
                                services.Claim(status, following, fence + 1, result, None, 0, hop))
        elif is_pause_point(following, self.pause_every, self.length):
            self.stop_here(status, following, result)


class AdvanceClaims:
    """The claims of the steps this process last sent through the broker, as their advances read
    them (``Run._advance_overlapped``). With one pool process, or a message that happens to come
    back to the process that sent it, the step runs on its advance's claim, as a sticky slice's
    next step does, and skips the read before it: one statement per step through the broker.

    Only the delivery with the advance's own hop token takes an entry, once; an entry older than
    TAP_STICKY_SECONDS (or a heartbeat interval) is read again instead, so a pause or cancel
    asked for since lands at most one step later, as in a slice."""

    LIMIT = 64

    def __init__(self):
        self._lock = threading.Lock()
        self._claims = OrderedDict()

    def keep(self, operation_id: int, run_token: int, claim: services.Claim) -> None:
        with self._lock:
            self._claims[claim.hop] = (operation_id, run_token, claim, time.monotonic())
            if len(self._claims) > self.LIMIT:
                self._claims.popitem(last=False)

    def take(self, operation_id: int, run_token: int, index: int, hop: int) -> services.Claim | None:
        with self._lock:
            entry = self._claims.pop(hop, None)
        if entry is None:
            return None
        kept_for, kept_token, claim, kept_at = entry
        fresh = time.monotonic() - kept_at < min(conf.STICKY_SECONDS, heartbeat_interval())
        if (kept_for, kept_token, claim.step_index) != (operation_id, run_token, index) or not fresh:
            return None
        return claim


advance_claims = AdvanceClaims()


#: The least a message published while its advance ran (``Run._advance_overlapped``) waits for
#: that advance to land, when it arrives first (``hop_wait_seconds``).
HOP_WAIT_SECONDS = 2.0


def hop_wait_seconds() -> float:
    """How long a message waits for the advance that sent it: a heartbeat interval (at least
    HOP_WAIT_SECONDS). An advance held up that long (a lock on the row, a stalled disk, lost
    packets) still lands in time to have its step run by its own message; one that failed never
    lands, and the row moves on by the step's retry or recovery, which ends the wait sooner."""
    return max(HOP_WAIT_SECONDS, heartbeat_interval())


def run_step(task, operation_id, run_token, index, hop=None):
    """Execute step ``index`` of run ``run_token``, or do nothing if the message is stale; then,
    in a sticky slice, the steps after it that this worker may run itself. ``hop``: the message
    was published while the advance that made it due ran, and belongs to that advance only."""
    claim = advance_claims.take(operation_id, run_token, index, hop) if hop is not None else None
    if claim is None:
        claim = _claim(operation_id, run_token)
        if hop is not None:
            claim = _await_advance(operation_id, run_token, index, hop, claim)
    if claim is None or claim.step_index != index or (hop is not None and claim.hop != hop):
        _log_stale(operation_id, run_token, index, claim, hop)
        return
    run = Run(operation_id, run_token, sticky=True)
    while True:
        _run_claimed(task, run, index, claim)
        if run.continue_with is None:
            return
        claim, run.continue_with = run.continue_with, None
        index = claim.step_index
        run.slice.steps += 1
        # A retry of this step re-sends its own message, as if it had come through the broker.
        task.request.args, task.request.kwargs, task.request.retries = [operation_id, run_token, index], {}, 0


def _await_advance(operation_id, run_token, index, hop, claim):
    """A message published while its advance ran can be delivered before the advance lands: while
    the row is one step behind the message, without its token, read it again."""
    delay, deadline = 0.0005, time.monotonic() + hop_wait_seconds()
    while (claim is not None and claim.hop != hop and claim.step_index == index - 1
           and time.monotonic() < deadline):
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        claim = _claim(operation_id, run_token)
    return claim


def _claim(operation_id, run_token):
    """The claim, which is also the connection's health check: a connection that broke while
    idle is opened again once (tasks skip Django's SELECT 1 before every step)."""
    try:
        return services.step_claim(operation_id, run_token)
    except (OperationalError, InterfaceError):
        if transaction.get_connection().in_atomic_block:
            raise
        transaction.get_connection().close()
        return services.step_claim(operation_id, run_token)


def _run_claimed(task, run, index, claim):
    operation_id, run_token = run.operation_id, run.run_token
    if claim.deaths >= run.poison_limit and claim.status == Status.RUNNING:
        # It lost that many workers without getting further: it would only kill one more.
        services.operation_poisoned(operation_id, run_token, index=index, deaths=claim.deaths,
                                    limit=run.poison_limit)
        return
    if (claim.status != Status.RUNNING and is_pause_point(index, run.pause_every, run.length)) \
            or index >= run.length:
        if run.stop_here(claim.status, index, claim.carry):
            return
        # The pause was withdrawn since the claim: run the step after all.
    run.claimed_running = claim.status == Status.RUNNING
    entry = run.steps[index]
    if "group" in entry:
        _fan_out(run, index, entry["group"])
        return
    spec = _spec_or_fail(run, index, entry)
    if spec is None:
        return
    limit = entry.get("options", {}).get("time_limit") or run.step_time_limit
    if limit and not services.step_time_limit_started(operation_id, run_token, claim.fence, index, limit):
        return  # another run owns it since the claim
    args, kwargs = step_arguments(index, entry, claim.carry)
    attempt = task.request.retries or 0
    ctx = StepContext(operation_id, run_token, index, claim.fence, claim.checkpoint, attempt)
    if spec.context:
        args.insert(0, ctx)
    try:
        with heartbeat.beating(operation_id, run_token):
            hit, result = services.cache_get(spec, args, kwargs)
            if spec.atomic and not hit:
                with transaction.atomic():
                    result = spec.func(*args, **kwargs)
                    services.cache_put(spec, args, kwargs, result)
                    run.advance(ctx.fence, index, result)
            else:
                if not hit:
                    result = spec.func(*args, **kwargs)
                if spec.cache:
                    with transaction.atomic():
                        services.cache_put(spec, args, kwargs, result)
                        run.advance(ctx.fence, index, result)
                else:  # the advance is the only write: one statement, no BEGIN and COMMIT around it
                    run.advance(ctx.fence, index, result)
    except StopStep as stop:
        if not run.stop_here(stop.status, index, where=f"inside step {index + 1} of {run.length}, at its last checkpoint"):
            # The pause was withdrawn since the checkpoint: go on from it.
            services.dispatch_on_commit(operation_id, run_token, index, run.steps)
    except WaitHere as wait:  # a wait step: park the operation, hold no worker
        status = services.operation_wait(operation_id, run_token, ctx.fence, index, name=wait.name,
                                         timeout=wait.timeout, state=wait.state)
        if status not in (None, Status.WAITING) and not run.stop_here(
                status, index, where=f"at step {index + 1} of {run.length}, before its wait"):
            services.dispatch_on_commit(operation_id, run_token, index, run.steps)  # withdrawn: wait again
    except services.Fenced as exc:
        log.warning("%s: another run owns the operation now; this step's writes were rolled back", exc)
    except Exception as exc:
        error = exc
        try:
            owns = _still_owns(operation_id, run_token, ctx.fence)
        except Exception as lasting:  # the database is still unavailable: logged, left to beat
            if not is_outage(lasting):
                raise
            error, owns = lasting, True
        if not owns:
            log.warning("operation %s: step %s of run %s failed (%s: %s) while another delivery or run moved "
                        "the operation on; its writes were rolled back", operation_id, index, run_token,
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            return
        _retry_or_fail(task, run, index, entry, spec, attempt, error, f"step {index + 1} of {run.length} ({spec.name})")


def _still_owns(operation_id, run_token, fence=None):
    """``services.step_still_owns``, asked after a step failed. This thread's connection may be
    dead by then although Django does not know it yet: the failure was an outage seen by the
    step's own threads on their connections (csv_import's ranges), or the server dropped this one
    while it sat idle. So an outage on the question itself is asked again once, on a new
    connection; one that lasts is raised (and, like the step's own, left to the reconciler)."""
    try:
        return services.step_still_owns(operation_id, run_token, fence)
    except Exception as exc:
        if not is_outage(exc) or connection.in_atomic_block:
            raise
        connection.close()
        return services.step_still_owns(operation_id, run_token, fence)


def _spec_or_fail(run, index, entry, where=None):
    spec = STEPS.get(entry.get("task"))
    if spec is None:
        where = where or f"step {index + 1} of {run.length}"
        services.operation_fail(run.operation_id, run.run_token,
                                f"{where} names '{entry.get('task')}', which is not a registered operation step")
    return spec


def _retry_or_fail(task, run, index, entry, spec, attempt, exc, where, before_retry=None):
    if is_outage(exc):  # an outage interrupts (the reconciler, after the lease); it does not fail
        log.warning("operation %s: %s stopped: the database is unavailable (%s: %s); beat interrupts it "
                    "after the lease and its recovery policy brings it back", run.operation_id, where,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return
    if isinstance(exc, DataError):  # the input is wrong: the same input fails the same way again
        log.warning("operation %s: %s: %s", run.operation_id, where, exc)
        services.operation_fail(run.operation_id, run.run_token, f"{exc} ({where}; {DATA_ERROR_NOTE})")
        return
    options = entry.get("options", {})
    max_retries = options.get("max_retries", spec.max_retries)
    delay = options.get("retry_delay", spec.retry_delay)
    what = f"{type(exc).__name__}: {exc}"
    if attempt < max_retries:
        services.operation_note(run.operation_id, f"{where} attempt {attempt + 1} of {max_retries + 1} "
                                                  f"failed: {what}; retrying in {delay}s")
        if before_retry:
            before_retry()
        raise task.retry(countdown=delay, max_retries=max_retries, exc=exc)
    log.warning("operation %s: %s failed: %s", run.operation_id, where, what, exc_info=sys.exc_info())
    services.operation_fail(run.operation_id, run.run_token, f"{where} failed after {attempt + 1} attempt(s): {what}")


# --- group steps ------------------------------------------------------------------------------


def _fan_out(run, index, members):
    """Start (or, after a resume, restart) the members of a group step that are not done yet."""
    all_done = services.group_fan_out(run.operation_id, run.run_token, index, members,
                                      count_members=not run.count_steps)
    if all_done:  # every member came from the cache
        _finish_group(run, index)


def run_member(task, operation_id, run_token, index, member_index):
    """Execute one member of group step ``index``; the last one to finish advances the step."""
    claim = _claim(operation_id, run_token)
    if claim is None or claim.step_index != index:
        _log_stale(operation_id, run_token, index, claim)
        return
    run = Run(operation_id, run_token)
    if claim.status != Status.RUNNING:
        _settle_group(run, index, claim.status)  # a pending pause or cancel holds this member
        return
    if not services.member_start(operation_id, run_token, index, member_index):
        log.warning("operation %s: ignored member %s of step %s: it is not pending (a duplicate delivery)",
                    operation_id, member_index, index)
        return
    entry = run.steps[index]["group"][member_index]
    where = f"step {index + 1} of {run.length}, task {member_index + 1}"
    spec = _spec_or_fail(run, index, entry, where)
    if spec is None:
        return
    args, kwargs = step_arguments(index, entry, claim.carry)
    attempt = task.request.retries or 0
    try:
        with heartbeat.beating(operation_id, run_token):
            hit, result = services.cache_get(spec, args, kwargs)
            if not hit:
                with watching_member(lambda: selectors.run_is_running(operation_id=operation_id,
                                                                       run_token=run_token)):
                    result = spec.func(*args, **kwargs)
            status = services.member_finish(operation_id, run_token, index, member_index, result,
                                            spec=spec, args=args, kwargs=kwargs, cached=hit,
                                            count_members=not run.count_steps)
    except MemberStopped:  # at its checkpoint: a pause or cancel is pending, or the run moved on
        status = services.member_stop(operation_id, run_token, index, member_index, entry)
        if status is not None and status != Status.RUNNING:  # RUNNING: the pause was withdrawn, sent again
            _settle_group(run, index, status)
        return
    except services.Fenced as exc:
        log.warning("%s: this member's result was discarded", exc)
        return
    except Exception as exc:
        if not _still_owns(operation_id, run_token):
            log.warning("operation %s: %s of run %s failed while another delivery or run moved the operation "
                        "on; its result was discarded", operation_id, where, run_token)
            return
        _retry_or_fail(task, run, index, entry, spec, attempt, exc, f"{where} ({spec.name})",
                       before_retry=lambda: services.member_reset(operation_id, index, member_index))
        return
    _settle_group(run, index, status)


def _settle_group(run, index, status):
    """Advance the group step once every member is done; obey a pause once none is running."""
    remaining, started = services.group_progress(run.operation_id, index)
    if remaining == 0:
        _finish_group(run, index)
    elif status != Status.RUNNING and started == 0:
        run.stop_here(status, index, where=f"in step {index + 1} of {run.length}, with {remaining} task(s) not finished")


def _finish_group(run, index):
    claim = services.step_claim(run.operation_id, run.run_token)
    if claim is None or claim.step_index != index:
        return  # another member finished the group first
    try:
        with transaction.atomic():
            run.advance(claim.fence, index, services.group_results(run.operation_id, index))
    except services.Fenced:
        pass  # another member advanced it between our read and our write


def _log_stale(operation_id, run_token, index, claim, hop=None):
    if claim is not None and claim.step_index == index:  # the hop differs
        log.warning("operation %s: ignored step %s of run %s: its message was sent by an advance that lost "
                    "to another delivery of the step before (a duplicate delivery)", operation_id, index, run_token)
        return
    if claim is not None and hop is not None and claim.step_index == index - 1:
        log.warning("operation %s: ignored step %s of run %s: the advance that sent it did not land within %s s "
                    "(its step runs again by its retry or recovery)", operation_id, index, run_token, hop_wait_seconds())
        return
    if claim is not None:
        log.warning("operation %s: ignored step %s of run %s: the operation is at step %s "
                    "(a duplicate or late delivery)", operation_id, index, run_token, claim.step_index)
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
