"""Recovery that needs no person: beat's reconciler, the kinds' recovery policy, the poison limit.

The policy's arithmetic is checked on the services directly; a real worker and a real beat then
show it end to end: a step that kills its pool process every time ends ``failed``, saying so.
"""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from operations import services
from operations.catalogue import Recovery
from operations.models import Operation
from operations.states import Status
from tests.support.ops import status_changes, wait_for

HOUR_AGO = datetime.timedelta(hours=1)


def _silent(kind="arithmetic", params=None, **fields):
    """An operation whose worker took its message, then went silent an hour ago."""
    operation = services.operation_start(kind=kind, params=params or {"steps": 3}, actor="cli")
    fields = {"claimed_run": operation.run_token, **fields}
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=timezone.now() - HOUR_AGO, **fields)
    return operation.pk


def _row(operation_id):
    return Operation.objects.get(pk=operation_id)


# --- the policy ---------------------------------------------------------------------------------


def test_the_policy_takes_the_settings_where_the_kind_says_nothing(settings):
    settings.TAP_AUTO_RESUME, settings.TAP_AUTO_RESUME_ATTEMPTS = True, 7
    settings.TAP_AUTO_RESUME_BACKOFF, settings.TAP_POISON_LIMIT = 2, 4
    assert Recovery().resolved() == Recovery(auto_resume=True, attempts=7, backoff=2, poison_limit=4)
    assert Recovery(auto_resume=False, poison_limit=2).resolved() == Recovery(False, 7, 2, 2)
    policy = Recovery(backoff=5).resolved()
    assert [policy.delay(n) for n in (1, 2, 3, 10)] == [5, 10, 20, 600]  # doubling, at most 10 min


@pytest.mark.django_db
def test_reconcile_plans_an_automatic_resume_for_kinds_that_want_one(settings):
    settings.TAP_AUTO_RESUME, settings.TAP_AUTO_RESUME_BACKOFF = False, 5
    automatic = _silent("arithmetic")  # a demo kind: recovery on
    manual = _silent("tests.records_manual", {"steps": 2})  # no policy of its own: the settings (off)
    before = timezone.now()
    assert sorted(services.operations_reconcile(lease=60)) == sorted([automatic, manual])
    auto = _row(automatic)
    assert auto.status == Status.INTERRUPTED
    assert before + datetime.timedelta(seconds=4) < auto.resume_at < timezone.now() + datetime.timedelta(seconds=6)
    assert "automatic resume 1 of 5" in auto.events.last().note
    assert _row(manual).resume_at is None and "beat resumes" not in _row(manual).events.last().note


@pytest.mark.django_db
def test_recover_resumes_what_is_due_once_as_beat(django_capture_on_commit_callbacks):
    operation_id = _silent()
    services.operations_reconcile(lease=60)
    assert services.operations_recover() == []  # not due yet
    later = timezone.now() + datetime.timedelta(seconds=10)
    with django_capture_on_commit_callbacks() as dispatches:
        assert services.operations_recover(now=later) == [operation_id]
    assert len(dispatches) == 1  # the head step, on the new run token
    row = _row(operation_id)
    assert (row.status, row.run_token, row.auto_resumes, row.resume_at) == (Status.RUNNING, 2, 1, None)
    event = row.events.last()
    assert (event.actor, event.from_status, event.to_status) == ("beat", "interrupted", "running")
    assert event.note.startswith("automatic resume 1 of 5: run 2 dispatched")
    assert services.operations_recover(now=later) == []  # nothing twice


@pytest.mark.django_db
def test_a_cancel_asked_before_the_interruption_is_carried_out_not_resumed_away(django_capture_on_commit_callbacks):
    operation_id = _silent()
    services.operation_cancel(operation=operation_id, actor="cli")  # running → cancel_requested
    services.operations_reconcile(lease=60)
    assert _row(operation_id).previous_status == Status.CANCEL_REQUESTED
    with django_capture_on_commit_callbacks() as on_commit:
        assert services.operations_recover(now=timezone.now() + datetime.timedelta(hours=1)) == [operation_id]
    assert _row(operation_id).status == Status.CANCELLED
    assert [getattr(f, "func", f).__name__ for f in on_commit] == ["discard_for"]  # no run dispatched
    event = _row(operation_id).events.last()
    assert (event.actor, event.from_status, event.to_status) == ("beat", "interrupted", "cancelled")
    assert event.note.startswith("compensation:")


