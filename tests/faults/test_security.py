"""Security (issue 6): no off-site redirects, secrets only from the environment, throttled
controls, and nobody sees another user's operations or tasks."""

import ast
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse

from operations import services
from operations.models import Operation, StepMember
from operations.states import Status
from operations.workflow import member_task_id
from tests.test_interfaces import api_client, operation_in, page_client
from tests.test_settings import PRODUCTION_ENV, run_manage

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent.parent

OFF_SITE = ["https://evil.example/", "//evil.example/", "http://evil.example/operations/", "/\\evil.example/",
            "\\\\evil.example/", "https:evil.example", " //evil.example/", "javascript:alert(1)"]


@pytest.fixture
def user():
    return User.objects.create_user("ann", password="pw-ann-12345")


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["log-in-query", "log-in-form", "already-logged-in", "log-out"])
@pytest.mark.parametrize("target", OFF_SITE)
def test_log_in_and_out_never_redirect_off_site(user, target, where):
    client, credentials = Client(), {"username": "ann", "password": "pw-ann-12345"}
    if where == "log-in-query":
        response = client.post(f"{reverse('login')}?{urlencode({'next': target})}", credentials)
    elif where == "log-in-form":
        response = client.post(reverse("login"), {**credentials, "next": target})
    else:
        client.force_login(user)
        if where == "already-logged-in":
            response = client.get(f"{reverse('login')}?{urlencode({'next': target})}")
        else:
            response = client.post(f"{reverse('logout')}?{urlencode({'next': target})}")
    assert response.status_code == 302
    assert response["Location"] == reverse("login" if where == "log-out" else "operations:list")


def test_log_in_follows_an_on_site_next(user):
    response = Client().post(reverse("login") + "?next=/operations/new/?kind=arithmetic",
                             {"username": "ann", "password": "pw-ann-12345"})
    assert response.status_code == 302 and response["Location"] == "/operations/new/?kind=arithmetic"


@pytest.mark.parametrize("target", OFF_SITE)
def test_control_buttons_never_redirect_off_site(user, target):
    operation = operation_in(Status.RUNNING, user)
    response = page_client(user).post(reverse("operations:pause", args=[operation.pk]), {"next": target})
    assert response.status_code == 302
    assert response["Location"] == reverse("operations:detail", args=[operation.pk])
    assert Operation.objects.get(pk=operation.pk).status == Status.PAUSE_REQUESTED


def test_control_buttons_follow_an_on_site_next(user):
    operation = operation_in(Status.RUNNING, user)
    response = page_client(user).post(reverse("operations:pause", args=[operation.pk]), {"next": "/operations/"})
    assert response.status_code == 302 and response["Location"] == "/operations/"


# --- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", " " * 60])
def test_production_does_not_start_without_a_secret_key_from_the_environment(secret):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    if secret is not None:
        env["SECRET_KEY"] = secret
    result = run_manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in the environment for production" in result.stderr


def _dev_key():
    """The public fallback key of dev and test settings, read from base.py's source."""
    for node in ast.walk(ast.parse((ROOT / "tapproject" / "settings" / "base.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEV_ONLY_SECRET_KEY" for t in node.targets):
            return node.value.value
    raise AssertionError("base.py defines no DEV_ONLY_SECRET_KEY")


def test_production_refuses_the_published_dev_key():
    result = run_manage({**PRODUCTION_ENV, "SECRET_KEY": _dev_key()}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in the environment for production" in result.stderr


def _secret_literals(path):
    """String constants in the expressions assigned to SECRET_KEY in a settings module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SECRET_KEY" for t in node.targets):
            found += [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return [value for value in found if value not in ("SECRET_KEY", "")]


@pytest.mark.parametrize("module", ["base", "production"])
def test_production_settings_read_the_secret_only_from_the_environment(module):
    path = ROOT / "tapproject" / "settings" / f"{module}.py"
    source = path.read_text()
    assert 'SECRET_KEY = env("SECRET_KEY", "")' in source
    assert _secret_literals(path) == []  # no default key to fall back on
    assert _secret_literals(ROOT / "tapproject" / "settings" / "test.py")  # the check would see one


# --- throttles --------------------------------------------------------------------------------


@pytest.fixture
def three_per_minute(settings):
    settings.TAP_CONTROL_THROTTLE = "3/min"
    cache.clear()
    yield
    cache.clear()


def test_grouptasks_posts_are_throttled(user, three_per_minute):
    client = api_client(user)
    body = {"tasks": [{"paramA": 1, "paramB": 2}]}
    codes = [client.post("/grouptasks", body, format="json").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert Operation.objects.filter(kind="batch_sum").count() == 3  # the fourth started nothing


def test_resume_is_throttled(user, three_per_minute):
    operation = operation_in(Status.PAUSED, user)
    client = api_client(user)
    codes = [client.post(f"/api/operations/{operation.pk}/resume/").status_code for _ in range(4)]
    assert codes == [202, 409, 409, 429]
    operation.refresh_from_db()
    assert (operation.status, operation.run_token) == (Status.RUNNING, 2)


# --- other users' operations -------------------------------------------------------------------


def test_another_users_operation_and_batch_tasks_are_invisible(user):
    stranger = User.objects.create_user("eve", password="pw-eve-12345")
    operation = services.operation_start(kind="batch_sum", params={"tasks": [{"paramA": 1, "paramB": 2}]},
                                         owner=user, actor="cli")
    task_id = member_task_id(operation.pk, 0, 0)
    StepMember.objects.create(operation=operation, step_index=0, member_index=0, task_id=task_id)
    urls = [f"/api/operations/{operation.pk}/", f"/grouptasks/{operation.pk}", f"/tasks/{task_id}"]

    owner, other = api_client(user), api_client(stranger)
    assert [o["id"] for o in owner.get("/api/operations/").json()["results"]] == [operation.pk]
    assert other.get("/api/operations/").json()["results"] == []
    assert [owner.get(url).status_code for url in urls] == [200, 200, 200]
    assert [other.get(url).status_code for url in urls] == [404, 404, 404]
    unknown = ["/api/operations/999999/", "/grouptasks/999999", f"/tasks/{member_task_id(999999, 0, 0)}"]
    assert [other.get(url).json() for url in urls] == [owner.get(url).json() for url in unknown]
    with override_settings(SECRET_KEY="another-key-" + "x" * 50):  # not computable from the operation id alone
        assert member_task_id(operation.pk, 0, 0) != task_id
    assert other.post(f"/api/operations/{operation.pk}/cancel/").status_code == 404
    assert Operation.objects.get(pk=operation.pk).status == Status.RUNNING
