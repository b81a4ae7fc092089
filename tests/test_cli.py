"""``manage.py operations`` as scripts use it: subprocesses, exit codes, JSON (contract in DESIGN §5)."""

import json
import subprocess
import sys

import pytest

from operations.contrib.demo.kinds.arithmetic import expected_result
from tests.support.ops import wait_status
from tests.support.worker import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis")]


@pytest.fixture
def cli(worker, subprocess_env):
    def run(*args, check=True):
        result = subprocess.run([sys.executable, "manage.py", "operations", *args], cwd=ROOT, env=subprocess_env,
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result
    return run


def test_start_watch_show_list_and_count(cli):
    started = json.loads(cli("start", "arithmetic", "--param", "steps=6", "--param", "delay=0.6", "--json").stdout)
    assert started["status"] == "running" and started["params"] == {"x": 4, "steps": 6, "delay": 0.6}

    watched = cli("show", str(started["id"]), "--watch").stdout
    bars = [line for line in watched.splitlines() if line.startswith(f"#{started['id']} ")]
    assert len(bars) >= 2 and "[" in bars[0] and bars[-1].endswith("Completed")
    assert "6/6 (100%)" in bars[-1]

    shown = json.loads(cli("show", str(started["id"]), "--json").stdout)
    for key in ("id", "kind", "status", "owner", "params", "progress", "result", "error", "run_token",
                "created_at", "started_at", "finished_at", "updated_at", "events"):
        assert key in shown, key
    assert shown["result"] == expected_result(4, 6) and shown["progress"]["done"] == 6
    assert [(e["from_status"], e["to_status"], e["actor"]) for e in shown["events"]] == [
        ("", "running", "cli"), ("running", "completed", "worker")]
    assert all(set(e) >= {"at", "actor", "from_status", "to_status", "note"} for e in shown["events"])

    listed = json.loads(cli("list", "--status", "completed", "--json").stdout)
    assert started["id"] in [item["id"] for item in listed]
    assert "Completed" in cli("list").stdout

    bulk = cli("start", "bulk_insert", "--param", "rows=500").stdout.strip()
    wait_status(int(bulk), "completed")
    assert cli("count", bulk).stdout.strip() == "500"
    refused = cli("count", str(started["id"]), check=False)
    assert refused.returncode != 0 and "stores no data rows" in refused.stderr


def test_pause_wait_resume_and_errors_on_stderr(cli):
    op_id = cli("start", "arithmetic", "--param", "steps=30", "--param", "delay=0.3").stdout.strip()
    paused = cli("pause", op_id, "--wait")
    assert paused.stdout.splitlines()[-1] == f"operation {op_id}: Paused"
    assert cli("resume", op_id).stdout.strip() == f"operation {op_id}: Running"
    cancelled = cli("cancel", op_id, "--wait")
    assert cancelled.stdout.splitlines()[-1] == f"operation {op_id}: Cancelled"

    bad = cli("start", "arithmetic", "--param", "steps=zero", check=False)
    assert bad.returncode != 0 and "steps: Enter a whole number." in bad.stderr
    unknown = cli("start", "nope", check=False)
    assert unknown.returncode != 0 and "unknown operation kind 'nope'" in unknown.stderr
    missing = cli("show", "999999", check=False)
    assert missing.returncode != 0 and "operation 999999 does not exist" in missing.stderr
    assert "csv_import" in cli("kinds").stdout


def test_watch_says_by_its_exit_code_how_the_operation_ended(cli, tmp_path):
    failing = cli("start", "records", "--param", "steps=1000", "--param", "delay=0.05").stdout.strip()
    wait_status(int(failing), "running")
    cancelled = cli("cancel", failing, "--wait")
    assert cancelled.stdout.strip().splitlines()[-1] == f"operation {failing}: Cancelled"
    assert len(cancelled.stdout.strip().splitlines()) <= 2  # the result once, not twice
    watched = cli("show", failing, "--watch", check=False)
    assert watched.returncode == 3 and "ended cancelled" in watched.stderr, watched

    counter = tmp_path / "counter"
    failed = cli("start", "flaky", f"--param=counter={counter}", "--param=fail_times=5", "--param=max_retries=0").stdout.strip()
    watched = cli("show", failed, "--watch", check=False)
    assert watched.returncode == 1 and "ended failed: " in watched.stderr and "flaky failure" in watched.stderr, watched

    done = cli("start", "arithmetic", "--param", "steps=3", "--param", "delay=0.3").stdout.strip()
    watched = cli("show", done, "--watch")
    assert "/s" in watched.stdout  # a rate once it has moved
    assert watched.stdout.splitlines()[-1].endswith("Completed")


def test_cancel_wait_of_a_paused_operation_reports_once(cli):
    op_id = cli("start", "arithmetic", "--param", "steps=30", "--param", "delay=0.3").stdout.strip()
    cli("pause", op_id, "--wait")
    cancelled = cli("cancel", op_id, "--wait").stdout.strip().splitlines()
    assert cancelled == [f"operation {op_id}: Cancelled"]


def test_kinds_json_describes_every_kind_and_its_parameters(cli):
    kinds = {kind["name"]: kind for kind in json.loads(cli("kinds", "--json").stdout)}
    assert {"arithmetic", "csv_import", "csv_summary", "bulk_insert", "batch_sum"} <= set(kinds)
    steps = {p["name"]: p for p in kinds["arithmetic"]["params"]}["steps"]
    assert steps["type"] == "integer" and steps["required"] in (True, False)
    assert any(p["type"] == "file" for p in kinds["csv_import"]["params"])


def test_make_csv_neither_replaces_a_file_nor_makes_folders_unasked(cli, tmp_path):
    target = tmp_path / "rows.csv"
    assert cli("make-csv", str(target), "--rows", "3").returncode == 0
    first = target.read_text()
    again = cli("make-csv", str(target), "--rows", "5", check=False)
    assert again.returncode != 0 and "exists; add --force" in again.stderr and target.read_text() == first
    assert cli("make-csv", str(target), "--rows", "5", "--force").returncode == 0
    assert len(target.read_text().splitlines()) == 6
    deeper = tmp_path / "new" / "rows.csv"
    refused = cli("make-csv", str(deeper), "--rows", "3", check=False)
    assert refused.returncode != 0 and "does not exist; add --parents" in refused.stderr
    assert not deeper.parent.exists()
    assert cli("make-csv", str(deeper), "--rows", "3", "--parents").returncode == 0 and deeper.exists()
