"""In a real browser (Debian's Chromium driven by Playwright), against a live server and a real worker.

These tests also make the screenshots in docs/screenshots/ that the README shows.
"""

import os
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from operations import services
from operations.contrib.demo.kinds.arithmetic import expected_result
from operations.models import Operation
from operations.states import Status
from tests.conftest import IN_CI
from tests.support.ops import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.backends("sqlite-fs")]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls in these tests are
    # ordinary blocking calls made between browser actions.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, worker, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=live_server.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


def shot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def progress_value(page):
    return int(page.locator("#live .progress.big").get_attribute("aria-valuenow"))


def test_sign_up_start_watch_pause_resume_complete(page):
    page.goto("/accounts/signup/")
    page.fill("#id_username", "browser-user")
    page.fill("#id_password1", "a-long-passphrase-42")
    page.fill("#id_password2", "a-long-passphrase-42")
    page.click("button[type=submit]")
    page.wait_for_url("**/operations/")

    page.click("text=New operation")
    page.click("text=Arithmetic chain")
    page.fill("#id_steps", "8")
    page.fill("#id_delay", "0.7")
    page.click("button:has-text('Start')")
    page.wait_for_url(re.compile(r".*/operations/\d+/$"))
    operation_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    page.locator("#live [data-status=running]").wait_for()

    first = progress_value(page)
    page.wait_for_function(f"() => +document.querySelector('#live .progress.big').getAttribute('aria-valuenow') > {first}")
    shot(page, "detail-running")

    page.click("#live button:has-text('Pause')")
    page.locator("#live [data-status=paused]").wait_for()  # swapped in by htmx: no reload
    assert "Paused" in page.locator("#live .badge").inner_text()
    paused_at = progress_value(page)
    assert 0 < paused_at < 100
    shot(page, "detail-paused")

    page.click("#live button:has-text('Resume')")
    page.locator("#live [data-status=completed]").wait_for(timeout=30_000)
    assert page.locator("[data-testid=result]").inner_text() == str(expected_result(4, 8))
    assert Operation.objects.get(pk=operation_id).status == Status.COMPLETED

    page.goto("/operations/")
    shot(page, "list")


def test_admin_pauses_three_running_operations(page):
    User.objects.create_superuser("admin-user", password="pw-admin-12345")
    running = [services.operation_start(kind="arithmetic", params={"steps": 30, "delay": 0.5}, actor="cli")
               for _ in range(3)]
    finished = services.operation_start(kind="arithmetic", params={"steps": 1}, actor="cli")
    wait_for(finished.pk, lambda op: op.status == Status.COMPLETED)

    page.goto("/admin/login/?next=/admin/operations/operation/")
    page.fill("#id_username", "admin-user")
    page.fill("#id_password", "pw-admin-12345")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/operations/operation/")
    for operation in running:
        page.check(f"input[name=_selected_action][value='{operation.pk}']")
    page.select_option("select[name=action]", "pause")
    page.click("button[name=index]")
    page.locator("text=Pause: 3 operation(s) changed.").wait_for()

    for operation in running:
        wait_for(operation.pk, lambda op: op.status == Status.PAUSED)
    page.goto("/admin/operations/operation/")
    assert page.locator(".tap-badge.tap-paused").count() == 3
    shot(page, "admin-changelist")
    for operation in running:
        services.operation_cancel(operation=operation, actor="cli")


def test_a_resume_from_the_cli_shows_on_open_pages_without_a_reload(page, subprocess_env):
    """Issue 12: the paused detail page, /operations/ and the admin changelist follow a resume
    made elsewhere (here the CLI) within 3 s; the stale "pause requested" flash goes away."""
    import subprocess
    import sys

    from tests.support.worker import ROOT

    User.objects.create_superuser("watcher", password="pw-watcher-12345")
    page.goto("/admin/login/?next=/operations/")
    page.fill("#id_username", "watcher")
    page.fill("#id_password", "pw-watcher-12345")
    page.click("input[type=submit]")
    page.wait_for_url("**/operations/")

    operation = services.operation_start(kind="arithmetic", params={"steps": 40, "delay": 0.4},
                                         owner=User.objects.get(username="watcher"), actor="cli")
    page.goto(f"/operations/{operation.pk}/")
    page.click("#live button:has-text('Pause')")
    page.locator("#live [data-status=paused]").wait_for()
    page.wait_for_function("() => !document.querySelector('ul.messages li.tap-status-pause_requested')")
    assert page.locator("li.message").count() == 0  # the "pause requested" flash, overtaken: gone

    listing, admin, change = page.context.new_page(), page.context.new_page(), page.context.new_page()
    change.goto(f"/admin/operations/operation/{operation.pk}/change/")
    change.locator(".tap-badge", has_text="Paused").first.wait_for()
    assert change.locator("button[data-verb=resume]").count() == 1
    listing.goto("/operations/")
    listing.locator(f"[data-operation='{operation.pk}'][data-status=paused]").wait_for()
    admin.goto("/admin/operations/operation/")
    admin.locator("#result_list .tap-badge", has_text="Paused").first.wait_for()

    resumed = subprocess.run([sys.executable, "manage.py", "operations", "resume", str(operation.pk)], cwd=ROOT,
                             env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    page.locator("#live [data-status=running]").wait_for(timeout=3_000)
    listing.locator(f"[data-operation='{operation.pk}'][data-status=running]").wait_for(timeout=3_000)
    admin.locator("#result_list .tap-badge", has_text="Running").first.wait_for(timeout=3_000)
    change.locator(".tap-badge", has_text="Running").first.wait_for(timeout=3_000)
    assert change.locator("button[data-verb=pause]").count() == 1  # the buttons follow the status
    services.operation_cancel(operation=operation.pk, actor="cli")


def test_the_api_docs_render_with_nothing_fetched_from_outside(page, live_server):
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto("/api/docs/")
    page.get_by_text("/api/operations/{id}/pause/").first.wait_for()
    assert page.locator(".opblock").count() >= 7  # list, start, read and the four verbs
    outside = [url for url in fetched if not url.startswith(live_server.url)]
    assert outside == [] and any(url.endswith("/api/schema/") for url in fetched), fetched
    shot(page, "api-docs")
