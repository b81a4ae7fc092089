"""The engine's rules without a worker: state table, plan validation, services' conditional updates."""

import datetime
import errno

import pytest
from celery import chain
from django.contrib.auth.models import User
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from operations import engine, services
from operations.contrib.demo.kinds.arithmetic import add, expected_result, mult
from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.outages import is_outage
from operations.states import Status, legal_verbs, refusal_message
from operations.workflow import WorkflowError, build_plan, step, validate_plan
from tests.support.kinds import write_rows


def test_refusal_message_says_why():
    assert refusal_message(12, "completed", "pause") == (
        "operation 12 is completed; only running or waiting operations can be paused"
    )
    assert refusal_message(3, "running", "retry") == "operation 3 is running; only failed operations can be retried"


def test_legal_verbs_follow_the_state_table():
    assert legal_verbs(Status.RUNNING) == ["pause", "cancel", "terminate"]
    assert legal_verbs(Status.PAUSE_REQUESTED) == ["resume", "cancel", "terminate"]
    assert legal_verbs(Status.CANCEL_REQUESTED) == ["terminate"]
    assert legal_verbs(Status.PAUSED) == ["resume", "cancel"]
    assert legal_verbs(Status.FAILED) == ["cancel", "retry"]
    assert legal_verbs(Status.INTERRUPTED) == ["resume", "cancel"]
    assert legal_verbs(Status.WAITING) == ["approve", "reject", "pause", "cancel"]
    assert legal_verbs(Status.COMPLETED) == [] and legal_verbs(Status.CANCELLED) == []


def test_expected_result_is_the_classic_chain():
    assert expected_result(4, 2) == (4 + 6) * 16
    assert expected_result(4, 3) == (4 + 6) * 16 + 6


# --- plans ------------------------------------------------------------------------------------


def test_plan_stores_signature_dicts_and_is_small_for_1000_steps():
    import json

    plan = build_plan(chain(add.s(0, 1), *[add.s(1) for _ in range(999)]))
    assert plan["steps"][0] == {"task": "operations.add", "args": [0, 1], "kwargs": {}}
    assert plan["steps"][1] == {"task": "operations.add", "args": [1], "kwargs": {}}
    assert len(json.dumps(plan)) <= 150 * 1024


@pytest.mark.parametrize("entry, message", [
    ({"task": "os.system", "args": ["rm -rf /"]}, "names 'os.system', which is not a registered operation step"),
    ({"task": "celery.backend_cleanup", "args": []}, "a Celery built-in task, not an operation step"),
    ({"task": "operations.add", "args": [1, 2, 3, 4]}, "arguments do not fit the step"),
    ({"task": "operations.add", "args": [1], "kwargs": {"shell": True}}, "arguments do not fit the step"),
    ({"task": "operations.add", "args": [1], "link": "x"}, "unsupported keys: link"),
    ({"task": "operations.add", "args": [1], "options": {"countdown": 5}}, "unsupported options"),
])
def test_validate_plan_refuses_what_is_not_a_registered_step(entry, message):
    plan = build_plan(chain(add.s(4, 6), mult.s(16)))
    plan["steps"][1] = entry
    with pytest.raises(WorkflowError, match=message):
        validate_plan(plan)


def test_steps_cannot_claim_the_celery_namespace():
    with pytest.raises(WorkflowError, match="reserved for Celery"):
        step(name="celery.sneaky")(lambda: None)


def test_only_task_signatures_and_groups_can_be_steps():
    with pytest.raises(WorkflowError, match="only task signatures and groups of them can be steps"):
        build_plan([add.s(1, 2), chain(add.s(1, 2), add.s(3))])


def test_a_group_is_one_step_whose_members_run_in_parallel():
    from celery import group

    plan = build_plan(chain(add.s(1, 2), group(mult.s(2), mult.s(3)), add.s(4, 5).set(immutable=True)))
    assert [list(entry) for entry in plan["steps"]] == [["task", "args", "kwargs"], ["group"],
                                                        ["task", "args", "kwargs", "immutable"]]
    assert plan["steps"][1]["group"][1] == {"task": "operations.mult", "args": [3], "kwargs": {}}
    plan["steps"][1]["group"][0]["task"] = "os.system"
    with pytest.raises(WorkflowError, match=r"steps\[1\]\.group\[0\] names 'os.system'"):
        validate_plan(plan)


