"""Terminate (issue 14): cancel now, stopping the worker process of a step that never reaches a
pause point; its uncommitted writes roll back, compensation removes the rest."""

import time
from unittest import mock

import psutil
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from operations import services
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.states import Status, legal_verbs
from tests.support.ops import wait_for, wait_status


def _pool_pids(worker):
    return {child.pid for child in worker.pool_children()}


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_terminate_stops_a_step_stuck_in_a_sleep_and_the_worker_serves_the_next_operation(worker, tmp_path):
    hold = tmp_path / "tap-hold-1"
    hold.touch()
    operation = services.operation_start(kind="stuck", params={"hold": str(hold)}, actor="cli")
    wait_for(operation.pk, lambda op: op.step_index >= 1, what="step 2 started")
    time.sleep(1.0)  # step 2 has written its row and sleeps, in its transaction
    before = _pool_pids(worker)
    started = time.monotonic()
    terminated = services.operation_terminate(operation=operation, actor="cli")
    took = time.monotonic() - started
    assert terminated.status == Status.CANCELLED and took < 10, took
    assert Record.objects.filter(operation_id=operation.pk).count() == 0  # rolled back and compensated
    last = terminated.events.order_by("at", "id").last()
    assert (last.from_status, last.to_status) == ("running", "cancelled")
    assert last.note == ("terminated: stopped 1 worker process(es) running its step; "
                         "compensation: removed 1 record(s)"), last.note
    # The process that ran it is gone and replaced; the worker runs the next operation.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (before - _pool_pids(worker)):
        time.sleep(0.2)
    assert before - _pool_pids(worker), "the stuck step's pool process is still alive"
    nxt = services.operation_start(kind="arithmetic", params={"steps": 5}, actor="cli")
    assert wait_status(nxt.pk, Status.COMPLETED, timeout=60).result == expected_result(4, 5)
    assert all(psutil.pid_exists(pid) for pid in _pool_pids(worker))


@pytest.mark.django_db(transaction=True)
def test_terminate_is_legal_only_while_active_and_refused_with_a_message_otherwise():
    assert "terminate" in legal_verbs(Status.RUNNING) and "terminate" in legal_verbs(Status.CANCEL_REQUESTED)
    assert "terminate" not in legal_verbs(Status.PAUSED) and "terminate" not in legal_verbs(Status.COMPLETED)
    with mock.patch.object(services, "dispatch_on_commit"):  # no session worker moves it
        operation = services.operation_start(kind="arithmetic", params={"steps": 3}, actor="cli")
    services.operation_at_pause_point(operation.pk, 1, Status.RUNNING, index=3, length=3, result=1)
    with pytest.raises(services.TransitionRefused) as refused:
        services.operation_terminate(operation=operation, actor="cli")
    assert str(refused.value) == (f"operation {operation.pk} is completed; only running, pause requested or "
                                  f"cancel requested operations can be terminated")


@pytest.mark.django_db(transaction=True)
def test_terminate_asks_first_on_the_page_and_in_the_admin_and_has_its_own_permission(settings):
    settings.TAP_TERMINATE_TIMEOUT = 0.5
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    operation = services.operation_start(kind="arithmetic", params={"steps": 3, "delay": 30}, owner=owner, actor="cli")
    client = Client()
    client.force_login(owner)
    page = client.get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert reverse("operations:terminate-confirm", args=[operation.pk]) in page
    confirm = client.get(reverse("operations:terminate-confirm", args=[operation.pk])).content.decode()
    assert "Yes, terminate it" in confirm and "stopped at once" in confirm
    assert Operation.objects.get(pk=operation.pk).status in {Status.RUNNING}  # asking changed nothing

    staff = User.objects.create_user("staff", password="pw-staff-1234", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_operation", "cancel_operation"]))
    admin = Client()
    admin.force_login(staff)
    changelist = reverse("admin:operations_operation_changelist")
    admin.post(changelist, {"action": "terminate", "_selected_action": [operation.pk]})
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING  # no terminate_operation
    staff.user_permissions.add(Permission.objects.get(codename="terminate_operation"))
    admin = Client()
    admin.force_login(User.objects.get(pk=staff.pk))
    asked = admin.post(changelist, {"action": "terminate", "_selected_action": [operation.pk]}).content.decode()
    assert "Terminate these operations?" in asked and "Yes, terminate them" in asked
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING
    done = admin.post(changelist, {"action": "terminate", "_selected_action": [operation.pk], "post": "yes"},
                      follow=True).content.decode()
    assert "Terminate: 1 operation(s) changed." in done
    cancelled = Operation.objects.get(pk=operation.pk)
    assert cancelled.status == Status.CANCELLED
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    again = api.post(f"/api/operations/{operation.pk}/terminate/")
    assert again.status_code == 409 and again.json()["detail"].startswith(f"operation {operation.pk} is cancelled;")
    # Whether a session worker runs it or none does, the history says what terminate did.
    note = cancelled.events.order_by("at", "id").last().note
    assert note.startswith(("terminated: stopped 1 worker process(es) running its step; ",
                            "terminated: no worker answered")), note
