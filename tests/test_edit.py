"""Edit while paused (issue 14): change the remaining plan of a paused operation — a kind's
editable parameters, one step's arguments, or a step left out — checked like a start, recorded
as an event, run by the resume."""

import json
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from operations import services
from operations.contrib.demo.files import write_demo_csv
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.contrib.demo.models import Record
from operations.models import Operation, OperationEvent
from operations.states import Status
from tests.support.ops import wait_for, wait_status
from tests.support.worker import ROOT


def paused_arithmetic(steps=6, owner=None):
    """An arithmetic operation paused after its first step, without a worker (its first step is
    never sent: a session worker started by an earlier test cannot move it)."""
    with mock.patch.object(services, "dispatch_on_commit"):
        operation = services.operation_start(kind="arithmetic", params={"steps": steps}, owner=owner, actor="cli")
    services.step_advance(operation.pk, 1, 0, 0, 10, count_step=True)
    services.operation_pause(operation=operation, actor="cli")
    services.operation_at_pause_point(operation.pk, 1, Status.PAUSE_REQUESTED, index=1, length=steps)
    return Operation.objects.get(pk=operation.pk)


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_an_import_paused_edited_and_resumed_follows_the_new_pace_with_every_row_once(worker):
    write_demo_csv(Path(settings.TAP_CSV_DIR) / "edit-me.csv", rows=3000)
    # One range: the steps of its progress are then whole chunks (ranges each end on a partial one).
    operation = services.operation_start(kind="csv_import", params={"path": "edit-me.csv", "chunk_rows": 100,
                                                                    "rows_per_second": 4000, "ranges": 1},
                                         actor="cli")
    wait_for(operation.pk, lambda op: op.progress_done >= 300, what="300 rows")
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    left = 3000 - paused.progress_done
    assert left > 1000, paused.progress_done

    edited = services.operation_edit(operation=paused, params={"rows_per_second": 500, "chunk_rows": 250},
                                     actor="cli")
    assert edited.status == Status.PAUSED and edited.params["rows_per_second"] == 500
    assert edited.workflow["steps"][0]["args"][2:4] == [250, 500]
    assert edited.checkpoint == paused.checkpoint  # the cursor stays: the rest of the file, at the new pace
    note = edited.events.order_by("at", "id").last()
    assert (note.from_status, note.to_status, note.note) == (
        "paused", "paused", "edited: rows_per_second 4000 → 500; chunk_rows 100 → 250")

    started = time.monotonic()
    services.operation_resume(operation=operation, actor="cli")
    seen = set()
    while (row := Operation.objects.get(pk=operation.pk)).status != Status.COMPLETED:
        assert time.monotonic() - started < 60 and row.status == Status.RUNNING, row.status
        seen.add(row.progress_done)
        time.sleep(0.05)
    took = time.monotonic() - started
    assert took >= 0.6 * left / 500, (took, left)  # at the old pace it would take an eighth of that
    assert Record.objects.filter(operation_id=operation.pk).count() == 3000
    steps = {done - paused.progress_done for done in seen if paused.progress_done < done < 3000}
    assert steps and all(step % 250 == 0 for step in steps), sorted(steps)  # chunks of the new size


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_chain_edited_while_paused_runs_the_edited_steps(worker):
    operation = services.operation_start(kind="arithmetic", params={"steps": 6, "delay": 0.3}, actor="cli")
    wait_for(operation.pk, lambda op: op.step_index >= 1, what="step 1 done")
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    head = paused.step_index
    assert head < 5
    # Leave out the last step, and make the step after the head add 100 instead of its own argument.
    entry = paused.workflow["steps"][head]
    services.operation_edit(operation=paused, actor="cli", steps=[
        {"step": 6, "skip": True},
        {"step": head + 1, "args": [100] if entry["task"] == "operations.add" else [2]},
    ])
    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED)
    value = expected_result(4, head)
    for index in range(head, 5):
        if index == head:
            value = value + 100 if entry["task"] == "operations.add" else value * 2
        else:
            value = value * 16 if index % 2 else value + 6
    assert done.result == value and done.progress_total == 5


