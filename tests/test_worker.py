"""A real worker subprocess, on each backend of the matrix, runs tasks and refuses pickle."""

import time
import uuid

import pytest
from django_celery_results.models import TaskResult

from operations.tasks import ping
from tapproject.celery import app

pytestmark = pytest.mark.integration


def test_worker_executes_a_task_and_returns_its_result(worker):
    result = ping.delay("hello")
    assert result.get(timeout=30, interval=0.05)["pong"] == "hello"
    # The django-db result backend stored it where the admin shows it.
    stored = TaskResult.objects.get(task_id=result.id)
    assert stored.status == "SUCCESS" and stored.task_name == "operations.ping"


def test_pickle_message_is_refused_by_the_worker(worker):
    pickled_id = f"pickled-{uuid.uuid4()}"
    app.send_task("operations.ping", args=["from-pickle"], task_id=pickled_id, serializer="pickle")
    # A JSON task sent afterwards runs, so the worker has had its chance at the pickled one.
    assert ping.delay("after").get(timeout=30, interval=0.05)["pong"] == "after"
    deadline = time.monotonic() + 10
    while "Refusing to deserialize untrusted content of type pickle" not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    assert not TaskResult.objects.filter(task_id=pickled_id).exists()


def test_worker_sessions_end_when_left_idle_in_a_transaction_for_the_lease(worker, settings):
    """The app's PostgreSQL session setting (operations.integration) reaches the workers' sessions."""
    from operations import services
    from tests.support.ops import wait_status

    operation = services.operation_start(kind="session", params={"name": "idle_in_transaction_session_timeout"},
                                         actor="cli")
    result = wait_status(operation.pk, "completed").result
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        assert result == f"{settings.TAP_HEARTBEAT_LEASE}s"  # 6 s in the tests
    else:
        assert result is None
