"""Time in the workflow (issue 15): idempotent starts, pause with a resume time, durable sleep,
deadlines and step time limits — with a real worker and a real beat."""

import dataclasses
import io
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from operations import catalogue, services
from operations.catalogue import get_kind
from operations.contrib.demo.files import write_demo_csv
from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.states import Status
from tapproject.celery import app
from tests.support.ops import run_concurrently, status_changes, wait_for, wait_status
from tests.support.worker import BeatProcess


def api_for(user):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return api


def no_task_is_running():
    replies = app.control.inspect(timeout=3).active() or {}
    return bool(replies) and all(tasks == [] for tasks in replies.values()), replies


@pytest.fixture(autouse=True)
def _no_hold_after_the_test(tmp_path):
    """A nap left holding (its kill missed) would keep a pool process for an hour: end it."""
    yield
    for path in tmp_path.glob("tap-hold-*"):
        path.unlink()


def hold_file(tmp_path, name="nap"):
    path = tmp_path / f"tap-hold-{name}"
    path.write_text("hold")
    return str(path)


# --- idempotent starts ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_twenty_concurrent_starts_with_one_key_start_one_operation_and_another_payload_is_a_409(worker):
    owner = User.objects.create_user("client", password="pw-client-1234")
    token = Token.objects.create(user=owner).key
    body = {"kind": "arithmetic", "params": {"steps": 2}}

    def start():
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        answer = api.post("/api/operations/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
        return answer.status_code, answer.json().get("id"), answer.json()

    answers = run_concurrently(20, start)
    assert all(isinstance(a, tuple) for a in answers), answers
    assert sorted(code for code, _, _ in answers) == [200] * 19 + [201], answers
    ids = {pk for _, pk, _ in answers}
    assert len(ids) == 1 and None not in ids, answers
    (pk,) = ids
    assert Operation.objects.filter(owner=owner).count() == 1
    assert Operation.objects.get(pk=pk).idempotency_key == "order-1"
    wait_status(pk, Status.COMPLETED)

    api = api_for(owner)
    again = api.post("/api/operations/", {**body, "idempotency_key": "order-1"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == pk  # the body's key is the same key
    other = api.post("/api/operations/", {"kind": "arithmetic", "params": {"steps": 3}}, format="json",
                     HTTP_IDEMPOTENCY_KEY="order-1")
    assert other.status_code == 409, other.content
    assert other.json()["operation"] == pk
    assert other.json()["detail"].startswith(f"idempotency key 'order-1' already started operation {pk} (arithmetic)")
    both = api.post("/api/operations/", {**body, "idempotency_key": "order-2"}, format="json",
                    HTTP_IDEMPOTENCY_KEY="order-1")
    assert both.status_code == 400 and "differ" in both.json()["errors"]["idempotency_key"][0]
    # another owner's key is another key
    stranger = User.objects.create_user("stranger", password="pw-stranger-1234")
    theirs = api_for(stranger).post("/api/operations/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert theirs.status_code == 201 and theirs.json()["id"] != pk
    assert Operation.objects.count() == 2
    wait_status(theirs.json()["id"], Status.COMPLETED)


def test_the_cli_start_with_a_key_prints_the_same_operation_twice(db):
    with mock.patch.object(services, "dispatch_on_commit"):
        first, second, err = io.StringIO(), io.StringIO(), io.StringIO()
        call_command("operations", "start", "arithmetic", "--param", "steps=2", "--idempotency-key", "nightly",
                     stdout=first)
        call_command("operations", "start", "arithmetic", "--param", "steps=2", "--idempotency-key", "nightly",
                     stdout=second, stderr=err)
        assert first.getvalue() == second.getvalue()
        assert "was started before with idempotency key 'nightly'" in err.getvalue()
        with pytest.raises(CommandError, match="already started operation"):
            call_command("operations", "start", "arithmetic", "--param", "steps=5", "--idempotency-key", "nightly")
        with pytest.raises(CommandError, match="idempotency key is a text of 1 to 200"):
            call_command("operations", "start", "arithmetic", "--idempotency-key", "x" * 201)
    assert Operation.objects.count() == 1


# --- pause with a resume time -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.minutes
def test_an_import_paused_to_resume_in_20_s_resumes_by_itself_through_restarts_of_beat_and_worker(
        worker, subprocess_env, worker_log_dir):
    rows = 3000
    write_demo_csv(Path(settings.TAP_CSV_DIR) / "resume-at.csv", rows=rows)
    beat = BeatProcess(subprocess_env, worker_log_dir / "beat-resume-at-1.log",
                       worker_log_dir / "beat-schedule-resume-at").start().wait_reconciling()
    try:
        operation = services.operation_start(kind="csv_import", params={"path": "resume-at.csv", "chunk_rows": 100,
                                                                        "rows_per_second": 3000}, actor="cli")
        wait_for(operation.pk, lambda op: op.progress_done >= 300, what="300 rows")
        api = api_for(User.objects.create_superuser("boss", "boss@example.com", "pw-boss-1234"))
        asked = timezone.now()
        answer = api.post(f"/api/operations/{operation.pk}/pause/",
                          {"resume_at": (asked + timedelta(seconds=20)).isoformat()}, format="json")
        assert answer.status_code == 202, answer.content
        paused = wait_status(operation.pk, Status.PAUSED)
        assert paused.resume_at is not None and abs((paused.resume_at - asked).total_seconds() - 20) < 1
        assert paused.progress_done < rows
    finally:
        beat.stop()
    worker.stop()  # nothing runs while both are away
    time.sleep(2)
    worker.start()
    worker.wait_ready()
    beat = BeatProcess(subprocess_env, worker_log_dir / "beat-resume-at-2.log",
                       worker_log_dir / "beat-schedule-resume-at").start().wait_reconciling()
    try:
        assert Operation.objects.get(pk=operation.pk).status == Status.PAUSED
        resumed = wait_for(operation.pk, lambda op: op.status != Status.PAUSED, timeout=60, what="the planned resume")
        waited = (timezone.now() - asked).total_seconds()
        assert 20 <= waited <= 50, waited
        assert resumed.status in (Status.RUNNING, Status.COMPLETED)
        done = wait_status(operation.pk, Status.COMPLETED, timeout=90)
    finally:
        beat.stop()
    assert Record.objects.filter(operation_id=operation.pk).count() == rows == done.progress_done
    event = next(e for e in done.events.order_by("at", "id") if e.from_status == "paused")
    assert (event.actor, event.to_status) == ("beat", "running") and event.note.startswith("resumed at the time planned")


def test_resume_at_a_time_and_its_refusals(db):
    from tests.test_edit import paused_arithmetic

    operation = paused_arithmetic()
    at = timezone.now() + timedelta(minutes=5)
    out = io.StringIO()
    call_command("operations", "resume", str(operation.pk), "--at", at.isoformat(), stdout=out)
    planned = Operation.objects.get(pk=operation.pk)
    assert planned.status == Status.PAUSED and planned.resume_at == at
    assert planned.events.order_by("at", "id").last().note.startswith("resume planned: beat resumes it at")
    # beat resumes it only once it is due
    assert services.operations_resume_planned(now=at - timedelta(seconds=1)) == []
    with mock.patch.object(services, "dispatch_on_commit") as dispatched:
        assert services.operations_resume_planned(now=at + timedelta(seconds=1)) == [operation.pk]
    assert dispatched.call_count == 1
    resumed = Operation.objects.get(pk=operation.pk)
    assert resumed.status == Status.RUNNING and resumed.resume_at is None and resumed.run_token == 2

    with pytest.raises(services.TransitionRefused, match="only paused operations can be resumed at a time"):
        services.operation_resume(operation=operation, actor="cli", at=at)
    for bad, why in ((timezone.now() - timedelta(seconds=1), "has passed"),
                     (timezone.now() + timedelta(days=400), "more than a year ahead"),
                     ("tomorrow", "ISO 8601")):
        with pytest.raises(services.InvalidParams, match=why):
            services.operation_pause(operation=operation, actor="cli", resume_at=bad)
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING  # refused: nothing changed
    with pytest.raises(CommandError, match="not both"):
        call_command("operations", "pause", str(operation.pk), "--resume-at", at.isoformat(), "--resume-in", "5")
    # a person's resume in between wins: the plan is dropped
    again = paused_arithmetic()
    services.operation_resume(operation=again, actor="cli", at=at)
    with mock.patch.object(services, "dispatch_on_commit"):
        services.operation_resume(operation=again, actor="cli")
        assert Operation.objects.get(pk=again.pk).resume_at is None
        assert services.operations_resume_planned(now=at + timedelta(seconds=1)) == []


# --- durable sleep ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.minutes
def test_a_30_s_sleep_holds_no_worker_and_wakes_on_time(worker, beat):
    started = services.operation_start(kind="tests.sleepy", params={"seconds": 30}, actor="cli")
    asleep = wait_status(started.pk, Status.WAITING)
    fell_asleep = timezone.now()
    assert asleep.waiting_for == "sleep" and asleep.step_index == 1 and asleep.carry == 2
    wake = asleep.resume_at
    assert wake is not None and 28 <= (wake - asleep.created_at).total_seconds() <= 32
    idle, replies = no_task_is_running()
    assert idle, replies
    with pytest.raises(services.TransitionRefused, match="waits for 'sleep'"):
        services.operation_signal(operation=started, name="sleep", actor="cli")
    done = wait_status(started.pk, Status.COMPLETED, timeout=60)
    late = (done.finished_at - wake).total_seconds()
    assert -0.1 <= late <= 1 + 2, late  # the beat interval (1 s in the tests) and a step
    assert done.result == 3 and (timezone.now() - fell_asleep).total_seconds() >= 25
    assert [c[:2] for c in status_changes(started.pk)] == [
        ("", "running"), ("running", "waiting"), ("waiting", "running"), ("running", "completed")]


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_sleep_paused_and_resumed_wakes_at_the_time_it_first_said_and_one_cancelled_ends(worker, beat):
    sleeper = services.operation_start(kind="tests.sleepy", params={"seconds": 6}, actor="cli")
    wake = wait_status(sleeper.pk, Status.WAITING).resume_at
    paused = services.operation_pause(operation=sleeper, actor="cli")
    assert paused.status == Status.PAUSED and paused.resume_at is None
    time.sleep(1)
    services.operation_resume(operation=sleeper, actor="cli")
    again = wait_status(sleeper.pk, Status.WAITING)
    assert abs((again.resume_at - wake).total_seconds()) < 0.01  # the same wake-up time, not 6 s more
    done = wait_status(sleeper.pk, Status.COMPLETED, timeout=30)
    assert done.result == 3 and (done.finished_at - wake).total_seconds() <= 3

    cancelled = services.operation_start(kind="tests.sleepy", params={"seconds": 60}, actor="cli")
    wait_status(cancelled.pk, Status.WAITING)
    assert services.operation_cancel(operation=cancelled, actor="cli").status == Status.CANCELLED
    time.sleep(2)
    assert Operation.objects.get(pk=cancelled.pk).status == Status.CANCELLED


# --- deadlines and step time limits -----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_an_operation_past_its_deadline_fails_naming_it_and_its_step_is_stopped(worker, beat, tmp_path):
    owner = User.objects.create_user("late", password="pw-late-12345")
    hold = hold_file(tmp_path)
    answer = api_for(owner).post("/api/operations/", {
        "kind": "tests.napping", "params": {"seconds": 3600, "hold": hold}, "deadline": 3},
        format="json")
    assert answer.status_code == 201, answer.content
    pk = answer.json()["id"]
    assert answer.json()["deadline_at"] is not None
    wait_for(pk, lambda op: op.step_index == 1, what="the nap to start")
    failed = wait_status(pk, Status.FAILED, timeout=30)
    assert failed.error.startswith("deadline passed: it had to end by ") and "(3 s after its start)" in failed.error
    took = (failed.finished_at - failed.created_at).total_seconds()
    assert 3 <= took <= 3 + 10, took
    last = failed.events.order_by("at", "id").last()
    assert (last.actor, last.from_status, last.to_status) == ("beat", "running", "failed")
    assert "stopped 1 worker process(es) running its step" in last.note
    # the worker's pool replaced the process: the next operation runs
    after = services.operation_start(kind="arithmetic", params={"steps": 2}, actor="cli")
    wait_status(after.pk, Status.COMPLETED, timeout=30)
    # a retry gets as long again (and, the hold gone, its nap ends at once)
    Path(hold).unlink()  # the fixture's cleanup, early
    retried = services.operation_retry(operation=pk, actor="cli")
    assert retried.deadline_at > timezone.now() + timedelta(seconds=2)
    assert wait_status(pk, Status.COMPLETED, Status.FAILED, timeout=30).status == Status.COMPLETED


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_step_past_its_time_limit_is_stopped_and_the_kind_cancels(worker, beat, tmp_path):
    operation = services.operation_start(kind="tests.napping_limited",
                                         params={"seconds": 3600, "hold": hold_file(tmp_path)}, actor="cli")
    running = wait_for(operation.pk, lambda op: op.step_deadline_index == 1, what="the nap's time limit")
    assert running.step_deadline_at is not None
    cancelled = wait_status(operation.pk, Status.CANCELLED, timeout=30)
    last = cancelled.events.order_by("at", "id").last()
    assert last.actor == "beat" and last.note.startswith("step 2 of 3 ran past its time limit of 1.5 s: it was stopped")
    assert "compensation:" in last.note
    took = (cancelled.finished_at - running.step_deadline_at).total_seconds()
    assert -0.1 <= took <= 10, took  # a beat round, and the workers' answers (TAP_TERMINATE_TIMEOUT)
    # a short nap within the limit completes
    quick = services.operation_start(kind="tests.napping_limited",
                                     params={"seconds": 0.2, "hold": hold_file(tmp_path, "quick")}, actor="cli")
    assert wait_status(quick.pk, Status.COMPLETED, timeout=30).result == 3


def test_a_paused_operation_past_its_deadline_ends_and_a_waiting_one_too(db):
    from tests.test_edit import paused_arithmetic

    paused = paused_arithmetic()
    Operation.objects.filter(pk=paused.pk).update(deadline_at=timezone.now() - timedelta(seconds=1),
                                                  deadline_seconds=60)
    assert services.operations_end_late() == [paused.pk]
    ended = Operation.objects.get(pk=paused.pk)
    assert ended.status == Status.FAILED and ended.error.startswith("deadline passed")
    assert services.operations_end_late() == []  # once
    with pytest.raises(services.InvalidParams, match="deadline is a number of seconds above 0"):
        services.operation_start(kind="arithmetic", actor="cli", deadline=-1)


def test_the_page_pauses_until_a_time_and_plans_a_resume(db):
    from django.test import Client

    from tests.test_edit import paused_arithmetic

    owner = User.objects.create_user("pager", password="pw-pager-12345")
    operation = paused_arithmetic(owner=owner)
    page = Client()
    page.force_login(owner)
    shown = page.get(f"/operations/{operation.pk}/").content.decode()
    assert 'data-testid="resume-at-form"' in shown and 'name="at"' in shown
    when = (timezone.localtime() + timedelta(hours=2)).replace(second=0, microsecond=0)
    answer = page.post(f"/operations/{operation.pk}/resume/", {"at": when.strftime("%Y-%m-%dT%H:%M")}, follow=True)
    planned = Operation.objects.get(pk=operation.pk)
    assert planned.status == Status.PAUSED and planned.resume_at == when
    assert f"Beat resumes it at {when:%Y-%m-%d %H:%M:%S}" in answer.content.decode()
    assert 'data-testid="resume-at"' in answer.content.decode()
    bad = page.post(f"/operations/{operation.pk}/resume/", {"at": "2020-01-01T00:00"}, follow=True)
    assert "has passed; give a time to come" in bad.content.decode()
    with mock.patch.object(services, "dispatch_on_commit"):
        services.operation_resume(operation=operation, actor="cli")
    shown = page.get(f"/operations/{operation.pk}/").content.decode()
    assert 'data-testid="pause-until"' in shown
    page.post(f"/operations/{operation.pk}/pause/", {"resume_at": when.strftime("%Y-%m-%dT%H:%M")})
    asked = Operation.objects.get(pk=operation.pk)
    assert asked.status == Status.PAUSE_REQUESTED and asked.resume_at == when
    # the worker obeys the pause: the planned resume stays
    services.operation_at_pause_point(operation.pk, asked.run_token, Status.PAUSE_REQUESTED, index=1, length=6)
    assert Operation.objects.get(pk=operation.pk).resume_at == when


# --- pause windows ----------------------------------------------------------------------------


def test_window_times_and_refusals():
    from datetime import datetime

    from operations.windows import parse_window, window_closes

    at = lambda h, m=0: timezone.make_aware(datetime(2026, 12, 1, h, m))  # noqa: E731
    assert window_closes("08:00-18:00", at(7, 59)) is None
    assert window_closes("08:00-18:00", at(8)) == at(18)
    assert window_closes("08:00-18:00", at(18)) is None
    assert window_closes("22:00-06:00", at(23)) == at(6) + timedelta(days=1)  # wraps midnight
    assert window_closes("22:00-06:00", at(3)) == at(6)
    assert window_closes("22:00-06:00", at(12)) is None
    assert window_closes("08:00-08:00", at(8)) is None  # empty: it never opens
    for bad in ("8-18", "08:00-24:00", "", None):
        with pytest.raises(ValueError, match="pause window"):
            parse_window(bad)


def test_beat_pauses_a_running_operation_when_its_window_opens_and_it_resumes_when_it_closes(db):
    from datetime import datetime

    inside = timezone.make_aware(datetime(2026, 12, 1, 9, 30))
    with mock.patch.object(services, "dispatch_on_commit"):
        own = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli", pause_window="09:00-10:00")
        other = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    with pytest.raises(services.InvalidParams, match="HH:MM-HH:MM"):
        services.operation_start(kind="arithmetic", actor="cli", pause_window="morning")
    assert services.operations_keep_windows(now=inside - timedelta(hours=1)) == []
    assert services.operations_keep_windows(now=inside) == [own.pk]
    asked = Operation.objects.get(pk=own.pk)
    closes = timezone.make_aware(datetime(2026, 12, 1, 10, 0))
    assert (asked.status, asked.resume_at, asked.events.last().actor) == (Status.PAUSE_REQUESTED, closes, "beat")
    assert asked.events.last().note.startswith("pause window 09:00-10:00: it pauses at its next pause point")
    assert Operation.objects.get(pk=other.pk).status == Status.RUNNING
    services.operation_at_pause_point(own.pk, 1, Status.PAUSE_REQUESTED, index=0, length=3)
    with mock.patch.object(services, "dispatch_on_commit"):
        assert services.operations_resume_planned(now=closes + timedelta(seconds=1)) == [own.pk]
    assert Operation.objects.get(pk=own.pk).status == Status.RUNNING
    # a kind's window applies to every operation of the kind
    windowed = dataclasses.replace(get_kind("arithmetic"), pause_window="09:00-10:00")
    with mock.patch.dict(catalogue.KINDS, {"arithmetic": windowed}):
        assert sorted(services.operations_keep_windows(now=inside)) == [own.pk, other.pk]
