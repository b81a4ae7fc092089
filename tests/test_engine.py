"""The engine end to end: a real worker, a real broker, a real database (issue 3's acceptance)."""

import subprocess
import sys
import time

import pytest
from django.contrib.auth.models import User

from operations import services
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.contrib.demo.models import Record
from operations.models import Operation
from operations.states import Status
from tapproject.celery import app
from tests.support.ops import run_concurrently, status_changes, wait_for, wait_settled, wait_status
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis", "pg-rabbitmq")]


@pytest.fixture
def alice(transactional_db):
    return User.objects.create_user("alice", password="pw-alice-12345")


def start(kind="arithmetic", actor="cli", owner=None, **params):
    return services.operation_start(kind=kind, params=params, owner=owner, actor=actor)


def past_step(n):
    return lambda op: op.step_index >= n


def test_pause_and_resume_several_times_gives_the_uninterrupted_result(worker, alice):
    operation = start(steps=12, delay=0.15, owner=alice, actor=alice)
    for stop_at in (2, 6):
        wait_for(operation.pk, past_step(stop_at), what=f"step {stop_at}")
        services.operation_pause(operation=operation, actor=alice)
        paused = wait_status(operation.pk, Status.PAUSED)
        assert 0 < paused.step_index < 12
        time.sleep(0.4)  # nothing moves while paused
        assert Operation.objects.get(pk=operation.pk).step_index == paused.step_index
        services.operation_resume(operation=operation, actor=alice)
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == expected_result(4, 12)
    assert done.run_token == 3 and done.progress_done == 12
    assert status_changes(operation.pk) == [
        ("", "running", "alice"),
        ("running", "pause_requested", "alice"), ("pause_requested", "paused", "worker"),
        ("paused", "running", "alice"),
        ("running", "pause_requested", "alice"), ("pause_requested", "paused", "worker"),
        ("paused", "running", "alice"),
        ("running", "completed", "worker"),
    ]


def test_a_pause_withdrawn_before_it_lands_keeps_the_same_chain(worker):
    operation = start(steps=6, delay=0.4)
    wait_for(operation.pk, past_step(1))
    time.sleep(0.1)  # inside step 1, which takes 0.4 s: the next pause point is ~0.3 s away
    assert services.operation_pause(operation=operation, actor="cli").status == Status.PAUSE_REQUESTED
    assert services.operation_resume(operation=operation, actor="cli").status == Status.RUNNING
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == expected_result(4, 6)
    assert done.run_token == 1  # nothing was dispatched again: one chain from start to end
    assert ("pause_requested", "running", "cli") in status_changes(operation.pk)
    assert "paused" not in [to for _, to, _ in status_changes(operation.pk)]


def test_cancel_while_running_compensates_once(worker):
    operation = start(kind="records", steps=40, delay=0.05)
    wait_for(operation.pk, past_step(3))
    assert services.operation_cancel(operation=operation, actor="cli").status == Status.CANCEL_REQUESTED
    cancelled = wait_status(operation.pk, Status.CANCELLED)
    assert Record.objects.filter(operation=operation).count() == 0
    notes = list(cancelled.events.filter(to_status="cancelled").values_list("note", "actor"))
    assert len(notes) == 1 and notes[0][1] == "worker"
    assert notes[0][0].startswith("compensation: removed ") and notes[0][0] != "compensation: removed 0 record(s)"


def test_cancel_while_paused_compensates_at_once(worker):
    operation = start(kind="records", steps=40, delay=0.05)
    wait_for(operation.pk, past_step(3))
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    assert Record.objects.filter(operation=operation).count() == paused.step_index
    assert services.operation_cancel(operation=operation, actor="cli").status == Status.CANCELLED
    assert Record.objects.filter(operation=operation).count() == 0
    assert list(Operation.objects.get(pk=operation.pk).events.filter(to_status="cancelled")
                .values_list("note", flat=True)) == [f"compensation: removed {paused.step_index} record(s)"]


