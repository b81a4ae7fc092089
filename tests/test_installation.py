"""The operations app as other projects get it: its wheel, and a bare host that follows the docs.

The host is a fresh ``django-admin startproject`` with the wheel installed in a new venv and only
what docs/installation.md says (no TAP_* settings, no REST_FRAMEWORK, no templates of its own),
plus a kind of its own with an in-step checkpoint and a compensation. A real worker, beat and web
server run it on PostgreSQL + Redis: pause, resume, cancel and retry through the CLI and the API.
"""

import json
import os
import time

import pytest
import requests

from tests.support.host import Host, build_wheel, make_venv, run, stop, wheel_files
from tests.support.web import free_port, wait_until_answers


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_the_operations_app_and_nothing_else_of_the_repository(wheel):
    files = wheel_files(wheel)
    packages = {name.split("/", 1)[0] for name in files}
    assert packages == {"operations", "django_tappable-0.1.0.dist-info"}, packages
    for expected in ("operations/py.typed", "operations/migrations/0002_operations.py",
                     "operations/templates/operations/base.html",
                     "operations/templates/operations/_form_fields.html",
                     "operations/templates/admin/operations/cancel_confirmation.html",
                     "operations/static/operations/operations.css",
                     "operations/static/operations/htmx.min.js",
                     "operations/management/commands/operations.py",
                     "operations/brokers/redis.py",
                     "operations/contrib/demo/migrations/0001_initial.py"):
        assert expected in files, expected
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    metadata = next(name for name in files if name.endswith("/METADATA"))
    import zipfile

    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Name: django-tappable" in text and "Version: 0.1.0" in text
    assert "Requires-Dist: celery" in text and "Requires-Dist: django-celery-beat" in text


def test_pip_install_dot_in_a_fresh_venv_installs_that_wheel(tmp_path, wheel):
    python = make_venv(tmp_path, wheel)
    code = ("import operations, importlib.metadata as m, pathlib; "
            "print(pathlib.Path(operations.__file__).resolve()); print(m.version('django-tappable'))")
    where, version = run([python, "-c", code], cwd=tmp_path).stdout.split()
    assert where.startswith(str(tmp_path / "venv")), where  # the wheel's copy, not this checkout's
    assert version == "0.1.0"


# --- a host of its own ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_database():
    """A PostgreSQL database of the host's own, dropped afterwards."""
    import psycopg

    slot = os.environ.get("TAP_TEST_SLOT", "")
    name = f"tapproject_host{'_' + slot if slot else ''}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": "postgres", "HOST": "127.0.0.1",
           "PORT": "5432"}
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def host_broker():
    import redis

    slot = os.environ.get("TAP_TEST_SLOT", "")
    url = f"redis://127.0.0.1:6379/{15 - int(slot or 0)}"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


