"""The README's run command (`make run`) serves the product and a worker answers; Ctrl-C stops it."""

import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from tests.support.web import free_port, wait_until_answers
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs")]

SCRUBBED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "TAP_TEST_BACKEND",
            "TAP_VAR_DIR", "TAP_HEARTBEAT_LEASE", "PORT")


def test_make_run_serves_the_login_page_and_a_worker_answers(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["TAP_VAR_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}", f"VENV={sys.prefix}", "DEMO_ROWS=1000"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        page = wait_until_answers(f"{base}/accounts/login/", timeout=180, proc=proc, log=log_path.read_text)
        assert "Log in" in page.text
        text = log_path.read_text()
        assert "Username: demo" in text and "Password: demo" in text and base in text
        assert (tmp_path / "var" / "csv" / "demo-records.csv").is_file()

        session = requests.Session()
        session.get(f"{base}/accounts/login/")
        response = session.post(
            f"{base}/accounts/login/",
            data={"username": "demo", "password": "demo",
                  "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": f"{base}/accounts/login/"},
        )
        assert response.status_code == 200 and response.url == f"{base}/operations/"
        assert "Your operations" in response.text and "demo" in response.text
        assert session.get(f"{base}/static/operations/operations.css").status_code == 200

        # The worker started by `make run` answers a task sent through the same broker.
        answer = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from operations.tasks import ping; print(ping.delay('smoke').get(timeout=60)['pong'])"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
        )
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip().endswith("smoke")
    finally:
        group = [p for p in psutil.process_iter(["pid"]) if _in_group(p, proc.pid)]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        gone, alive = psutil.wait_procs(group, timeout=60)
        for p in alive:
            p.kill()
    text = log_path.read_text()
    assert not alive, f"still running after Ctrl-C: {alive}\n{text}"
    for name in ("web", "worker", "beat"):
        assert f"{name}.1 stopped" in text, text


def _in_group(process, pgid):
    try:
        return os.getpgid(process.pid) == pgid
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