# --- start and parameters ---------------------------------------------------------------------


@pytest.mark.django_db
def test_start_with_bad_params_names_the_field_and_writes_nothing():
    with pytest.raises(services.InvalidParams) as caught:
        services.operation_start(kind="arithmetic", params={"steps": -1, "x": "four"}, actor="cli")
    assert "Ensure this value is greater than or equal to 1." in caught.value.errors["steps"]
    assert "Enter a whole number." in caught.value.errors["x"]
    with pytest.raises(services.InvalidParams, match="unknown parameter\\(s\\) for arithmetic: colour"):
        services.operation_start(kind="arithmetic", params={"colour": "red"}, actor="cli")
    with pytest.raises(services.InvalidParams, match="unknown operation kind 'nope'; known kinds: "):
        services.operation_start(kind="nope", actor="cli")
    assert Operation.objects.count() == 0


@pytest.mark.django_db
def test_start_writes_the_plan_an_event_and_dispatches_on_commit(django_capture_on_commit_callbacks):
    owner = User.objects.create_user("ann")
    with django_capture_on_commit_callbacks() as callbacks:
        operation = services.operation_start(kind="arithmetic", params={"steps": 3}, owner=owner, actor=owner)
    assert len(callbacks) == 1  # one message, published only after the commit
    operation.refresh_from_db()
    assert operation.status == Status.RUNNING and operation.run_token == 1
    assert operation.params == {"x": 4, "steps": 3, "delay": 0.0}
    assert [s["task"] for s in operation.steps] == ["operations.add", "operations.mult", "operations.add"]
    assert operation.progress_total == 3
    event = operation.events.get()
    assert (event.actor, event.via, event.from_status, event.to_status) == ("ann", "web", "", "running")


# --- transitions without a worker -------------------------------------------------------------


def _running(kind="arithmetic", params=None):
    return services.operation_start(kind=kind, params=params or {"steps": 3}, actor="cli")


@pytest.mark.django_db
def test_pause_then_worker_obeys_then_resume_takes_a_new_token(django_capture_on_commit_callbacks):
    operation = _running()
    assert services.operation_pause(operation=operation, actor="cli").status == Status.PAUSE_REQUESTED
    assert services.operation_at_pause_point(operation.pk, 1, Status.PAUSE_REQUESTED, index=1, length=3)
    assert Operation.objects.get(pk=operation.pk).status == Status.PAUSED
    with django_capture_on_commit_callbacks() as callbacks:
        resumed = services.operation_resume(operation=operation, actor="cli")
    assert resumed.status == Status.RUNNING and resumed.run_token == 2 and len(callbacks) == 1


@pytest.mark.django_db
def test_withdrawing_a_pause_dispatches_nothing(django_capture_on_commit_callbacks):
    operation = _running()
    services.operation_pause(operation=operation, actor="cli")
    with django_capture_on_commit_callbacks() as callbacks:
        resumed = services.operation_resume(operation=operation, actor="cli")
    assert resumed.status == Status.RUNNING and resumed.run_token == 1 and callbacks == []


@pytest.mark.django_db
def test_refused_transitions_raise_with_the_reason():
    operation = _running()
    Operation.objects.filter(pk=operation.pk).update(status=Status.COMPLETED)
    with pytest.raises(services.TransitionRefused, match=f"operation {operation.pk} is completed; only running "
                                                         "or waiting operations can be paused"):
        services.operation_pause(operation=operation, actor="cli")
    with pytest.raises(services.TransitionRefused, match="only failed operations can be retried"):
        services.operation_retry(operation=operation, actor="cli")
    with pytest.raises(services.OperationNotFound):
        services.operation_pause(operation=999999, actor="cli")


@pytest.mark.django_db
def test_worker_writes_are_fenced_by_token_and_fence():
    operation = _running()
    claim = services.step_claim(operation.pk, 1)
    assert claim.status == Status.RUNNING and claim.step_index == 0 and claim.fence == 0
    assert services.step_claim(operation.pk, 2) is None  # a token from the future: stale
    assert services.step_advance(operation.pk, 1, 0, 0, 10, count_step=True) == Status.RUNNING
    with pytest.raises(services.Fenced):  # the same step again (a duplicate delivery)
        services.step_advance(operation.pk, 1, 0, 0, 10, count_step=True)
    with pytest.raises(services.Fenced):  # an old run
        services.step_advance(operation.pk, 0, 1, 1, 160, count_step=True)
    operation.refresh_from_db()
    assert (operation.step_index, operation.carry, operation.fence, operation.progress_done) == (1, 10, 1, 1)


