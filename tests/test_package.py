"""The operations app as a package: its front door, its settings' documentation, and how its
faces behave whatever the host's settings (DRF's, templates, LOGIN_URL)."""

import re
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authentication import (
    BasicAuthentication,
    SessionAuthentication,
    TokenAuthentication,
)

import operations
from operations import api, integration
from operations.conf import AppSettings
from tests.support.worker import ROOT

DOCS = ROOT / "docs"


def test_the_front_door_exports_the_public_api():
    for name in ("step", "Kind", "KindForm", "register_kind", "StepContext", "operation_start",
                 "operation_pause", "operation_resume", "operation_cancel", "operation_retry", "operation_fork",
                 "OperationError", "TransitionRefused", "InvalidParams"):
        assert name in operations.__all__
    for name in operations.__all__:
        assert getattr(operations, name) is not None, name
    assert operations.operation_start.__module__ == "operations.services"
    assert operations.TransitionRefused.__module__ == "operations.exceptions"


def test_import_operations_needs_no_django_settings(tmp_path):
    """A host's settings module may import it (INSTALLED_APPS is read before apps are ready)."""
    code = "import operations, sys; print(operations.__version__); print('django.apps' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.1.0", "False"]


def test_docs_settings_lists_every_setting_and_every_check():
    text = (DOCS / "settings.md").read_text()
    for app_settings in AppSettings.instances:
        for option in app_settings.options():
            assert f"`{app_settings.setting_name(option.name)}`" in text, option.name
    source = (ROOT / "operations" / "checks.py").read_text()
    numbers = {int(n) for n in re.findall(r"_(?:error|warning)\((\d+),", source)}
    for number in numbers:
        assert re.search(rf"operations\.[EW]{number:03d}", text), number
    assert len(numbers) >= 14


def test_the_changelog_has_the_version():
    assert f"## [{operations.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


# --- the API, whatever REST_FRAMEWORK says ---------------------------------------------------------


def test_api_authentication_follows_the_host_with_token_auth_when_installed(settings):
    settings.REST_FRAMEWORK = {}  # DRF's defaults: session and basic
    assert api.authentication_classes() == [TokenAuthentication, SessionAuthentication, BasicAuthentication]
    settings.TAP_API_AUTHENTICATION_CLASSES = ["rest_framework.authentication.SessionAuthentication"]
    assert api.authentication_classes() == [SessionAuthentication]


@pytest.mark.django_db
def test_without_rest_framework_settings_the_api_still_pages_guards_and_describes_itself(settings):
    settings.REST_FRAMEWORK = {}
    user = User.objects.create_user("ann", password="pw-ann-12345")
    client = Client()
    assert client.get("/api/operations/").status_code in (401, 403)  # never AllowAny
    client.force_login(user)
    for _ in range(3):
        operations.operation_start(kind="arithmetic", params={"steps": 2}, owner=user, actor=user)
    settings.TAP_API_PAGE_SIZE = 2
    page = client.get("/api/operations/").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/operations/{id}/pause/" in schema.content


@pytest.mark.django_db
def test_a_drf_rate_for_the_scope_wins_over_the_setting(settings):
    from django.core.cache import cache

    settings.TAP_CONTROL_THROTTLE = "1000/min"
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"operation_control": "2/min"}}
    cache.clear()
    user = User.objects.create_user("bob", password="pw-bob-12345")
    client = Client()
    client.force_login(user)
    body = {"kind": "arithmetic", "params": {"steps": 1}}
    codes = [client.post("/api/operations/", body, content_type="application/json").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    cache.clear()


# --- the pages, with the app's own layout ----------------------------------------------------------


@pytest.mark.django_db
def test_the_pages_render_with_the_apps_own_base_template_and_follow_login_url(settings):
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": []}]  # none of tapproject's templates
    settings.LOGIN_URL = "/elsewhere/login/"
    client = Client()
    response = client.get("/operations/")
    assert response.status_code == 302 and response["Location"].startswith("/elsewhere/login/")
    user = User.objects.create_user("cy", password="pw-cy-123456")
    client.force_login(user)
    operation = operations.operation_start(kind="arithmetic", params={"steps": 2}, owner=user, actor=user)
    for path in ("/operations/", "/operations/new/", f"/operations/{operation.pk}/"):
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.content.decode()
        assert "operations/operations.css" in html and "Sign up" not in html  # the app's layout
        assert "base.html" not in [t.name for t in response.templates]  # tapproject's layout


# --- the PostgreSQL session settings of workers ------------------------------------------------------


class _Connection:
    def __init__(self, vendor, options=None):
        self.vendor = vendor
        self.settings_dict = {"OPTIONS": options or {}}


def test_worker_sessions_get_the_lease_as_idle_in_transaction_timeout(settings):
    settings.TAP_HEARTBEAT_LEASE = 120
    assert integration.session_settings(_Connection("postgresql"))["idle_in_transaction_session_timeout"] == "120000ms"
    sql, params = integration.session_settings_sql(_Connection("postgresql"))
    assert sql == "SELECT " + ", ".join(["set_config(%s, %s, false)"] * 5)
    assert params[:2] == ["idle_in_transaction_session_timeout", "120000ms"]
    settings.TAP_IDLE_IN_TRANSACTION_TIMEOUT = 30
    assert integration.session_settings(_Connection("postgresql"))["idle_in_transaction_session_timeout"] == "30000ms"
    settings.TAP_IDLE_IN_TRANSACTION_TIMEOUT = 0  # off: the server's settings stay, keepalives too
    assert integration.session_settings_sql(_Connection("postgresql")) is None
    del settings.TAP_IDLE_IN_TRANSACTION_TIMEOUT
    host_choice = {"options": "-c idle_in_transaction_session_timeout=5000"}
    assert "idle_in_transaction_session_timeout" not in integration.session_settings(_Connection("postgresql", host_choice))
    assert integration.session_settings_sql(_Connection("sqlite")) is None


def test_worker_sessions_are_ended_by_the_server_within_the_lease_when_their_host_vanishes(settings):
    """A session cut off mid-COPY is active, not idle in a transaction: the server's TCP keepalives
    and user timeout end it (tests/faults/test_partitions.py), within the same time."""
    settings.TAP_HEARTBEAT_LEASE = 120
    assert {name: value for name, value in integration.session_settings(_Connection("postgresql")).items()
            if name.startswith("tcp_")} == {
        "tcp_keepalives_idle": "60", "tcp_keepalives_interval": "20", "tcp_keepalives_count": "3",
        "tcp_user_timeout": "120000ms"}
    for seconds in (6, 7, 30, 120, 3600):  # idle + count × interval does not exceed the timeout
        tcp = integration.dead_client_settings(seconds * 1000)
        idle, interval, count = (int(tcp[f"tcp_keepalives_{n}"]) for n in ("idle", "interval", "count"))
        assert idle >= 1 and interval >= 1 and idle + count * interval <= seconds
        assert tcp["tcp_user_timeout"] == f"{seconds * 1000}ms"
    assert integration.dead_client_settings(500)["tcp_user_timeout"] == "2000ms"  # whole seconds, 2 at least
    host_choice = {"options": "-c tcp_keepalives_idle=300"}
    chosen = integration.session_settings(_Connection("postgresql", host_choice))
    assert "tcp_keepalives_idle" not in chosen and "tcp_user_timeout" in chosen
