"""A client of the original batch service keeps working, with only an auth header added."""

import time

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis")]


def test_replay_of_the_original_batch_service_calls(worker):
    user = User.objects.create_user("batcher")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    tasks = [{"paramA": 1, "paramB": 5}, {"paramA": 2, "paramB": 7}, {"paramA": 10, "paramB": -3},
             {"paramA": 0.5, "paramB": 0.25}]

    created = client.post("/grouptasks", {"tasks": tasks}, format="json")
    assert created.status_code == 200, created.content
    body = created.json()
    assert set(body) == {"groupTaskId", "taskIds"} and len(body["taskIds"]) == 4

    deadline = time.monotonic() + 60
    while True:
        group = client.get(f"/grouptasks/{body['groupTaskId']}").json()
        assert set(group) == {"groupTaskId", "grouptaskProcessed", "grouptaskSucceeded", "results",
                              "tasksCompleted", "tasksTotal"}
        assert group["tasksTotal"] == 4 and 0 <= group["tasksCompleted"] <= 4
        assert len(group["results"]) == group["tasksCompleted"] and None not in group["results"]  # finished only
        if group["grouptaskProcessed"]:
            break
        assert time.monotonic() < deadline, group
        time.sleep(0.1)
    assert group == {"groupTaskId": body["groupTaskId"], "grouptaskProcessed": True, "grouptaskSucceeded": True,
                     "results": [6, 9, 7, 0.75], "tasksCompleted": 4, "tasksTotal": 4}

    task = client.get(f"/tasks/{body['taskIds'][1]}").json()
    assert task == {"taskId": body["taskIds"][1], "taskState": "SUCCESS", "taskSucceeded": True,
                    "result": 9, "resultReady": True}
    unknown = client.get("/tasks/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404  # as for another user's task: ids cannot be probed
    assert APIClient().get(f"/grouptasks/{body['groupTaskId']}").status_code == 401
    bad = client.post("/grouptasks", {"tasks": [{"paramA": "x", "paramB": 1}]}, format="json")
    assert bad.status_code == 400 and "tasks[0].paramA: must be a number" in bad.json()["detail"]