@pytest.mark.django_db(transaction=True)
def test_bad_edits_are_refused_naming_what_was_wrong_and_change_nothing():
    operation = paused_arithmetic()
    before = (Operation.objects.filter(pk=operation.pk).values("workflow", "params").get(), OperationEvent.objects.count())
    cases = [
        (dict(params={"steps": 9}), {"steps": ["arithmetic does not let steps change while paused (editable: none)"]}),
        (dict(steps=[{"step": 3, "task": "os.system"}]),
         {"steps": ["steps[2] names 'os.system', which is not a registered operation step"]}),
        (dict(steps=[{"step": 3, "kwargs": {"z": 1}}]),
         {"steps": ["steps[2] (operations.add): arguments do not fit the step: got an unexpected keyword argument 'z'"]}),
        (dict(steps=[{"step": 3, "args": [1, 2, 3]}]),
         {"steps": ["steps[2] (operations.add): arguments do not fit the step: too many positional arguments"]}),
        (dict(steps=[{"step": 1, "skip": True}]), {"steps[0]": ["step 1: only the remaining steps, 2–6, can be edited"]}),
        (dict(steps=[{"step": 3, "colour": "red"}]),
         {"steps[0]": ["unknown key(s) colour; a step edit has args, kwargs, skip, step, task"]}),
        (dict(steps=[{"step": n, "skip": True} for n in range(2, 7)]),
         {"steps": ["an edit cannot skip every remaining step; cancel the operation instead"]}),
        (dict(), {"__all__": ["nothing to change: give params or steps that differ from the plan's"]}),
    ]
    for edit, errors in cases:
        with pytest.raises(services.InvalidParams) as refused:
            services.operation_edit(operation=operation, actor="cli", **edit)
        assert refused.value.errors == errors, edit
    after = (Operation.objects.filter(pk=operation.pk).values("workflow", "params").get(), OperationEvent.objects.count())
    assert after == before
    services.operation_resume(operation=operation, actor="cli")
    with pytest.raises(services.TransitionRefused, match="only paused operations can be edited"):
        services.operation_edit(operation=operation, actor="cli", steps=[{"step": 6, "skip": True}])


@pytest.mark.django_db(transaction=True)
def test_the_faces_edit_a_paused_import(settings, tmp_path):
    owner = User.objects.create_user("owner", password="pw-owner-1234")
    other = User.objects.create_user("other", password="pw-other-1234")
    write_demo_csv(Path(settings.TAP_CSV_DIR) / "faces.csv", rows=10)
    with mock.patch.object(services, "dispatch_on_commit"):
        operation = services.operation_start(kind="csv_import", params={"path": "faces.csv", "chunk_rows": 5},
                                             owner=owner, actor="cli")
    services.operation_pause(operation=operation, actor="cli")
    services.operation_at_pause_point(operation.pk, 1, Status.PAUSE_REQUESTED, index=0, length=1)

    page = Client()
    page.force_login(owner)
    shown = page.get(reverse("operations:detail", args=[operation.pk])).content.decode()
    assert 'data-testid="edit-form"' in shown and 'name="rows_per_second"' in shown and 'name="path"' not in shown
    page.post(reverse("operations:edit", args=[operation.pk]), {"chunk_rows": "7", "rows_per_second": "900"})
    assert Operation.objects.get(pk=operation.pk).params["chunk_rows"] == 7
    refused = page.post(reverse("operations:edit", args=[operation.pk]), {"chunk_rows": "0", "rows_per_second": ""},
                        follow=True).content.decode()
    assert "chunk_rows: Ensure this value is greater than or equal to 1." in refused

    root = Client()
    root.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    change = root.get(reverse("admin:operations_operation_change", args=[operation.pk])).content.decode()
    assert f'href="{reverse("operations:detail", args=[operation.pk])}#edit"' in change

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    answer = api.post(f"/api/operations/{operation.pk}/edit/", {"params": {"rows_per_second": 50}}, format="json")
    assert answer.status_code == 200 and answer.json()["params"]["rows_per_second"] == 50
    bad = api.post(f"/api/operations/{operation.pk}/edit/", {"params": {"path": "/etc/passwd"}}, format="json")
    assert bad.status_code == 400 and "path" in bad.json()["errors"], bad.content
    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other).key}")
    assert stranger.post(f"/api/operations/{operation.pk}/edit/", {"params": {"chunk_rows": 3}},
                         format="json").status_code == 404
    notes = list(Operation.objects.get(pk=operation.pk).events.filter(note__startswith="edited").values_list("note", flat=True))
    assert notes == ["edited: chunk_rows 5 → 7; rows_per_second None → 900", "edited: rows_per_second 900 → 50"]


@pytest.mark.django_db(transaction=True)
def test_the_cli_edits_and_says_what_changed(subprocess_env):
    operation = paused_arithmetic()
    run = subprocess.run([sys.executable, "manage.py", "operations", "edit", str(operation.pk), "--skip-step", "6",
                          "--step", json.dumps({"step": 3, "args": [7]})], cwd=ROOT, env=subprocess_env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (f"operation {operation.pk}: edited: step 6 (operations.mult) skipped; "
                                  "step 3 args [6] → [7]")
    bad = subprocess.run([sys.executable, "manage.py", "operations", "edit", str(operation.pk), "--param", "x=3"],
                         cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "x: arithmetic does not let x change while paused" in bad.stderr
