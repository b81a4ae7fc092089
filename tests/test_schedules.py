"""Schedules (issue 15): a beat entry that starts an operation at each firing, paused and resumed
through the services, on every face; with a real beat and a real worker."""

import io
import json
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django_celery_beat.models import PeriodicTask

from operations import schedules, services
from operations.models import Operation, Schedule
from operations.states import Status


def started_by(schedule):
    return list(Operation.objects.filter(schedule=schedule).order_by("created_at").values_list("pk", flat=True))


def wait_started(schedule, count, timeout):
    deadline = time.monotonic() + timeout
    while len(started_by(schedule)) < count:
        assert time.monotonic() < deadline, f"{len(started_by(schedule))} of {count} started in {timeout}s"
        time.sleep(0.2)
    return started_by(schedule)


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
def test_a_schedule_every_2_s_starts_linked_operations_until_it_is_paused(worker, beat):
    owner = User.objects.create_user("nightly", password="pw-nightly-1234")
    schedule = schedules.schedule_create(name="often", kind="arithmetic", params={"steps": 2}, owner=owner,
                                         every=2, actor="cli")
    ids = wait_started(schedule, 3, timeout=30)
    for pk in ids:
        operation = Operation.objects.get(pk=pk)
        assert (operation.schedule_id, operation.owner_id, operation.params["steps"]) == (schedule.pk, owner.pk, 2)
        assert operation.idempotency_key.startswith(f"schedule:{schedule.pk}:")
    out = io.StringIO()
    call_command("operations", "schedules", "pause", "often", stdout=out)
    assert out.getvalue().strip() == "schedule often: paused"
    time.sleep(1)  # a firing already on its way may still land
    before = len(started_by(schedule))
    time.sleep(7)  # beat syncs its entries every few seconds; 3 firings would be due by now
    assert len(started_by(schedule)) == before
    for pk in started_by(schedule):
        assert Operation.objects.get(pk=pk).status in (Status.RUNNING, Status.COMPLETED)
    with pytest.raises(services.TransitionRefused, match="paused already"):
        schedules.schedule_pause(schedule=schedule, actor="cli")
    schedules.schedule_resume(schedule=schedule, actor="cli")
    wait_started(schedule, before + 1, timeout=30)
    schedules.schedule_pause(schedule=schedule, actor="cli")
    notes = list(Schedule.objects.get(pk=schedule.pk).events.values_list("actor", "note"))
    assert notes[0] == ("cli", "created: arithmetic every 2 s")
    assert ("cli", "paused") in notes and ("cli", "resumed") in notes
    assert sum(1 for actor, note in notes if actor == "beat" and note.startswith("fired: started operation")) >= 4


@pytest.mark.integration
@pytest.mark.minutes
@pytest.mark.backends("pg-redis")
def test_a_schedule_every_minute_starts_three_operations_in_three_and_a_half_minutes(worker, beat):
    schedule = schedules.schedule_create(name="every minute", kind="arithmetic", params={"steps": 3},
                                         crontab="* * * * *", actor="cli")
    ids = wait_started(schedule, 3, timeout=210)
    assert all(Operation.objects.get(pk=pk).schedule_id == schedule.pk for pk in ids)
    schedules.schedule_pause(schedule=schedule, actor="cli")
    time.sleep(5)
    before = len(started_by(schedule))
    time.sleep(65)
    assert len(started_by(schedule)) == before


def test_a_firing_refused_by_a_concurrency_limit_is_an_event_and_a_firing_delivered_twice_starts_one(db):
    from unittest import mock

    schedule = schedules.schedule_create(name="imports", kind="bulk_insert", params={"rows": 10}, every=60,
                                         actor="cli")
    with mock.patch.object(services, "dispatch_on_commit"), \
            mock.patch("operations.catalogue.Kind.concurrency_limit", return_value=1):
        first = schedules.schedule_fire(schedule.pk, firing_id="a")
        assert schedules.schedule_fire(schedule.pk, firing_id="a") == first  # the same message again
        assert schedules.schedule_fire(schedule.pk, firing_id="b") is None  # the first holds the only slot
    schedule.refresh_from_db()
    assert (schedule.fired, schedule.refused) == (1, 1)
    assert schedule.last_outcome.startswith("refused: bulk_insert allows 1 unfinished operation(s)")
    assert Operation.objects.filter(schedule=schedule).count() == 1
    assert schedule.events.last().note.startswith("firing refused: bulk_insert allows 1")
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (task.task, json.loads(task.args), task.interval.every) == ("operations.fire_schedule", [schedule.pk], 60)


