"""Waiting for a person or a signal (issue 14): a wait step parks the operation in *Waiting*,
holding no worker; approve / signal wake it with a payload, reject ends it, a timeout applies."""

import time
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from operations import services
from operations.models import Operation
from operations.states import Status, legal_verbs
from tapproject.celery import app
from tests.support.ops import status_changes, wait_status


def start(owner=None, **params):
    return services.operation_start(kind="gated", params=params, owner=owner, actor="cli")


def no_task_is_running():
    """Every worker answers that it runs no task (the wait holds none)."""
    replies = app.control.inspect(timeout=3).active() or {}
    return bool(replies) and all(tasks == [] for tasks in replies.values()), replies


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_waiting_operation_holds_no_worker_and_approve_goes_on_with_the_payload(worker):
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    operation = start(owner=owner)
    waiting = wait_status(operation.pk, Status.WAITING)
    assert (waiting.waiting_for, waiting.step_index, waiting.carry) == ("approval", 1, 2)
    idle, replies = no_task_is_running()
    assert idle, replies
    assert legal_verbs(Status.WAITING) == ["approve", "reject", "pause", "cancel"]

    page = Client()
    page.force_login(owner)
    shown = page.get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert ">Waiting<" in shown and ">Approve</button>" in shown and ">Reject</button>" in shown
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    change = admin.get(reverse("admin:operations_operation_change", args=[operation.pk])).content.decode()
    assert 'data-verb="approve"' in change and 'data-verb="reject"' in change and "Waiting" in change

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    wrong = api.post(f"/api/operations/{operation.pk}/signal/", {"name": "shipped", "payload": 1}, format="json")
    assert wrong.status_code == 409 and wrong.json()["detail"] == f"operation {operation.pk} waits for 'approval', not 'shipped'"
    woke = api.post(f"/api/operations/{operation.pk}/approve/", {"payload": 40}, format="json")
    assert woke.status_code == 202, woke.content
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == 41  # the payload was carried into the last step
    assert [c[:2] for c in status_changes(operation.pk)] == [
        ("", "running"), ("running", "waiting"), ("waiting", "running"), ("running", "completed")]


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_signal_reject_timeout_and_pause_while_waiting(worker):
    signalled = start(name="shipped")
    wait_status(signalled.pk, Status.WAITING)
    services.operation_signal(operation=signalled, name="shipped", actor="cli")  # no payload: 2 goes on
    assert wait_status(signalled.pk, Status.COMPLETED).result == 3

    rejected = start()
    wait_status(rejected.pk, Status.WAITING)
    assert services.operation_reject(operation=rejected, actor="cli").status == Status.CANCELLED
    assert rejected.events.order_by("at", "id").last().note.startswith("rejected; compensation:")

    paused = start()
    wait_status(paused.pk, Status.WAITING)
    assert services.operation_pause(operation=paused, actor="cli").status == Status.PAUSED
    with pytest.raises(services.TransitionRefused, match="only waiting operations can be approved"):
        services.operation_approve(operation=paused, actor="cli")
    services.operation_resume(operation=paused, actor="cli")
    assert wait_status(paused.pk, Status.WAITING).run_token == 2  # a resume waits again
    assert services.operation_cancel(operation=paused, actor="cli").status == Status.CANCELLED

    for outcome, ends in (("fail", Status.FAILED), ("continue", Status.COMPLETED), ("cancel", Status.CANCELLED)):
        timed = start(timeout=0.5, on_timeout=outcome)
        waiting = wait_status(timed.pk, Status.WAITING)
        assert waiting.resume_at is not None
        assert services.operations_expire_waits() == []  # not yet due
        assert timed.pk in services.operations_expire_waits(now=timezone.now() + timedelta(seconds=1))
        finished = wait_status(timed.pk, ends)
        if outcome == "fail":
            assert finished.error == "step 2 of 3: the wait for 'approval' timed out"
            services.operation_retry(operation=timed, actor="cli")  # a retry waits again
            wait_status(timed.pk, Status.WAITING)
            services.operation_approve(operation=timed, actor="cli", payload=9)
            assert wait_status(timed.pk, Status.COMPLETED).result == 10
        if outcome == "continue":
            assert finished.result == 3


@pytest.mark.django_db(transaction=True)
def test_approve_and_signal_are_refused_unless_waiting():
    with mock.patch.object(services, "dispatch_on_commit"):  # no worker moves it to its wait
        operation = start()
    for call in (lambda: services.operation_approve(operation=operation, actor="cli"),
                 lambda: services.operation_signal(operation=operation, name="approval", actor="cli"),
                 lambda: services.operation_reject(operation=operation, actor="cli")):
        with pytest.raises(services.TransitionRefused, match=f"operation {operation.pk} is running; only waiting"):
            call()
    with pytest.raises(services.OperationNotFound):
        services.operation_approve(operation=999999, actor="cli")
    time.sleep(0)  # nothing else: the operation stays as it was
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_the_reviewed_import_waits_for_approval_then_publishes_or_is_rejected(worker):
    from pathlib import Path

    from django.conf import settings

    from operations.contrib.demo.files import write_demo_csv
    from operations.contrib.demo.models import Record

    write_demo_csv(Path(settings.TAP_CSV_DIR) / "review-me.csv", rows=500)
    approved = services.operation_start(kind="reviewed_import", params={"path": "review-me.csv"}, actor="cli")
    rejected = services.operation_start(kind="reviewed_import", params={"path": "review-me.csv"}, actor="cli")
    for operation in (approved, rejected):
        waiting = wait_status(operation.pk, Status.WAITING)
        assert waiting.carry == {"rows": 500, "file": "review-me.csv"}
        assert Record.objects.filter(operation_id=operation.pk).count() == 500
    services.operation_approve(operation=approved, actor="cli", payload={"by": "ana", "note": "looks right"})
    done = wait_status(approved.pk, Status.COMPLETED)
    assert done.result["rows"] == 500 and done.result["approval"] == {"by": "ana", "note": "looks right"}
    services.operation_reject(operation=rejected, actor="cli")
    assert Record.objects.filter(operation_id=rejected.pk).count() == 0
