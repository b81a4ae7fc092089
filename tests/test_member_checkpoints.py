"""A cancel (or pause) stops a batch's running tasks at their next checkpoint and revokes the rest.

Unit tests run the engine in-process with the broker stood in for; the integration tests use the
session's real worker (2 pool processes) and show its pool freed long before the tasks' sleep ends.
"""

import re
import time
from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace

import pytest

from operations import engine, services, workflow
from operations.contrib.demo.kinds.batch_sum import batch_add
from operations.exceptions import MemberStopped
from operations.models import Operation, StepCache, StepMember
from operations.states import Status
from operations.workflow import STEPS, checkpoint, member_task_id, should_stop, watching_member
from tests.support.ops import status_changes, wait_for, wait_status

ADD = "operations.batch_add"


class Task:
    """What the engine reads of a Celery task; a stopped member must never be retried."""

    request = SimpleNamespace(retries=0)

    def retry(self, **kwargs):
        raise AssertionError("a member stopped at its checkpoint must not be retried")


def start_batch(count, seconds, **params):
    tasks = [{"paramA": i, "paramB": 10 * i} for i in range(count)]
    return services.operation_start(kind="batch_sum", actor="cli", params={
        "tasks": tasks, "min_seconds": seconds, "max_seconds": seconds, **params})


def members(operation):
    return list(StepMember.objects.filter(operation=operation).order_by("member_index")
                .values_list("state", "result"))


# --- the check itself -------------------------------------------------------------------------


def test_outside_a_member_the_check_says_go_on_and_batch_add_just_adds():
    assert should_stop() is False
    assert checkpoint() is None
    assert batch_add(2, 3, seconds=[0.01, 0.01]) == 5


