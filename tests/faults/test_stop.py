"""Ctrl-C of `make run` at a random moment leaves nothing of it running within 10 s (issue 11).

`make run` ends in `honcho start` (after its set-up); the test sets up once, then starts honcho
the same way for each round and sends it SIGINT — what Ctrl-C in a terminal sends it — while the
processes boot, while idle, or while a worker is inside a step (a bulk insert, between and during its
checkpoints). Every process of the run is found by its TAP_VAR_DIR, whatever process group or
session it made for itself.
"""

import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.web import free_port, wait_until_answers
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs")]

ROUNDS = 2 * int(os.environ.get("TAP_FAULT_ROUNDS", "1"))  # make faults: 20
SCRUBBED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "TAP_TEST_BACKEND",
            "TAP_VAR_DIR", "TAP_HEARTBEAT_LEASE", "PORT", "TAP_TEST_SLOT")


def processes_of(var_dir):
    """Every live process whose environment names this run's TAP_VAR_DIR (zombies are gone)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.status() == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            if process.environ().get("TAP_VAR_DIR") == str(var_dir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("run") / "var"
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["TAP_VAR_DIR"] = str(var_dir)
    subprocess.run(["make", "--no-print-directory", "setup", f"VENV={sys.prefix}", "DEMO_ROWS=1000"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    return env, var_dir


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_ctrl_c_of_make_run_at_a_random_moment_leaves_nothing_within_10_s(run_env, seed, tmp_path):
    env, var_dir = run_env
    rng = random.Random(f"ctrl-c-{seed}")
    moment = ["booting", "idle", "mid-step"][seed % 3]
    port = free_port()
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        honcho = subprocess.Popen(
            [f"{sys.prefix}/bin/honcho", "start"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "PATH": f"{sys.prefix}/bin:{env['PATH']}", "GUNICORN_BIND": f"127.0.0.1:{port}"},
            start_new_session=True,
        )
    try:
        if moment == "booting":
            time.sleep(rng.uniform(0.2, 3))
        else:
            wait_until_answers(f"http://127.0.0.1:{port}/healthz/", proc=honcho, log=log_path.read_text)
            if moment == "mid-step":  # 20k rows a second, a checkpoint every 5k: its step runs for seconds
                subprocess.run([sys.executable, "manage.py", "operations", "start", "bulk_insert", "--param",
                                "rows=200000", "--param", "chunk_rows=5000", "--param", "rows_per_second=20000"],
                               cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
                time.sleep(rng.uniform(1, 4))
            else:
                time.sleep(rng.uniform(0, 2))
        running = processes_of(var_dir)
        assert len(running) >= 3, (moment, running)  # honcho, and what it started
        stopped_at = time.monotonic()
        os.kill(honcho.pid, signal.SIGINT)  # what Ctrl-C sends honcho
        left = processes_of(var_dir)
        while left and time.monotonic() - stopped_at < 10:
            time.sleep(0.2)
            left = processes_of(var_dir)
        took = time.monotonic() - stopped_at
    finally:
        for process in processes_of(var_dir):  # whatever would be left, so the next round is clean
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    assert not left, f"{moment}: still running {took:.1f}s after Ctrl-C: " + ", ".join(
        f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left) + "\n" + log_path.read_text()[-3000:]
