"""Fork from step N (issue 14): a new linked operation that runs the plan again from a step the
original reached, with the value carried into it — on every face, through operation_fork."""

import json
import subprocess
import sys
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from operations import selectors, services
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.models import Operation, OperationEvent, StepBoundary
from operations.states import Status
from tests.support.ops import wait_settled, wait_status
from tests.support.worker import ROOT


def arithmetic(steps=20, owner=None, *, dispatch=True):
    """Started; with ``dispatch=False`` its first step is never sent, so that a session worker
    (started by an earlier test) cannot move it while a test drives it by hand."""
    if dispatch:
        return services.operation_start(kind="arithmetic", params={"steps": steps}, owner=owner, actor="cli")
    with mock.patch.object(services, "dispatch_on_commit"):
        return services.operation_start(kind="arithmetic", params={"steps": steps}, owner=owner, actor="cli")


def completed_arithmetic(steps=20, owner=None):
    """A completed arithmetic operation whose boundaries were written by the real advance path,
    without a worker: each step advanced through the services as the engine does."""
    from operations.contrib.demo.kinds.arithmetic import add, mult  # noqa: F401 (registered steps)
    from operations.workflow import STEPS, step_arguments

    operation = arithmetic(steps, owner, dispatch=False)
    carry, fence = None, 0
    for index, entry in enumerate(operation.workflow["steps"]):
        args, kwargs = step_arguments(index, entry, carry)
        carry = STEPS[entry["task"]].func(*args, **{k: v for k, v in kwargs.items() if k != "delay"})
        services.step_advance(operation.pk, 1, fence, index, carry, count_step=True)
        fence += 1
    services.operation_at_pause_point(operation.pk, 1, Status.RUNNING, index=steps, length=steps, result=carry)
    return Operation.objects.get(pk=operation.pk)


# --- the service, without a worker -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_fork_starts_at_its_step_with_the_value_carried_into_it_and_links_both_ways():
    original = completed_arithmetic(20)
    assert original.status == Status.COMPLETED and original.result == expected_result(4, 20)
    assert selectors.fork_steps(original) == list(range(1, 21))
    kept = StepBoundary.objects.get(operation=original, step_index=7).carry
    assert kept == expected_result(4, 7)  # the value carried into step 8 is step 7's result

    fork = services.operation_fork(operation=original, from_step=8, actor="cli")
    # (as created: a worker, if one runs, takes it on from there)
    assert (fork.status, fork.kind, fork.step_index, fork.carry) == (Status.RUNNING, "arithmetic", 7, kept)
    assert (fork.forked_from_id, fork.forked_at_step, fork.progress_done, fork.progress_total) == (original.pk, 8, 7, 20)
    assert fork.params == original.params and fork.workflow == original.workflow
    assert selectors.operation_lineage(fork)[0] == original
    assert [f.pk for f in selectors.operation_lineage(original)[1]] == [fork.pk]
    notes = {op: list(OperationEvent.objects.filter(operation_id=op).values_list("from_status", "to_status", "note"))
             for op in (original.pk, fork.pk)}
    assert notes[fork.pk] == [("", "running", f"forked from operation {original.pk} at step 8 of 20")]
    assert notes[original.pk][-1] == ("completed", "completed", f"forked: operation {fork.pk} runs it again from step 8 of 20")
    assert Operation.objects.get(pk=original.pk).status == Status.COMPLETED  # the original is not touched
    # The fork can itself be forked from where it started on, not from the steps it never ran.
    steps = selectors.fork_steps(fork)
    assert steps[:2] == [1, 8] and not set(range(2, 8)) & set(steps)


@pytest.mark.django_db(transaction=True)
def test_a_fork_from_a_step_not_reached_is_refused_naming_the_steps_and_changes_nothing():
    operation = arithmetic(10, dispatch=False)  # running, no step done: only step 1
    before = (Operation.objects.count(), OperationEvent.objects.count())
    for bad in (0, -1, "3", True, None):  # not a step number: bad input
        with pytest.raises(services.InvalidParams) as refused:
            services.operation_fork(operation=operation, from_step=bad, actor="cli")
        assert refused.value.errors == {"from_step": [
            f"give a step number: operation {operation.pk} can be forked from step 1 of 10, not {bad!r}"]}
    for unreached in (2, 11):  # a step it has not reached: refused as a verb is (409 in the API)
        with pytest.raises(services.TransitionRefused) as refused:
            services.operation_fork(operation=operation, from_step=unreached, actor="cli")
        assert str(refused.value) == f"operation {operation.pk} can be forked from step 1 of 10, not {unreached}"
    assert (Operation.objects.count(), OperationEvent.objects.count()) == before
    with pytest.raises(services.OperationNotFound, match="operation 999999 does not exist"):
        services.operation_fork(operation=999999, from_step=1, actor="cli")
    assert services.listed_steps([1, 2, 3, 5, 7, 8]) == "1–3, 5, 7–8"