@pytest.mark.django_db
def test_a_pause_asked_before_the_interruption_still_holds_after_the_automatic_resume():
    operation_id = _silent()
    services.operation_pause(operation=operation_id, actor="cli")  # running → pause_requested
    services.operations_reconcile(lease=60)
    assert services.operations_recover(now=timezone.now() + datetime.timedelta(hours=1)) == [operation_id]
    row = _row(operation_id)
    assert (row.status, row.run_token) == (Status.PAUSE_REQUESTED, 2)
    assert [(e.actor, e.to_status) for e in row.events.order_by("id")][-2:] == [("beat", "running"),
                                                                                ("beat", "pause_requested")]


@pytest.mark.django_db
def test_a_persons_action_in_between_wins_over_the_planned_resume():
    operation_id = _silent()
    services.operations_reconcile(lease=60)
    services.operation_cancel(operation=operation_id, actor="cli")
    assert services.operations_recover(now=timezone.now() + datetime.timedelta(hours=1)) == []
    assert _row(operation_id).status == Status.CANCELLED and _row(operation_id).resume_at is None


@pytest.mark.django_db
def test_automatic_resumes_stop_after_the_attempts_without_progress_and_start_again_after_progress(settings):
    operation_id = _silent(auto_resumes=5, recovered_fence=0)  # 5 resumes, none got further
    services.operations_reconcile(lease=60)
    row = _row(operation_id)
    assert row.resume_at is None and "5 automatic resume(s) in a row did not get it further" in row.events.last().note
    # Resumed by a person, it got further (fence 2), then went silent again: the count starts over.
    services.operation_resume(operation=operation_id, actor="cli")
    Operation.objects.filter(pk=operation_id).update(fence=2, heartbeat_at=timezone.now() - HOUR_AGO)
    services.operations_reconcile(lease=60)
    row = _row(operation_id)
    assert row.auto_resumes == 0 and row.resume_at is not None


@pytest.mark.django_db
def test_reconcile_fails_an_operation_whose_step_lost_as_many_workers_as_the_poison_limit():
    operation_id = _silent(deaths=2, death_fence=0)  # demo kinds: poison limit 3 (TAP_POISON_LIMIT)
    services.operations_reconcile(lease=60)  # a third worker gone silent at the same place
    row = _row(operation_id)
    assert row.status == Status.FAILED and row.resume_at is None
    assert "step 1 lost its worker 3 time(s) without getting any further" in row.error
    assert status_changes(operation_id)[-2:] == [("running", "interrupted", "beat"),
                                                 ("interrupted", "failed", "beat")]
    # A person who retries it starts the count afresh.
    services.operation_retry(operation=operation_id, actor="cli")
    assert _row(operation_id).deaths == 0


@pytest.mark.django_db
def test_a_run_whose_message_no_worker_took_lost_no_worker():
    """Silent before any worker took its message (no worker consuming the queue yet, the
    message lost in the broker): interrupted and resumed, but no nearer the poison limit."""
    operation_id = _silent(deaths=2, death_fence=0, claimed_run=None)  # one more death would fail it
    services.operations_reconcile(lease=60)
    row = _row(operation_id)
    assert (row.status, row.deaths, row.death_fence) == (Status.INTERRUPTED, 2, 0)
    assert "no worker took its message" in row.events.last().note and row.resume_at is not None
    assert services.operations_recover(now=timezone.now() + HOUR_AGO) == [operation_id]
    # The resumed run's first message is taken: its claim records it; the next claim only reads.
    claim = services.step_claim(operation_id, 2)
    assert claim.deaths == 2 and _row(operation_id).claimed_run == 2
    with CaptureQueriesContext(connection) as statements:
        assert services.step_claim(operation_id, 2) == claim
    assert len(statements) == 1
    Operation.objects.filter(pk=operation_id).update(heartbeat_at=timezone.now() - HOUR_AGO)
    services.operations_reconcile(lease=60)  # taken, then silent: a third worker lost there
    row = _row(operation_id)
    assert (row.status, row.deaths) == (Status.FAILED, 3) and "lost its worker 3 time(s)" in row.error
    # A worker's pool process that died before it took a message lost nothing either.
    other = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    assert services.step_worker_lost(other.pk, 1, 0) and _row(other.pk).deaths == 0


# --- the count of deaths --------------------------------------------------------------------------


