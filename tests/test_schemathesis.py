"""Schemathesis against the live server: every check, positive and negative data, stateful.

The API's schema (GET /api/schema/) is what clients and docs read; this test holds the server to
it with a fuzzer nobody here wrote. Zero failures is the bar (issue 12). The seed is fixed so a
failure reproduces (``TAP_SCHEMATHESIS_SEED`` picks another, ``TAP_SCHEMATHESIS_EXAMPLES`` more
examples per operation); a failure prints Schemathesis' report, with a curl line per case.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from operations.catalogue import all_kinds
from operations.contrib.demo.conf import conf as demo_conf
from operations.contrib.demo.files import write_demo_csv
from tapproject.celery import app as celery_app

ST = Path(sys.executable).with_name("st")
HOOKS = "tests.support.schemathesis_hooks"
SEED = os.environ.get("TAP_SCHEMATHESIS_SEED", "1")
EXAMPLES = os.environ.get("TAP_SCHEMATHESIS_EXAMPLES", "30")


@pytest.fixture
def server_csv_files():
    """Two demo files in the CSV folder, so a start by ``path`` has files to name (the schema
    lists them); removed afterwards, as other tests count that folder's files."""
    folder = Path(demo_conf.CSV_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    made = [folder / "st-records.csv", folder / "st-people.csv"]
    write_demo_csv(made[0], rows=20)
    write_demo_csv(made[1], rows=20, fmt="people")
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def test_schemathesis_finds_nothing(live_server, transactional_db, settings, server_csv_files, tmp_path):
    settings.TAP_CONTROL_THROTTLE = "100000/min"  # the verbs' logic, not the throttle, under test
    settings.TAP_TERMINATE_TIMEOUT = 0.3  # each terminate of an active operation waits this long for workers
    user = User.objects.create_user("fuzzer", password="pw-fuzzer-1234")
    token = Token.objects.create(user=user).key
    headers = {kind.name: list(kind.form.header) for kind in all_kinds() if hasattr(kind.form, "header")}
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "TAP_SCHEMATHESIS_HEADERS": json.dumps(headers),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [str(ST), "run", f"{live_server.url}/api/schema/", "--checks", "all", "--mode", "all",
               "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", EXAMPLES, "--seed", SEED,
               "-H", f"Authorization: Token {token}", "--no-color", "--report", "junit",
               "--report-dir", str(tmp_path)]
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        celery_app.control.purge()  # the starts it made wait in the broker for no worker: drop them
    summary = run.stdout[run.stdout.rfind("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    assert "API Operations:" in summary and "Tested: 21" in summary, summary