def test_bad_schedules_are_refused_naming_the_field_and_leave_nothing(db):
    cases = [
        ({"name": "x", "kind": "nope", "every": 5}, "kind", "unknown operation kind 'nope'"),
        ({"name": "x", "kind": "arithmetic", "params": {"steps": "many"}, "every": 5}, "steps", "whole number"),
        ({"name": "x", "kind": "arithmetic", "crontab": "* * *"}, "crontab", "five fields"),
        ({"name": "x", "kind": "arithmetic", "crontab": "99 * * * *"}, "crontab", "99"),
        ({"name": "x", "kind": "arithmetic", "every": 0.5}, "every", "from 1 to a year"),
        ({"name": "x", "kind": "arithmetic"}, "__all__", "one of the two"),
        ({"name": "", "kind": "arithmetic", "every": 5}, "name", "1 to 150 characters"),
        ({"name": "x", "kind": "csv_import", "params": {"path": "a.csv"}, "every": 5}, "path", "no such file"),
    ]
    for arguments, field, said in cases:
        with pytest.raises(services.InvalidParams) as refused:
            schedules.schedule_create(actor="cli", **arguments)
        assert field in refused.value.errors and said in " ".join(refused.value.errors[field]), (arguments, refused.value.errors)
    assert not Schedule.objects.exists() and not PeriodicTask.objects.filter(task="operations.fire_schedule").exists()
    schedules.schedule_create(name="x", kind="arithmetic", every=5, actor="cli")
    with pytest.raises(services.InvalidParams, match="exists already"):
        schedules.schedule_create(name="x", kind="arithmetic", every=5, actor="cli")
    with pytest.raises(CommandError, match="no schedule named 'y'"):
        call_command("operations", "schedules", "pause", "y")


def test_the_admin_adds_pauses_and_lists_a_schedule(db):
    staff = User.objects.create_user("ops", password="pw-ops-12345", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=[
        "add_schedule", "view_schedule", "pause_schedule", "view_operation"]))
    client = Client()
    client.force_login(staff)
    bad = client.post("/admin/operations/schedule/add/", {"name": "n", "kind": "arithmetic", "params": "{}",
                                                            "crontab": "nonsense"})
    assert bad.status_code == 200 and "five fields" in bad.content.decode()
    assert not Schedule.objects.exists()
    added = client.post("/admin/operations/schedule/add/", {"name": "n", "kind": "arithmetic",
                                                              "params": '{"steps": 4}', "every": "30"})
    assert added.status_code == 302, added.content.decode()[:2000]
    schedule = Schedule.objects.get()
    assert schedule.params["steps"] == 4 and schedule.events.get().actor == "ops"
    paused = client.post("/admin/operations/schedule/", {"action": "pause", "_selected_action": [schedule.pk]},
                         follow=True)
    assert "1 schedule(s) paused." in paused.content.decode()
    assert Schedule.objects.get().paused
    page = client.get(f"/admin/operations/schedule/{schedule.pk}/change/").content.decode()
    assert "every 30 s" in page and "Paused" in page


def test_the_api_lists_pauses_resumes_and_deletes_ones_own_schedules(db):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    owner, other = (User.objects.create_user(name, password=f"pw-{name}-12345") for name in ("alice", "bob"))
    api, theirs = APIClient(), APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=owner).key}")
    theirs.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other).key}")
    assert api.post("/api/schedules/", {"name": "n", "kind": "arithmetic", "every": 5}, format="json").status_code == 405
    made = schedules.schedule_create(name="n", kind="arithmetic", params={"steps": 3}, crontab="*/5 * * * *",
                                     owner=owner, actor="cli")
    body = api.get(f"/api/schedules/{made.pk}/").json()
    assert (body["owner"], body["paused"], body["params"]) == ("alice", False, {"steps": 3})
    assert body["timing"].startswith("at crontab */5 * * * *")
    pk = body["id"]
    assert [s["id"] for s in api.get("/api/schedules/").json()] == [pk]
    assert theirs.get("/api/schedules/").json() == [] and theirs.get(f"/api/schedules/{pk}/").status_code == 404
    paused = api.post(f"/api/schedules/{pk}/pause/")
    assert paused.status_code == 202 and paused.json()["paused"] is True
    again = api.post(f"/api/schedules/{pk}/pause/")
    assert again.status_code == 409 and again.json()["detail"] == "schedule 'n' is paused already"
    assert api.post(f"/api/schedules/{pk}/resume/").json()["paused"] is False
    assert api.delete(f"/api/schedules/{pk}/").status_code == 204
    assert not Schedule.objects.exists() and not PeriodicTask.objects.filter(task="operations.fire_schedule").exists()