def test_pause_of_a_completed_operation_is_refused_and_the_cli_exits_non_zero(worker, subprocess_env):
    operation = start(steps=2)
    wait_status(operation.pk, Status.COMPLETED)
    with pytest.raises(services.TransitionRefused) as refused:
        services.operation_pause(operation=operation, actor="cli")
    assert str(refused.value) == f"operation {operation.pk} is completed; only running or waiting operations can be paused"
    cli = subprocess.run([sys.executable, "manage.py", "operations", "pause", str(operation.pk)],
                         cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0
    assert f"operation {operation.pk} is completed; only running or waiting operations can be paused" in cli.stderr


def test_a_failing_step_is_retried_then_completes(worker, tmp_path):
    operation = start(kind="flaky", counter=str(tmp_path / "count"), fail_times=2, max_retries=2)
    done = wait_status(operation.pk, Status.COMPLETED, Status.FAILED)
    assert done.status == Status.COMPLETED and done.result == 21
    notes = list(done.events.filter(note__contains="failed: RuntimeError").values_list("note", flat=True))
    assert notes == [
        "step 2 of 3 (tests.flaky) attempt 1 of 3 failed: RuntimeError: flaky failure number 1; retrying in 0s",
        "step 2 of 3 (tests.flaky) attempt 2 of 3 failed: RuntimeError: flaky failure number 2; retrying in 0s",
    ]


def test_retries_exhausted_fail_with_the_step_name_and_retry_resumes_from_it(worker, tmp_path):
    operation = start(kind="flaky", counter=str(tmp_path / "count"), fail_times=2, max_retries=1)
    failed = wait_settled(operation.pk)
    assert failed.status == Status.FAILED
    assert failed.error == "step 2 of 3 (tests.flaky) failed after 2 attempt(s): RuntimeError: flaky failure number 2"
    assert failed.step_index == 1 and failed.carry == 2  # the failed step is still at the head
    services.operation_retry(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == 21 and done.error == "" and done.run_token == 2
    assert (tmp_path / "count").read_text() == "3"  # step 0 did not run again; step 1 ran once more


def test_twenty_concurrent_resumes_start_exactly_one_chain(worker):
    operation = start(steps=10, delay=0.1)
    wait_for(operation.pk, past_step(2))
    services.operation_pause(operation=operation, actor="cli")
    wait_status(operation.pk, Status.PAUSED)

    outcomes = run_concurrently(20, lambda: services.operation_resume(operation=operation.pk, actor="cli"))
    accepted = [o for o in outcomes if isinstance(o, Operation)]
    refused = [str(o) for o in outcomes if isinstance(o, services.TransitionRefused)]
    assert len(accepted) == 1 and len(refused) == 19, outcomes
    assert all("only paused or interrupted operations can be resumed" in o or
               "only pause requested, paused or interrupted" in o for o in refused), refused
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == expected_result(4, 10)
    assert done.run_token == 2  # one resume, one dispatch
    assert [c for c in status_changes(operation.pk) if c[1] == "running"] == [("", "running", "cli"),
                                                                            ("paused", "running", "cli")]


def test_a_step_with_an_old_run_token_does_nothing_and_says_why(worker):
    operation = start(steps=8, delay=0.1)
    wait_for(operation.pk, past_step(2))
    services.operation_pause(operation=operation, actor="cli")
    wait_status(operation.pk, Status.PAUSED)
    services.operation_resume(operation=operation, actor="cli")
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    assert paused.run_token == 2

    # Deliver by hand the message run 1 would send for the current head step.
    app.send_task("operations.run_step", args=[operation.pk, 1, paused.step_index])
    line = f"operation {operation.pk}: ignored step {paused.step_index} of run 1: stale run token"
    deadline = time.monotonic() + 30
    while line not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    after = Operation.objects.get(pk=operation.pk)
    assert (after.status, after.step_index, after.fence, after.carry) == (
        Status.PAUSED, paused.step_index, paused.fence, paused.carry)


@pytest.mark.parametrize("bad_step, reason", [
    ({"task": "operations.evil", "args": [1]}, "names 'operations.evil', which is not a registered operation step"),
    ({"task": "celery.backend_cleanup", "args": []}, "names 'celery.backend_cleanup', a Celery built-in task"),
    ({"task": "operations.add", "args": [1, 2, 3]}, "arguments do not fit the step"),
])
def test_an_edited_workflow_is_refused_before_anything_is_published(worker, bad_step, reason):
    operation = start(steps=6, delay=0.1)
    wait_for(operation.pk, past_step(1))
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    workflow = paused.workflow
    workflow["steps"][paused.step_index] = bad_step
    Operation.objects.filter(pk=operation.pk).update(workflow=workflow)
    with pytest.raises(services.TransitionRefused, match=reason):
        services.operation_resume(operation=operation, actor="cli")
    time.sleep(0.5)
    after = Operation.objects.get(pk=operation.pk)
    assert (after.status, after.run_token, after.step_index) == (Status.PAUSED, 1, paused.step_index)
    assert reason in after.events.last().note and after.events.last().note.startswith("resume refused")


def test_a_killed_worker_is_found_by_the_reconciler_and_resume_completes(worker, settings):
    operation = start(steps=10, delay=0.3)
    wait_for(operation.pk, past_step(2))
    worker.kill()
    killed_at = time.monotonic()
    lease = settings.TAP_HEARTBEAT_LEASE
    while not services.operations_reconcile():  # what beat runs every TAP_RECONCILE_INTERVAL
        assert time.monotonic() - killed_at < lease + 10, "not interrupted within the lease"
        time.sleep(0.5)
    interrupted = Operation.objects.get(pk=operation.pk)
    assert interrupted.status == Status.INTERRUPTED
    assert ("running", "interrupted", "beat") in status_changes(operation.pk)
    worker.start()
    worker.wait_ready()
    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == expected_result(4, 10)


def test_in_step_checkpoints_pause_within_one_chunk_and_resume_from_the_cursor(worker):
    operation = start(kind="looper", total=3000, chunk=100, delay=0.05)
    wait_for(operation.pk, lambda op: op.progress_done >= 500)
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    assert paused.step_index == 0 and paused.checkpoint["next"] == paused.progress_done < 3000
    assert Record.objects.filter(operation=operation).count() == paused.progress_done
    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == 3000
    lines = list(Record.objects.filter(operation=operation).order_by("external_id")
                 .values_list("external_id", flat=True))
    assert lines == list(range(3000))


def test_the_docs_example_runs_as_an_operation(worker):
    from pathlib import Path

    source = Path(ROOT, "docs/examples/publish.py").read_text()
    doc = Path(ROOT, "docs/extending.md").read_text()
    assert source.strip() in doc, "docs/extending.md must show docs/examples/publish.py verbatim"
    assert len(source.strip().splitlines()) < 30
    operation = start(kind="publish", title="Hello Resumable World")
    done = wait_status(operation.pk, Status.COMPLETED)
    assert done.result == "/blog/hello-resumable-world/"