@pytest.mark.django_db
def test_cancel_of_a_paused_operation_compensates_at_once_and_only_once():
    operation = _running(kind="records", params={"steps": 5})
    write_rows(operation.pk, range(3))
    services.operation_pause(operation=operation, actor="cli")
    services.operation_at_pause_point(operation.pk, 1, Status.PAUSE_REQUESTED, index=3, length=5)
    cancelled = services.operation_cancel(operation=operation, actor="cli")
    assert cancelled.status == Status.CANCELLED and cancelled.finished_at is not None
    assert Record.objects.filter(operation=operation).count() == 0
    assert list(cancelled.events.filter(to_status="cancelled").values_list("note", flat=True)) == [
        "compensation: removed 3 record(s)"
    ]
    with pytest.raises(services.TransitionRefused, match="is cancelled; only running, pause requested, paused, "
                                                         "failed, interrupted or waiting operations can be cancelled"):
        services.operation_cancel(operation=operation, actor="cli")


@pytest.mark.django_db
def test_reconcile_interrupts_only_silent_operations():
    silent, alive = _running(), _running()
    paused = _running()
    Operation.objects.filter(pk__in=[silent.pk, paused.pk]).update(
        heartbeat_at=timezone.now() - datetime.timedelta(seconds=3600))
    Operation.objects.filter(pk=paused.pk).update(status=Status.PAUSED)
    assert services.operations_reconcile(lease=60) == [silent.pk]
    assert Operation.objects.get(pk=silent.pk).status == Status.INTERRUPTED
    assert Operation.objects.get(pk=alive.pk).status == Status.RUNNING
    assert Operation.objects.get(pk=paused.pk).status == Status.PAUSED
    event = Operation.objects.get(pk=silent.pk).events.last()
    assert (event.actor, event.from_status, event.to_status) == ("beat", "running", "interrupted")


@pytest.mark.django_db
def test_resume_of_an_edited_workflow_is_refused_with_an_event_and_no_dispatch(django_capture_on_commit_callbacks):
    operation = _running()
    workflow = dict(operation.workflow)
    workflow["steps"] = [*workflow["steps"][:1], {"task": "celery.chord_unlock", "args": []}, *workflow["steps"][2:]]
    Operation.objects.filter(pk=operation.pk).update(status=Status.PAUSED, workflow=workflow)
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(services.TransitionRefused, match="steps\\[1\\] names 'celery.chord_unlock', a Celery built-in"):
            services.operation_resume(operation=operation, actor="cli")
    assert callbacks == []
    operation.refresh_from_db()
    assert operation.status == Status.PAUSED and operation.run_token == 1
    assert operation.events.last().note.startswith("resume refused: steps[1] names 'celery.chord_unlock'")


