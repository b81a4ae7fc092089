"""A big CSV import with a fault in the middle, whose worker RSS stays flat (issue 11).

``TAP_SCALE_ROWS`` rows (default 300,000 for ``make test``; ``make faults``: 10,000,000, a
≈ 700 MB file) are imported by the session's worker, with beat running. At a seeded random point
between 30 % and 70 % the pool child running the step is SIGKILLed, as the OOM killer would;
nothing here acts for a person: the worker forks a new child, beat's reconciler marks the
operation interrupted after the lease and resumes it by the kind's policy. The import must end
with exactly its rows, and the resident memory of every pool child that ran it must stay flat:
after its warm-up (the first 10 % of the rows it imports) its peak grows by less than
``RSS_BOUND_MB``, whatever the file's size — and the worker's main process likewise.

The figures (rows/s, RSS at the start, peak and growth, time to recover) go to
var/faults/results.jsonl with the run (fault ``import-10m``). ``TAP_SCALE_ROUNDS`` (default 1)
sets the number of seeds: at 10M rows one per backend is the budget.
"""

import csv
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from operations import services
from operations.contrib.demo.conf import conf as demo_conf
from operations.models import Operation, OperationEvent
from operations.states import TERMINAL, Status
from tests.faults.checker import rows_checksum
from tests.faults.test_faults import Workload, finish_unattended, last_event, verdict
from tests.support.files import shared_demo_csv
from tests.support.rss import RssSampler, Timeline, mb, segments

ROWS = int(os.environ.get("TAP_SCALE_ROWS", "300000"))
SCALE_SEEDS = range(int(os.environ.get("TAP_SCALE_ROUNDS", "1")))
#: The demo rows are 60-80 bytes each (≈ 73 at 10M): a cached file of another size is not ours.
BYTES_PER_ROW = (55, 85)
#: Up to this many rows the stored rows are also compared with the file's checksum (through the
#: ORM, ~ 10 s per million rows); above it, the exact count and the primary key (no id twice) do.
CHECKSUM_MAX_ROWS = 1_000_000
WARM_UP = 0.10
RSS_BOUND_MB = 50
SAMPLE_EVERY = 0.1


def scale_csv(rows):
    """The demo CSV of ``rows`` rows in the CSV folder, written once and reused by later runs."""
    return shared_demo_csv(f"scale-{rows}.csv", rows, bytes_per_row=BYTES_PER_ROW)