class Watch:
    """Reads the host's operation rows straight from its database (observing, never writing)."""

    def __init__(self, database):
        import psycopg

        self.connection = psycopg.connect(dbname=database["NAME"], user="postgres", host="127.0.0.1",
                                          autocommit=True)

    def row(self, operation_id):
        return self.connection.execute(
            "SELECT status, progress_done, error, result FROM operations_operation WHERE id = %s",
            [operation_id]).fetchone()

    def until(self, operation_id, predicate, what, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(operation_id)
            if row and predicate(*row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"operation {operation_id}: {what} not reached in {timeout}s; row {row}")
            time.sleep(0.1)

    def status(self, operation_id, *statuses, timeout=60):
        return self.until(operation_id, lambda status, *_: status in statuses, f"status {statuses}", timeout)

    def tables(self):
        return {name for (name,) in self.connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def events(self, operation_id):
        return self.connection.execute(
            "SELECT actor, from_status, to_status FROM operations_operationevent WHERE operation_id = %s "
            "ORDER BY at, id", [operation_id]).fetchall()


@pytest.mark.integration
@pytest.mark.backends("pg-redis")
def test_a_bare_host_runs_a_kind_of_its_own_with_a_real_worker_and_beat(tmp_path, wheel, host_database,
                                                                      host_broker):
    host = Host(tmp_path, make_venv(tmp_path, wheel), database=host_database, broker_url=host_broker).create()

    # The docs' settings are all it takes: no system-check message at all, before or after migrate.
    assert "System check identified no issues (0 silenced)." in host.manage("check").stdout
    host.manage("makemigrations", "shop")
    host.manage("migrate", "--noinput")
    assert "System check identified no issues" in host.manage("check", "--database", "default").stdout
    watch = Watch(host_database)
    tables = watch.tables()
    assert {"operations_operation", "operations_operationevent", "shop_item"} <= tables
    assert not [t for t in tables if t.startswith("operations_demo") or "record" in t], tables  # no demo

    kinds = host.manage("operations", "kinds").stdout
    assert "restock" in kinds
    for demo in ("arithmetic", "csv_import", "csv_summary", "bulk_insert", "batch_sum"):
        assert demo not in kinds

    host.manage("createsuperuser", "--noinput", "--username", "boss", "--email", "boss@example.com",
                env={"DJANGO_SUPERUSER_PASSWORD": "a-long-passphrase-42"})
    # A row whose worker went silent an hour ago (as if its message was lost): beat's reconciler,
    # put on Celery's own scheduler by the app, must mark it interrupted.
    lost = int(host.manage("shell", "-c", (
        "from datetime import timedelta; from django.utils import timezone; "
        "from operations.models import Operation; "
        "print(Operation.objects.create(kind='restock', status='running', "
        "heartbeat_at=timezone.now() - timedelta(hours=1)).pk)")).stdout.split()[-1])

    port = free_port()
    worker = beat = web = None
    try:
        worker = host.popen(["-m", "celery", "-A", "hostsite", "worker", "--loglevel", "INFO", "--concurrency",
                             "2", "--without-gossip", "--without-mingle"], "worker.log")
        beat = host.popen(["-m", "celery", "-A", "hostsite", "beat", "--loglevel", "INFO", "--schedule",
                           tmp_path / "beat-schedule"], "beat.log")
        web = host.popen(["manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], "web.log")
        base = f"http://127.0.0.1:{port}"
        api = requests.Session()
        api.auth = ("boss", "a-long-passphrase-42")  # DRF's default basic auth: the host set nothing
        wait_until_answers(f"{base}/api/operations/", session=api, proc=web, log=lambda: host.log("web.log"))

        def cli(*args):
            return host.manage("operations", *args).stdout

        def api_post(path, body=None):
            return api.post(f"{base}/api/operations/{path}", json=body, timeout=10)

        # 1. Started from the CLI; paused through the API, inside the step (at a checkpoint).
        started = json.loads(cli("start", "restock", "--param", "items=1000", "--param", "chunk=10",
                                 "--param", "delay=0.1", "--owner", "boss", "--json"))
        op = started["id"]
        watch.until(op, lambda status, done, *_: done >= 20, "some items stocked")
        assert api_post(f"{op}/pause/").status_code == 202
        _, paused_at, _, _ = watch.status(op, "paused")
        assert 0 < paused_at < 1000
        assert cli("count", str(op)).strip() == str(paused_at)  # the checkpoint and its rows, together
        # 2. Resumed from the CLI, paused from the CLI, resumed through the API.
        assert "Running" in cli("resume", str(op))
        watch.until(op, lambda status, done, *_: done > paused_at, "progress after the resume")
        assert "Paused" in cli("pause", str(op), "--wait")
        assert api_post(f"{op}/resume/").status_code == 202
        # 3. Cancelled through the API: the compensation removes every item it stocked.
        assert api_post(f"{op}/cancel/").status_code == 202
        watch.status(op, "cancelled")
        assert cli("count", str(op)).strip() == "0"
        refused = api_post(f"{op}/resume/")
        assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]

        # 4. Started through the API, failed inside its step, retried from the CLI: it goes on
        #    from its last checkpoint and completes.
        response = api_post("", {"kind": "restock", "params": {"items": 40, "fail_marker": str(tmp_path / "m1")}})
        assert response.status_code == 201, response.text
        failing = response.json()["id"]
        _, _, error, _ = watch.status(failing, "failed")
        assert "the supplier is down" in error
        assert "Running" in cli("retry", str(failing))
        _, done, _, result = watch.status(failing, "completed")
        assert done == 40 and cli("count", str(failing)).strip() == "40"
        # The app's PostgreSQL session setting reached the host's worker: the lease, 120 s.
        assert result == {"stocked": 40, "idle_in_transaction_session_timeout": "2min"}

        # 5. … and retried through the API.
        second = json.loads(cli("start", "restock", "--param", "items=20", "--param",
                                f"fail_marker={tmp_path / 'm2'}", "--owner", "boss", "--json"))["id"]
        watch.status(second, "failed")
        assert api_post(f"{second}/retry/").status_code == 202
        watch.status(second, "completed")

        # 6. The pages and the schema answer, with the app's own templates and static files.
        anonymous = requests.get(f"{base}/operations/", allow_redirects=False, timeout=10)
        assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/admin/login/")
        browser = requests.Session()
        login = browser.get(f"{base}/admin/login/", timeout=10)
        assert login.status_code == 200
        browser.post(f"{base}/admin/login/?next=/operations/", timeout=10, data={
            "username": "boss", "password": "a-long-passphrase-42", "next": "/operations/",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"]}, headers={"Referer": f"{base}/admin/login/"})
        for path in ("/operations/", f"/operations/{op}/", f"/operations/{failing}/", "/operations/new/",
                     f"/operations/{op}/progress/", "/static/operations/operations.css"):
            page = browser.get(f"{base}{path}", timeout=10)
            assert page.status_code == 200, (path, page.status_code, page.text[:500])
        assert "Restock the shop" in browser.get(f"{base}/operations/new/", timeout=10).text
        schema = api.get(f"{base}/api/schema/", timeout=10)
        assert schema.status_code == 200, schema.text[:2000]
        assert "/api/operations/{id}/pause/" in schema.text and "Operations API" in schema.text
        listing = api.get(f"{base}/api/operations/", timeout=10).json()
        assert listing["count"] == 4 and len(listing["results"]) == 4  # the app's own paging

        # 7. Beat's reconciler ran in this host (every 30 s by default) and found the silent one.
        watch.status(lost, "interrupted", timeout=90)
        assert ("beat", "running", "interrupted") in watch.events(lost)
        # The worker publishes and consumes through the app's Redis transport.
        assert "operations.brokers.redis:Transport" in host.log("worker.log")
    finally:
        for process in (web, beat, worker):
            stop(process)
    assert "Traceback" not in host.log("web.log"), host.log("web.log")[-3000:]