def test_the_row_is_read_at_most_once_per_interval_and_a_stop_sticks(monkeypatch):
    now, reads, answers = [100.0], [], iter([True, False])
    monkeypatch.setattr(workflow, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def still_running():
        reads.append(now[0])
        return next(answers)

    with watching_member(still_running, every=0.5):
        assert [should_stop() for _ in range(1000)] == [False] * 1000 and reads == []  # the claim just read it
        now[0] += 0.5
        assert [should_stop() for _ in range(1000)] == [False] * 1000 and reads == [100.5]
        now[0] += 0.4
        assert should_stop() is False and reads == [100.5]
        now[0] += 0.1
        assert should_stop() is True and reads == [100.5, 101.0]
        now[0] += 5
        assert should_stop() is True and len(reads) == 2  # stopped for good: no more reads
        with pytest.raises(MemberStopped):
            checkpoint()
    assert should_stop() is False  # the watch ends with the member


def test_batch_add_stops_within_a_slice_of_its_sleep():
    with watching_member(lambda: False, every=0):
        began = time.monotonic()
        with pytest.raises(MemberStopped):
            batch_add(1, 2, seconds=[30, 30])
    assert time.monotonic() - began < 0.5
    with watching_member(lambda: True, every=0):
        assert batch_add(1, 2, seconds=[0.3, 0.3]) == 3


# --- the engine, one message at a time ---------------------------------------------------------


@pytest.fixture
def broker(monkeypatch):
    """The member messages sent, as (operation, run, step, member), and the revokes asked for."""
    sent = SimpleNamespace(members=[], revoked=[])
    monkeypatch.setattr(services, "_dispatch_member_on_commit",
                        lambda op, token, index, member, task_id, entry: sent.members.append((op, token, index, member)))
    monkeypatch.setattr(services, "_revoke", lambda op, task_ids: sent.revoked.append((op, sorted(task_ids))))
    monkeypatch.setattr(services, "dispatch_on_commit", lambda *args: None)
    monkeypatch.setattr(workflow, "MEMBER_CHECK_SECONDS", 0)  # every checkpoint reads the row
    # Plans are cached by (operation, run); a rolled-back test's operation ids come round again.
    monkeypatch.setattr(engine, "_PLANS", OrderedDict())
    return sent


def add_after(verb, operation, monkeypatch):
    """batch_add, with the user's ``verb`` landing while it runs."""
    def add(a, b, seconds=(0, 0)):
        services.operation_apply(verb, operation=operation, actor="cli")
        return batch_add(a, b, seconds=seconds)

    monkeypatch.setitem(STEPS, ADD, replace(STEPS[ADD], func=add))


@pytest.mark.django_db
def test_a_cancel_stops_a_running_member_unfinished_and_revokes_the_unfinished(
        broker, monkeypatch, django_capture_on_commit_callbacks):
    operation = start_batch(2, 30)
    engine.run_step(Task(), operation.pk, 1, 0)  # the fan-out
    assert broker.members == [(operation.pk, 1, 0, 0), (operation.pk, 1, 0, 1)]
    add_after("cancel", operation, monkeypatch)

    began = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        engine.run_member(Task(), operation.pk, 1, 0, 0)
    assert time.monotonic() - began < 5  # not the task's 30 s

    cancelled = Operation.objects.get(pk=operation.pk)
    assert (cancelled.status, cancelled.progress_done, cancelled.result, cancelled.error) == (
        Status.CANCELLED, 0, None, "")
    assert members(operation) == [("PENDING", None), ("PENDING", None)]  # stopped, not finished
    assert not StepCache.objects.filter(task=ADD).exists()  # no result stored for later batches
    assert status_changes(operation.pk) == [("", "running", "cli"), ("running", "cancel_requested", "cli"),
                                            ("cancel_requested", "cancelled", "worker")]
    assert not cancelled.events.filter(note__icontains="fail").exists()
    assert broker.revoked == [(operation.pk, sorted(str(member_task_id(operation.pk, 0, i)) for i in (0, 1)))]


@pytest.mark.django_db
def test_a_pause_stops_a_running_member_and_resume_runs_it_again(broker, monkeypatch):
    operation = start_batch(2, 30)
    engine.run_step(Task(), operation.pk, 1, 0)
    add_after("pause", operation, monkeypatch)
    engine.run_member(Task(), operation.pk, 1, 0, 0)

    paused = Operation.objects.get(pk=operation.pk)
    assert (paused.status, paused.progress_done) == (Status.PAUSED, 0)
    assert members(operation) == [("PENDING", None), ("PENDING", None)]
    assert broker.revoked == []  # a paused member's id is used again by the resumed run

    services.operation_resume(operation=operation, actor="cli")
    broker.members.clear()
    engine.run_step(Task(), operation.pk, 2, 0)
    assert broker.members == [(operation.pk, 2, 0, 0), (operation.pk, 2, 0, 1)]  # both run again
    monkeypatch.setitem(STEPS, ADD, replace(STEPS[ADD], func=lambda a, b, seconds=(0, 0): a + b))
    engine.run_member(Task(), operation.pk, 2, 0, 0)
    engine.run_member(Task(), operation.pk, 2, 0, 1)
    done = Operation.objects.get(pk=operation.pk)
    assert (done.status, done.result, done.progress_done) == (Status.COMPLETED, [0, 11], 2)


@pytest.mark.django_db
def test_a_member_stopped_by_a_pause_withdrawn_meanwhile_is_sent_again(broker, monkeypatch):
    """It saw the pause at its checkpoint; the pause was withdrawn before it put itself back to
    pending: nothing else would ever send it again, so it sends itself."""
    operation = start_batch(2, 30)
    engine.run_step(Task(), operation.pk, 1, 0)
    add_after("pause", operation, monkeypatch)
    stop = services.member_stop

    def withdraw_then_stop(*args):
        services.operation_resume(operation=operation, actor="cli")
        return stop(*args)

    monkeypatch.setattr(services, "member_stop", withdraw_then_stop)
    engine.run_member(Task(), operation.pk, 1, 0, 0)
    row = Operation.objects.get(pk=operation.pk)
    assert (row.status, row.run_token) == (Status.RUNNING, 1)
    assert members(operation)[0] == ("PENDING", None)
    assert broker.members.count((operation.pk, 1, 0, 0)) == 2  # the fan-out's message, and its own again


# --- with a real worker -----------------------------------------------------------------------

def started(operation_id):
    return list(StepMember.objects.filter(operation_id=operation_id, state=StepMember.State.STARTED)
                .values_list("task_id", flat=True))


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis", "pg-rabbitmq")
def test_a_cancelled_batch_frees_its_workers_at_once_and_revokes_its_waiting_tasks(worker):
    operation = start_batch(6, 30)  # 2 run (the worker's 2 pool processes), 4 wait in the broker
    wait_for(operation.pk, lambda op: len(started(op.pk)) == worker.concurrency, timeout=30,
             what=f"{worker.concurrency} tasks running")
    running = [str(task_id) for task_id in started(operation.pk)]

    began = time.monotonic()
    assert services.operation_cancel(operation=operation, actor="cli").status == Status.CANCEL_REQUESTED
    cancelled = wait_status(operation.pk, Status.CANCELLED, timeout=10)
    took = time.monotonic() - began
    assert took < 5, f"cancelled {took:.1f}s after the request"
    assert (cancelled.progress_done, cancelled.result) == (0, None)
    assert {state for state, _ in members(operation)} == {"PENDING"}  # none finished, none left started

    # Both pool processes are free again: a new operation runs now, not when the sleeps would end.
    quick = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    assert wait_status(quick.pk, Status.COMPLETED, Status.FAILED, timeout=15).status == Status.COMPLETED
    assert time.monotonic() - began < 20

    log = worker.log_text()
    for task_id in running:  # the two running tasks ended within a second or so of the cancel
        runtime = re.search(rf"operations\.run_member\[{task_id}\] succeeded in ([0-9.]+)s", log)
        assert runtime and float(runtime.group(1)) < 10, (task_id, runtime and runtime.group(0), worker.log_tail())
    unfinished = {str(member_task_id(operation.pk, 0, i)) for i in range(6)}
    deadline = time.monotonic() + 10
    while not any(unfinished <= set(line.split(": ", 1)[-1].split(", "))
                  for line in re.findall(r"Tasks flagged as revoked: .*", worker.log_text())):
        assert time.monotonic() < deadline, f"the revoke did not reach the worker:\n{worker.log_tail()}"
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis", "pg-rabbitmq")
def test_a_paused_batch_stops_its_running_tasks_and_resume_runs_them_again(worker):
    operation = start_batch(2, 4)
    wait_for(operation.pk, lambda op: len(started(op.pk)) == 2, timeout=30, what="both tasks running")
    began = time.monotonic()
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED, timeout=10)
    assert time.monotonic() - began < 3  # each task had about 4 s to go
    assert paused.progress_done == 0 and {state for state, _ in members(operation)} == {"PENDING"}

    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED, Status.FAILED, timeout=30)
    assert (done.status, done.result, done.progress_done) == (Status.COMPLETED, [0, 11], 2)
    assert time.monotonic() - began >= 4  # the tasks ran whole after the resume