# --- with a real worker ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_forks_of_a_completed_twenty_step_operation_end_with_its_result(worker):
    original = arithmetic(20)
    done = wait_status(original.pk, Status.COMPLETED)
    assert selectors.fork_steps(done) == list(range(1, 21))
    for from_step in (1, 11, 20):
        fork = services.operation_fork(operation=done, from_step=from_step, actor="cli")
        finished = wait_status(fork.pk, Status.COMPLETED)
        assert finished.result == done.result == expected_result(4, 20), from_step
        assert finished.progress_done == 20
        # The steps before the fork point never ran in the fork: no boundary of theirs was written.
        ran = sorted(StepBoundary.objects.filter(operation=fork).values_list("step_index", flat=True))
        assert ran == list(range(max(1, from_step - 1), 21)), from_step


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_fork_from_the_failed_step_completes_once_the_cause_is_fixed(worker, tmp_path):
    counter = tmp_path / "count"
    original = services.operation_start(kind="flaky", params={"counter": str(counter), "fail_times": 1,
                                                              "max_retries": 0}, actor="cli")
    failed = wait_settled(original.pk)
    assert failed.status == Status.FAILED and failed.step_index == 1
    assert selectors.fork_steps(failed) == [1, 2]
    fork = services.operation_fork(operation=failed, from_step=2, actor="cli")  # the failed step
    done = wait_status(fork.pk, Status.COMPLETED)
    assert done.result == 21 and counter.read_text() == "2"  # step 1 did not run again; step 2 once more
    assert Operation.objects.get(pk=original.pk).status == Status.FAILED


# --- the faces ---------------------------------------------------------------------------------