@pytest.mark.parametrize("error, outage", [
    (OperationalError("database or disk is full"), True),
    (OperationalError("disk I/O error"), True),
    (OperationalError("database is locked"), True),
    (InterfaceError("connection already closed"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OperationalError("no such table: operations_demo_record"), False),  # the step's own bug
    (ValueError("bad row"), False),
    (OSError(errno.ENOENT, "No such file or directory"), False),
])
def test_an_outage_is_told_from_a_step_error(error, outage):
    assert is_outage(error) is outage
    try:  # what a step sees: its error raised while handling the driver's
        try:
            raise error
        except Exception as cause:
            raise RuntimeError("while storing a chunk") from cause
    except RuntimeError as wrapped:
        assert is_outage(wrapped) is outage


@pytest.mark.django_db
def test_a_step_stopped_by_an_outage_is_left_to_the_lease_not_failed_or_retried():
    """The write that would fail it is as likely to fail; the reconciler interrupts it instead."""
    operation = _running(kind="records", params={"steps": 2})
    run = engine.Run(operation.pk, operation.run_token)

    class Task:
        def retry(self, **kwargs):
            raise AssertionError("an outage must not use the step's retries")

    engine._retry_or_fail(Task(), run, 0, {}, None, 0, OperationalError("database or disk is full"), "step 1 of 2")
    operation.refresh_from_db()
    assert operation.status == Status.RUNNING and operation.error == ""
    assert not operation.events.filter(note__contains="failed").exists()


@pytest.mark.parametrize("sent, kept", [
    ("rows.csv", "rows.csv"),
    ("../../etc/passwd.csv", "passwd.csv"),
    ("C:\\Users\\me\\Desktop\\rows.csv", "rows.csv"),
    ("a b\u00e9\u202e\x01.csv", "a_be.csv"),
    ("r" * 300 + ".csv", "r" * 80 + ".csv"),
    ("", "upload"),
    ("....", "upload"),
    ("données.tar.gz", "donnees_tar.gz"),
])
def test_an_upload_is_stored_under_a_safe_name(sent, kept):
    from operations.uploads import safe_name

    assert safe_name(sent) == kept


@pytest.mark.parametrize("value, depth", [(1, 0), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[[[]]]]], 5)])
def test_nesting_depth_is_counted_without_recursing(value, depth):
    from operations.jsonlimits import nesting_depth

    assert nesting_depth(value) == depth
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep) == 100_001


@pytest.mark.django_db
def test_a_users_quota_limits_unfinished_operations_and_work_and_staff_may_set_it(settings):
    from operations.exceptions import QuotaExceeded, http_status_for
    from operations.models import OperationQuota

    user = User.objects.create_user("busy")
    staff = User.objects.create_user("boss", is_staff=True)
    settings.TAP_USER_MAX_UNFINISHED, settings.TAP_USER_MAX_WORK_SECONDS = 2, 100
    start = lambda owner, **params: services.operation_start(kind="arithmetic", params=params, owner=owner, actor="cli")  # noqa: E731
    start(user, steps=10, delay=10)  # 100 s: at the limit
    with pytest.raises(QuotaExceeded, match="asks for 1,000 worker-seconds; your quota is 100 per operation") as refused:
        start(user, steps=100, delay=10)
    assert http_status_for(refused.value) == 409
    start(user, steps=3)
    with pytest.raises(QuotaExceeded, match="you have 2 unfinished operation"):
        start(user, steps=3)
    assert Operation.objects.filter(owner=user).count() == 2  # nothing half-written
    start(staff, steps=1000, delay=60)  # staff have no quota
    OperationQuota.objects.create(user=user, max_unfinished=5, max_work_seconds=None)  # a staff member raised it
    settings.TAP_USER_MAX_WORK_SECONDS = None
    start(user, steps=1000, delay=60)
    services.operation_cancel(operation=Operation.objects.filter(owner=user).first(), actor="cli")
    assert Operation.objects.filter(owner=user).count() == 3


@pytest.mark.django_db
def test_a_claim_reads_and_refreshes_the_heartbeat_only_when_it_is_older_than_a_beat():
    """The advance before a step wrote the heartbeat a moment ago: a claim writes only after its
    message waited longer than a heartbeat interval (a write per step costs a commit), or when it
    is the run's first (it records that a worker took the run: ``claimed_run``)."""
    operation = _running()
    fresh = timezone.now() - datetime.timedelta(seconds=0.2)
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=fresh)
    assert Operation.objects.get(pk=operation.pk).claimed_run is None
    services.step_claim(operation.pk, operation.run_token)  # the run's first claim: written
    assert Operation.objects.get(pk=operation.pk).claimed_run == operation.run_token
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=fresh)
    claim = services.step_claim(operation.pk, operation.run_token)
    assert claim.status == Status.RUNNING and claim.step_index == 0
    assert Operation.objects.get(pk=operation.pk).heartbeat_at == fresh  # read, not written
    old = timezone.now() - datetime.timedelta(seconds=60)
    Operation.objects.filter(pk=operation.pk).update(heartbeat_at=old)
    assert services.step_claim(operation.pk, operation.run_token) is not None
    assert Operation.objects.get(pk=operation.pk).heartbeat_at > timezone.now() - datetime.timedelta(seconds=5)
    assert services.step_claim(operation.pk, operation.run_token + 1) is None  # another run's message