def file_checksum(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return rows_checksum((int(r[0]), r[1], r[2], f"{float(r[3]):.2f}", r[4]) for r in reader)


def scale_workload(path, rows):
    expected = {"rows": rows}
    if rows <= CHECKSUM_MAX_ROWS:
        expected["checksum"] = file_checksum(path)
    return Workload(f"csv {rows:,} rows", "csv_import",
                    {"path": path.name, "chunk_rows": demo_conf.CSV_CHUNK_ROWS}, expected, rows)


def poll(operation_id, timeline, sampler):
    """The operation's row; its progress goes on the timeline, and a new checkpoint gets an RSS
    sample of its own (a short import may otherwise commit a chunk between two samples)."""
    close_old_connections()
    operation = Operation.objects.only("status", "progress_done").get(pk=operation_id)
    moved = not timeline.values or operation.progress_done != timeline.values[-1]
    timeline.add(time.monotonic(), operation.progress_done)
    if moved:
        sampler.sample()
    return operation


def drive(operation_id, timeline, sampler, until, *, timeout, what):
    """Poll the operation (recording its progress) until ``until(operation)``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        operation = poll(operation_id, timeline, sampler)
        if until(operation):
            return operation
        assert time.monotonic() < deadline, (f"operation {operation_id}: {what} not reached in {timeout:.0f}s; "
                                             f"it is {operation.status} at {operation.progress_done} rows")
        time.sleep(0.2)


def file_positions(process, path):
    """{descriptor: offset} of each open file of ``process`` on ``path``, or None."""
    try:
        return {f.fd: f.position for f in process.open_files() if Path(f.path) == path} or None
    except (psutil.Error, FileNotFoundError):
        return None


def kill_the_importing_child(sampler, at_byte, operation_id, timeline, *, timeout):
    """SIGKILL the pool child running the step once it has read ``at_byte`` bytes of the file.

    One range (SQLite): the offset of the child's descriptor on the file is watched in a tight
    loop, not only the checkpoints: at 270,000 rows/s a 50,000-row chunk takes 0.2 s, so polling
    the progress could see the whole import end first. It counts only once a checkpoint is
    committed: the step's first pass, which counts the lines, reads the whole file in a few
    milliseconds. In ranges (PostgreSQL), the lines are counted beside the loading, through a
    descriptor of their own that runs ahead of the loading ones: there the bytes are those no
    range of the committed cursor has left to read (its chunks get smaller near the end, so a
    checkpoint comes often)."""
    deadline = time.monotonic() + timeout
    size = sampler.watched.stat().st_size
    in_ranges = None  # known at the first checkpoint with rows
    while True:
        if in_ranges is None:
            operation = poll(operation_id, timeline, sampler)
            assert operation.status not in TERMINAL, f"the import was {operation.status} before the fault"
            if operation.progress_done > 0:
                cursor = Operation.objects.values_list("checkpoint", flat=True).get(pk=operation_id)
                in_ranges = "ranges" in cursor
        child = sampler.importing_child()
        if in_ranges:
            status, cursor = Operation.objects.values_list("status", "checkpoint").get(pk=operation_id)
            assert status not in TERMINAL, f"the import was {status} before the fault"
            read = size - sum(each["end"] - each["offset"] for each in cursor["ranges"])
        else:
            positions = file_positions(child, sampler.watched) if in_ranges is False and child is not None else None
            read = sum((positions or {}).values())
        if read >= at_byte and child is not None:
            break
        assert time.monotonic() < deadline, f"no pool child read {at_byte} bytes of the CSV in {timeout:.0f}s"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:  # a zombie until the worker's main process reaps it
        pass
    return child.pid


def aftermath_times(operation_id, after, killed_at):
    """Seconds from the kill to the operation marked interrupted, and to beat resuming it."""
    events = OperationEvent.objects.filter(operation_id=operation_id, id__gt=after).order_by("id")
    interrupted = resumed = None
    for at, from_status, to_status, actor in events.values_list("at", "from_status", "to_status", "actor"):
        if interrupted is None and to_status == Status.INTERRUPTED:
            interrupted = round((at - killed_at).total_seconds(), 1)
        if resumed is None and from_status == Status.INTERRUPTED and actor == "beat":
            resumed = round((at - killed_at).total_seconds(), 1)
    return interrupted, resumed


def remove(operation_id):
    """Take the operation's rows out of the session's database (one DELETE, pre_delete)."""
    close_old_connections()
    operation = Operation.objects.filter(pk=operation_id).first()
    if operation is None:
        return
    if operation.status not in TERMINAL:  # the test failed half-way: stop the import first
        try:
            services.operation_cancel(operation=operation_id, actor="cli")
            deadline = time.monotonic() + 120
            while Operation.objects.get(pk=operation_id).status not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.5)
        except Exception as exc:  # cleanup only; the failure being reported matters more
            print(f"cancel of operation {operation_id} before its deletion: {exc!r}")
    started = time.monotonic()
    Operation.objects.filter(pk=operation_id).delete()
    print(f"operation {operation_id}: deleted with its rows in {time.monotonic() - started:.1f}s")


@pytest.mark.integration
@pytest.mark.backends("sqlite-fs", "pg-redis")
@pytest.mark.parametrize("seed", SCALE_SEEDS)
def test_big_import_survives_a_killed_pool_child_with_flat_rss(worker, beat, seed):
    rng = random.Random(f"import-scale-{ROWS}-{seed}")
    path = scale_csv(ROWS)
    workload = scale_workload(path, ROWS)
    kill_at = rng.uniform(0.3, 0.7)  # of the file's bytes
    timeout = 120 + ROWS / 2_000  # generous: the rates seen are 100,000-270,000 rows/s
    sampler = RssSampler(lambda: psutil.Process(worker.proc.pid), path, interval=SAMPLE_EVERY)
    timeline = Timeline()

    started = time.monotonic()
    sampler.start()
    operation_id = None
    try:
        operation_id = services.operation_start(kind=workload.kind, params=workload.params, actor="cli").pk
        timeline.add(time.monotonic(), 0)
        after = last_event(operation_id)
        killed_pid = kill_the_importing_child(sampler, int(path.stat().st_size * kill_at), operation_id, timeline,
                                              timeout=timeout)
        killed_at, killed_wall = time.monotonic(), timezone.now()
        done_before = poll(operation_id, timeline, sampler).progress_done  # what the dead child committed

        budget = settings.TAP_HEARTBEAT_LEASE + settings.TAP_RECONCILE_INTERVAL + 30
        drive(operation_id, timeline, sampler, lambda op: op.progress_done > done_before or op.status == Status.COMPLETED,
              timeout=budget + 60, what="moving again after the kill")
        recovered_in = time.monotonic() - killed_at
        interrupted_in, resumed_in = aftermath_times(operation_id, after, killed_wall)
        drive(operation_id, timeline, sampler, lambda op: op.status in TERMINAL, timeout=timeout, what="a final status")
        outcome = finish_unattended(operation_id, after, timeout=30)
        finished = time.monotonic()
        sampler.stop()

        parts = segments(sampler.samples, timeline, warm_up_rows=int(ROWS * WARM_UP))
        grown = [part.growth for part in parts if part.growth is not None]
        mains = [s.main_rss for s in sampler.samples if s.main_rss is not None]
        main_growth = max(mains) - mains[0]
        figures = {
            "rows": ROWS,
            "import_seconds": round(finished - started, 1),  # start to completed, the recovery included
            "rows_per_second": round(ROWS / (finished - started)),
            "kill_at_rows": done_before,
            "killed_pid": killed_pid,
            "interrupted_in": interrupted_in,
            "resumed_in": resumed_in,
            "recovered_in": round(recovered_in, 1),
            "rss_start_mb": mb(parts[0].start) if parts else None,
            "rss_peak_mb": mb(max(part.peak for part in parts)) if parts else None,
            "rss_growth_mb": mb(max(grown)) if grown else None,
            "rss_bound_mb": RSS_BOUND_MB,
            "rss_children": [{"pid": p.pid, "start_mb": mb(p.start), "warm_peak_mb": mb(p.warm_peak),
                              "peak_mb": mb(p.peak), "growth_mb": mb(p.growth), "samples": len(p.samples)}
                             for p in parts],
            "main_rss_start_mb": mb(mains[0]),
            "main_rss_peak_mb": mb(max(mains)),
            "main_rss_growth_mb": mb(main_growth),
        }
        print(f"\n{worker.log_path.parent.parent.name}: {figures}")
        verdict("import-10m", workload, seed, operation_id, outcome, started, **figures)

        # The kill came in the middle (the rows' share of the bytes is a little lower: later ids are longer),
        # not at the import's start.
        chunk_rows = workload.params["chunk_rows"]
        assert done_before >= int(ROWS * kill_at * 0.9) - chunk_rows, (
            f"killed at row {done_before}, not near {kill_at:.0%} of {ROWS}")
        assert recovered_in < budget, f"moving again {recovered_in:.1f}s after the kill (budget {budget}s)"
        assert killed_pid in {part.pid for part in parts}, f"the killed child {killed_pid} was never sampled: {parts}"
        if ROWS - done_before >= 10 * workload.params["chunk_rows"]:  # long enough to be sampled
            assert len(parts) >= 2, f"no other pool child took the import over: {figures['rss_children']}"
        assert grown, f"no RSS sample came after a warm-up: {figures['rss_children']}"
        assert max(grown) < RSS_BOUND_MB * 1024 * 1024, f"a pool child's RSS grew: {figures['rss_children']}"
        assert main_growth < RSS_BOUND_MB * 1024 * 1024, f"the worker's main process grew by {mb(main_growth)} MB"
    finally:
        if sampler.is_alive():
            sampler.stop()
        if operation_id is not None:
            remove(operation_id)