@pytest.mark.django_db
def test_deaths_count_workers_lost_at_the_same_place_and_start_over_when_it_gets_further():
    operation = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    claim = lambda: services.step_claim(operation.pk, 1)  # noqa: E731
    assert claim().deaths == 0
    assert services.step_worker_lost(operation.pk, 1, 0) and services.step_worker_lost(operation.pk, 1, 0)
    assert claim().deaths == 2  # two pool processes died running step 0
    assert not services.step_worker_lost(operation.pk, 1, 1)  # not the head step: a stale report
    assert not services.step_worker_lost(operation.pk, 2, 0)  # another run's: stale too
    services.step_advance(operation.pk, 1, claim().fence, 0, 10, count_step=True)
    assert claim().deaths == 0  # it got further: those deaths were at another place
    services.step_worker_lost(operation.pk, 1, 1)
    assert claim().deaths == 1  # counted afresh


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_step_that_kills_its_worker_every_time_ends_failed_after_the_poison_limit(worker, beat):
    """Each time the worker's main process counts the lost pool process and the broker gives the
    message back (reject_on_worker_lost); after the third death the step is not started again."""
    operation = services.operation_start(kind="killer", params={}, actor="cli")
    failed = wait_for(operation.pk, lambda op: op.status == Status.FAILED, timeout=120, what="failed by the poison limit")
    assert "step 2 lost its worker 3 time(s) without getting any further" in failed.error
    assert "poison limit 3" in failed.error
    assert failed.step_index == 1 and failed.deaths == 3
    people = [actor for _, _, actor in status_changes(operation.pk) if actor not in ("worker", "beat", "cli")]
    assert people == []


@pytest.mark.integration
@pytest.mark.backends("pg-redis")
def test_a_failed_step_whose_idle_connection_the_server_dropped_is_left_to_the_reconciler(worker):
    """The engine asks whether its run still owns the operation on the step's thread's connection,
    which the server dropped meanwhile (the step's own threads met the outage): it asks again on a
    new connection and leaves the operation to beat, instead of the task dying with a traceback."""
    import time

    logged_from = len(worker.log_text())
    operation = services.operation_start(kind="tests.connection_lost", params={}, actor="cli")
    said = (f"operation {operation.pk}: step 2 of 3 (tests.lose_connection_and_fail) stopped: the database is "
            f"unavailable (OperationalError: a part's connection was lost")
    deadline = time.monotonic() + 30
    while said not in (logged := worker.log_text()[logged_from:]):
        assert time.monotonic() < deadline, logged[-3000:]
        time.sleep(0.1)
    assert "raised unexpected" not in logged and "Traceback" not in logged, logged[-3000:]
    row = _row(operation.pk)
    assert (row.status, row.step_index, row.error) == (Status.RUNNING, 1, "")  # for beat: neither failed nor moved


# --- staleness, on every face -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_silent_operation_says_so_on_every_face_and_shows_no_rate(settings):
    from io import StringIO

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    settings.TAP_HEARTBEAT_LEASE = 120  # a step reports every 30 s; silent after 60 s
    boss = User.objects.create_superuser("boss", password="pw-boss-12345")
    operation = services.operation_start(kind="arithmetic", params={"steps": 4}, owner=boss, actor=boss)
    Operation.objects.filter(pk=operation.pk).update(progress_done=2)
    client = Client()
    client.force_login(boss)

    fresh = client.get(f"/operations/{operation.pk}/progress/").content.decode()
    assert 'data-testid="silence"' not in fresh and "Last sign of life" in fresh

    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=timezone.now() - datetime.timedelta(seconds=95))
    page = client.get(f"/operations/{operation.pk}/progress/").content.decode()
    assert 'data-testid="silence"' in page and "No sign of life from a worker for 1 min 35 s" in page
    assert "stalled" in page and "left" not in page and "steps/s" not in page  # no rate, no ETA
    api = client.get(f"/api/operations/{operation.pk}/").json()
    assert 94 < api["heartbeat_age"] < 100 and api["silence"].startswith("No sign of life")
    admin = client.get("/admin/operations/operation/").content.decode()
    assert "⚠ 1 min 3" in admin and "tap-silent" in admin
    out = StringIO()
    call_command("operations", "show", str(operation.pk), stdout=out)
    assert "heartbeat: 1 min 3" in out.getvalue() and "warning:  No sign of life" in out.getvalue()