@pytest.fixture
def people(transactional_db):
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    other = User.objects.create_user("other", password="pw-other-1234")
    staff = User.objects.create_user("staff", password="pw-staff-1234", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_operation"))
    return {"owner": owner, "other": other, "staff": staff}


def api_client(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def test_the_api_forks_with_from_step_and_refuses_bad_bodies_by_name(people):
    original = completed_arithmetic(5, owner=people["owner"])
    api = api_client(people["owner"])
    created = api.post(f"/api/operations/{original.pk}/fork/", {"from_step": 3}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["forked_from"] == original.pk and body["forked_at_step"] == 3 and body["status"] == "running"
    shown = api.get(f"/api/operations/{original.pk}/").json()
    assert shown["forks"] == [body["id"]] and shown["fork_steps"] == [1, 2, 3, 4, 5]

    for payload, message in (({}, "This field is required."), ({"from_step": "x"}, "A valid integer is required."),
                             ({"from_step": 0}, "Ensure this value is greater than or equal to 1.")):
        refused = api.post(f"/api/operations/{original.pk}/fork/", payload, format="json")
        assert refused.status_code == 400 and refused.json()["errors"]["from_step"] == [message], refused.content
    unreached = api.post(f"/api/operations/{original.pk}/fork/", {"from_step": 9}, format="json")
    assert unreached.status_code == 409
    assert unreached.json()["detail"] == f"operation {original.pk} can be forked from step 1–5 of 5, not 9"
    assert Operation.objects.count() == 2
    assert api_client(people["other"]).post(f"/api/operations/{original.pk}/fork/", {"from_step": 1},
                                            format="json").status_code == 404
    assert api_client(people["staff"]).post(f"/api/operations/{original.pk}/fork/", {"from_step": 1},
                                            format="json").status_code == 403
    people["staff"].user_permissions.add(Permission.objects.get(codename="fork_operation"))
    by_staff = api_client(User.objects.get(pk=people["staff"].pk)).post(
        f"/api/operations/{original.pk}/fork/", {"from_step": 1}, format="json")
    assert by_staff.status_code == 201
    fork = Operation.objects.get(pk=by_staff.json()["id"])
    assert fork.owner == people["owner"]  # a fork keeps the original's owner
    assert fork.events.order_by("at", "id").first().actor == "staff"


def test_the_pages_show_the_lineage_and_fork_from_the_chosen_step(people):
    original = completed_arithmetic(4, owner=people["owner"])
    client = Client()
    client.force_login(people["owner"])
    page = client.get(reverse("operations:detail", args=[original.pk])).content.decode()
    assert 'data-testid="fork-form"' in page and '<option value="4" selected>' in page
    response = client.post(reverse("operations:fork", args=[original.pk]), {"from_step": "2"})
    fork = Operation.objects.get(forked_from=original)
    assert response.status_code == 302 and response.url == reverse("operations:detail", args=[fork.pk])
    fork_page = client.get(response.url).content.decode()
    assert f"Forked from <a href=\"{reverse('operations:detail', args=[original.pk])}\">operation {original.pk}</a> at step 2" in fork_page
    assert f"Operation {fork.pk} runs operation {original.pk} again from step 2." in fork_page
    assert f"operation {fork.pk}</a> (from step 2" in client.get(reverse("operations:detail", args=[original.pk])).content.decode()
    refused = client.post(reverse("operations:fork", args=[original.pk]), {"from_step": "7"}, follow=True)
    assert f"operation {original.pk} can be forked from step 1–4 of 4, not 7" in refused.content.decode()
    assert client.get(reverse("operations:fork", args=[original.pk])).status_code == 405
    other = Client()
    other.force_login(people["other"])
    assert other.post(reverse("operations:fork", args=[original.pk]), {"from_step": "1"}).status_code == 404
    assert Operation.objects.count() == 2


def test_the_admin_forks_from_where_it_stopped_with_its_own_permission(people):
    original = completed_arithmetic(3, owner=people["owner"])
    changelist = reverse("admin:operations_operation_changelist")
    staff = Client()
    staff.force_login(people["staff"])
    staff.post(changelist, {"action": "fork", "_selected_action": [original.pk]})
    assert not Operation.objects.filter(forked_from=original).exists()  # no fork_operation permission
    root = Client()
    root.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    change = root.get(reverse("admin:operations_operation_change", args=[original.pk])).content.decode()
    assert 'data-verb="fork"' in change
    page = root.post(changelist, {"action": "fork", "_selected_action": [original.pk]}, follow=True).content.decode()
    fork = Operation.objects.get(forked_from=original)
    assert fork.forked_at_step == 3  # the last step it reached
    assert fork.events.first().note == f"forked from operation {original.pk} at step 3 of 3"
    assert "Fork: 1 new operation(s) started." in page and f"runs operation {original.pk} again from step 3" in page
    shown = root.get(reverse("admin:operations_operation_change", args=[fork.pk])).content.decode()
    assert f"forked from <a href=\"{reverse('admin:operations_operation_change', args=[original.pk])}\">#{original.pk}</a> at step 3" in shown


@pytest.mark.django_db(transaction=True)
def test_the_cli_forks_and_shows_the_lineage(subprocess_env):
    original = completed_arithmetic(3)
    run = [sys.executable, "manage.py", "operations"]
    forked = subprocess.run([*run, "fork", str(original.pk), "--from-step", "2", "--json"], cwd=ROOT,
                            env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert forked.returncode == 0, forked.stderr
    fork_id = json.loads(forked.stdout)["id"]
    shown = subprocess.run([*run, "show", str(original.pk)], cwd=ROOT, env=subprocess_env,
                           capture_output=True, text=True, timeout=60)
    assert f"forks:    {fork_id}" in shown.stdout and "fork from step: 1–3" in shown.stdout
    refused = subprocess.run([*run, "fork", str(original.pk), "--from-step", "5"], cwd=ROOT, env=subprocess_env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert f"operation {original.pk} can be forked from step 1–3 of 3, not 5" in refused.stderr


@pytest.mark.django_db(transaction=True)
def test_a_fork_of_an_upload_reads_its_own_copy(settings, tmp_path):
    from operations import uploads

    settings.TAP_UPLOAD_DIR = str(tmp_path)
    upload = tmp_path / "0123abcd-march.csv"
    upload.write_text("id,name\n")
    params = {"path": str(upload), "source": "march.csv"}
    copied = uploads.copy_for(params)
    assert copied["path"] != params["path"] and copied["source"] == "march.csv"
    assert open(copied["path"]).read() == "id,name\n" and copied["path"].endswith("-march.csv")
    uploads.discard(copied)
    assert upload.exists()  # discarding the fork's copy leaves the original's file
    upload.unlink()
    with pytest.raises(FileNotFoundError):
        uploads.copy_for(params)
    assert uploads.copy_for({"path": "/elsewhere/file.csv"}) == {"path": "/elsewhere/file.csv"}
