"""The disk under the embedded default's files fills up in the middle of a run (issue 11).

The embedded default keeps everything in one folder: the SQLite database (with its WAL) and the
filesystem broker's queue. Here that folder is a small tmpfs of its own, with a worker (under its
supervisor, as ``make run`` runs it) and beat pointed at it. At a seeded point of a CSV import or
a chain a filler file takes every free byte; after longer than the heartbeat lease it is removed.
Nothing else happens — nobody resumes or retries: the operation must end ``completed`` with
exactly its rows, and its history may hold only the worker's and beat's changes. (A step that
meets the full disk is not failed: operations/outages.py.)
"""

import errno
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from operations.models import OperationEvent
from tests.conftest import BACKEND
from tests.faults.test_faults import SEEDS, WORKLOADS, aftermath, verdict, workloads
from tests.support.worker import ROOT, BeatProcess, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs")]

DISK_MB = 48


@contextmanager
def small_disk(folder, megabytes):
    """A tmpfs of ``megabytes`` at ``folder``, unmounted afterwards whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # a run that died left it
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder):
    """Write a filler file until the disk says it is full; returns its path."""
    filler, block = folder / "filler", b"\0" * (256 * 1024)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    for size in (16 * 1024, 1024, 1):  # and the last fragments of a block
        try:
            with open(filler, "ab", buffering=0) as out:
                while True:
                    out.write(b"\0" * size)
        except OSError:
            pass
    return filler


@contextmanager
def database_at(path):
    """This process's ORM on the database at ``path`` (the small disk's), for the checks."""
    saved = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = str(path)
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = saved


def manage(env, *args):
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def row(db, operation_id):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as reader:
        return reader.execute("SELECT status, progress_done FROM operations_operation WHERE id = ?",
                              [operation_id]).fetchone()


def wait_row(db, operation_id, predicate, timeout, what):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = row(db, operation_id)
        except sqlite3.OperationalError:  # busy for a moment
            pass
        if last and predicate(*last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"operation {operation_id}: {what} not reached in {timeout}s; it is {last}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("workload_name", WORKLOADS)
def test_the_disk_fills_up_mid_run_and_space_comes_back(transactional_db, subprocess_env, worker_log_dir,
                                                        workload_name, seed):
    rng, started = random.Random(f"disk-full-{workload_name}-{seed}"), time.monotonic()
    workload = workloads(rows_per_second=4000, step_delay=0.3)[workload_name]
    mount = Path(settings.VAR_DIR) / "small-disk"
    with small_disk(mount, DISK_MB) as disk:
        db = disk / "db.sqlite3"
        env = {**subprocess_env, "TAP_VAR_DIR": str(disk), "DATABASE_URL": f"sqlite:///{db}",
               "TAP_CSV_DIR": str(settings.TAP_CSV_DIR)}  # the input file is not on the small disk
        manage(env, "migrate", "--noinput")
        worker = WorkerProcess(env, worker_log_dir / f"disk-worker-{workload_name}-{seed}.log", supervised=True).start()
        beat = BeatProcess(env, worker_log_dir / f"disk-beat-{workload_name}-{seed}.log", disk / "beat-schedule").start()
        try:
            worker.wait_started()
            beat.wait_reconciling()
            params = [f"--param={name}={value}" for name, value in workload.params.items()]
            operation_id = json.loads(manage(env, "operations", "start", workload.kind, *params, "--json"))["id"]
            point = int(workload.total * rng.uniform(0.1, 0.7))
            wait_row(db, operation_id, lambda status, done: done >= point, 60, f"progress {point}")
            filler = fill(disk)
            full_for = settings.TAP_HEARTBEAT_LEASE + rng.uniform(2, 6)
            time.sleep(full_for)
            stalled = row(db, operation_id)
            filler.unlink()
            wait_row(db, operation_id, lambda status, done: status == "completed", 120, "completed, unattended")
        finally:
            beat.stop()
            worker.stop()
        with database_at(db):
            start = OperationEvent.objects.filter(operation_id=operation_id).order_by("id").first()
            verdict("disk-full", workload, seed, operation_id, aftermath(operation_id, start.pk), started,
                    disk_mb=DISK_MB, full_seconds=round(full_for, 1), while_full=list(stalled))
    assert BACKEND == "sqlite-fs"
    assert os.path.ismount(mount) is False
