"""Retention over many finished operations with many stored rows, beside a running operation.

    .venv/bin/python bench/retention.py [--operations 100000] [--rows 1000000] [--batch 200]
                                        [--steps 1000] [--delay 0.01] [--baseline 10]

Fills its own PostgreSQL database with bulk SQL (not through the services, which would take
hours): ``--operations`` finished operations that ended 100 days ago (8 in 10 completed, 1 in 10
cancelled, 1 in 10 failed; every third one a csv_import, the others arithmetic), each with two
OperationEvent rows and a StepBoundary row, and ``--rows`` demo ``Record`` rows on csv_import
operations among them: half of the rows on one operation, 4 % on each of ten more, the last 10 %
spread over up to 1,000 others. Beside them, 1 % as many operations that finished yesterday
(retention must keep them, with their rows).

Then, with one real Celery worker (prefork, ``--concurrency 1``) running ``arithmetic``
operations of ``--steps`` steps of ``--delay`` s back to back, and the bench pausing and resuming
the running one every 0.5 s, it runs ``services.operations_retain()`` in a separate process (as
beat's reconciler runs it), sampling that process's RSS every 50 ms, and PostgreSQL's
``pg_stat_activity`` for lock waits. It measures, during the retention and for as long without
it (``--baseline`` s before, the rest after): the longest gap between two step advances of the
running operation (polled every 10 ms; the time the bench itself held it paused is left out),
and the longest ``operation_pause`` / ``operation_resume`` call and time until a pause is obeyed.

Targets (the retention issue): RSS growth of the retention process < 50 MB; no wait on the
running operation (step gap, pause, resume) longer than 1 s; everything due deleted (its
operations, events, step boundaries and records: 0 left), the rest kept; the running operations
completed with the right result. A report, not a test: exits 0 when a target is missed, 1 when
something broke (rows left, a wrong result).

It drops and recreates the database ``tapbench_retention`` and flushes Redis db 3
(``TAP_BENCH_RETENTION_DATABASE`` / ``TAP_BENCH_RETENTION_REDIS_DB`` name others); its files
(worker and retention logs) are under ``var/bench/retention/``.
"""

import argparse
import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from common import (
    ROOT,
    Verdicts,
    broker_url,
    configure_environment,
    database_url,
    make_worker,
    reset_broker,
    reset_database,
    running,
    server_label,
    setup_django,
)

DB = os.environ.get("TAP_BENCH_RETENTION_DATABASE", "tapbench_retention")
BROKER_DB = int(os.environ.get("TAP_BENCH_RETENTION_REDIS_DB", "3"))
VAR = ROOT / "var" / "bench" / "retention"
AGE_DAYS = 100  # the due operations ended this long ago: past every default retention (30 / 90 days)
RSS_TARGET_MB = 50
WAIT_TARGET_S = 1.0
CYCLE_EVERY = 0.5  # seconds between two pause + resume cycles
POLL = 0.01  # seconds between two reads of the running operation's row
SAMPLE = 0.05  # seconds between two samples of RSS and pg_stat_activity
RETENTION_TIMEOUT = 3600
MB = 2**20


# --- the retention process -------------------------------------------------------------------


def child(batch):
    """Run in a subprocess: set up Django, say "ready", wait for a line, retain, print the outcome.

    Statements are only looked at (no copy kept): each batch's ``SELECT … FOR UPDATE`` and the
    next id query after its commit give the batch's transaction time, and the row counts of its
    DELETEs of records the rows it deleted. Times are ``perf_counter()``, CLOCK_MONOTONIC on
    Linux: the same clock as the bench process's."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from operations import services
    from operations.contrib.demo.models import Record
    from operations.models import Operation

    Operation.objects.filter(services.retention_due()).exists()  # warm: imports, the connection
    locks, fetches, pages, records = [], [], [], []
    deleting_records = f"DELETE FROM {connection.ops.quote_name(Record._meta.db_table)} "

    def watch(execute, sql, params, many, context):
        now = time.perf_counter()
        result = execute(sql, params, many, context)
        if "FOR UPDATE" in sql:
            locks.append(now)
            records.append(0)
        elif sql.startswith("SELECT") and " LIMIT " in sql and '"finished_at"' in sql:
            fetches.append(now)
            pages.append(time.perf_counter() - now)
        elif sql.startswith(deleting_records) and records:
            records[-1] += max(0, context["cursor"].rowcount)
        return result

    print(json.dumps({"ready": True, "backend_pid": connection.connection.info.backend_pid}), flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    with connection.execute_wrapper(watch):
        outcome = services.operations_retain(batch=batch)
    ended = time.perf_counter()
    batches = []  # (start, seconds, records deleted)
    for lock, rows in zip(locks, records):
        after = [t for t in fetches if t > lock]
        batches.append((lock, (after[0] if after else ended) - lock, rows))
    print(json.dumps({"seconds": ended - started, "operations": outcome.operations, "events": outcome.events,
                      "total": outcome.total, "batches": batches, "pages": pages}), flush=True)


class Retention:
    """The retention subprocess: started early (its Django start-up is not what is measured),
    told to go, its outcome read from its stdout by a thread."""

    def __init__(self, batch):
        self.log = open(VAR / "retention.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", "--batch", str(batch)],
                                     cwd=ROOT, env=dict(os.environ), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, start_new_session=True, text=True)
        self.lines, self.arrived = [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if not line.startswith("{"):  # not ours (a stray print)
                continue
            with self.arrived:
                self.lines.append(json.loads(line))
                self.arrived.notify_all()
        with self.arrived:
            self.lines.append(None)  # EOF
            self.arrived.notify_all()

    def next_line(self, timeout):
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the retention process said nothing within {timeout} s")
                self.arrived.wait(left)
            line = self.lines.pop(0)
        if line is None:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"the retention process exited with {self.proc.returncode}: see {VAR / 'retention.log'}")
        return line

    def done(self):
        with self.arrived:
            return bool(self.lines)

    def go(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.log.close()


class Sampler(threading.Thread):
    """Every 50 ms: the retention process's RSS (while ``rss_on``), and from pg_stat_activity the
    retention backend's open transaction, every other backend of the database waiting for a lock
    (with how long its statement has run), and what each active backend waits for."""

    def __init__(self, pid):
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.retention_backend = None
        self.rss = []  # (t, bytes)
        self.rss_on = threading.Event()
        #: (t, pid, seconds its statement has run, what it runs, whether the retention blocks it)
        self.lock_waits = []
        #: (t, whether it is the retention's backend, "wait_event_type:wait_event") of active backends
        self.waits = []
        self.longest_xact = 0.0
        self.stop = threading.Event()

    def run(self):
        import psutil
        import psycopg

        with psycopg.connect(database_url(DB), autocommit=True) as conn:
            while not self.stop.is_set():
                now = time.perf_counter()
                if self.rss_on.is_set():
                    try:
                        self.rss.append((now, self.process.memory_info().rss))
                    except psutil.NoSuchProcess:
                        pass
                rows = conn.execute(
                    "SELECT pid, wait_event_type, extract(epoch FROM now() - query_start), "
                    "extract(epoch FROM now() - xact_start), left(query, 80), pg_blocking_pids(pid), "
                    "wait_event, state FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [DB]).fetchall()
                for pid, wait, running_for, in_xact, query, blockers, event, state in rows:
                    if state == "active" and wait not in (None, "Client", "Activity"):
                        self.waits.append((now, pid == self.retention_backend, f"{wait}:{event}"))
                    if pid == self.retention_backend:
                        self.longest_xact = max(self.longest_xact, float(in_xact or 0))
                    elif wait == "Lock":
                        self.lock_waits.append((now, pid, max(0.0, float(running_for or 0)), query,
                                                self.retention_backend in (blockers or [])))
                self.stop.wait(SAMPLE)


# --- the data --------------------------------------------------------------------------------


def insert_operations(cursor, first, last, *, age):
    """Operations ``first``..``last`` (ids), finished ``age`` ago, each with two events (started,
    finished) and one step boundary. Every column of Operation is given: those not named here get
    the field's default (Django's defaults are not the database's)."""
    from django.db.models import JSONField

    from operations.models import Operation, OperationEvent, StepBoundary

    finished = "(%s::timestamptz - %s::interval - g * interval '1 second')"
    plan = json.dumps({"steps": [{"task": "operations.add", "args": [4, 6], "kwargs": {}, "options": {}},
                                 {"task": "operations.mult", "args": [16], "kwargs": {}, "options": {}},
                                 {"task": "operations.add", "args": [6], "kwargs": {}, "options": {}}]})
    given = {
        "id": ("g", []),
        "kind": ("CASE WHEN mod(g, 3) = 0 THEN 'csv_import' ELSE 'arithmetic' END", []),
        "params": ("CASE WHEN mod(g, 3) = 0 THEN %s::jsonb ELSE %s::jsonb END",
                   ['{"path": "records.csv", "chunk_rows": 50000}', '{"x": 4, "steps": 3, "delay": 0.0}']),
        "status": ("CASE mod(g, 10) WHEN 0 THEN 'cancelled' WHEN 5 THEN 'failed' ELSE 'completed' END", []),
        "previous_status": ("'running'", []),
        "run_token": ("1", []),
        "fence": ("3", []),
        "workflow": ("%s::jsonb", [plan]),
        "step_index": ("3", []),
        "result": ("CASE WHEN mod(g, 10) NOT IN (0, 5) THEN '166'::jsonb END", []),
        "error": ("CASE mod(g, 10) WHEN 5 THEN 'step 2 of 3 failed: ValueError: bench' ELSE '' END", []),
        "progress_done": ("3", []),
        "progress_total": ("3", []),
        "heartbeat_at": (finished, None),
        "created_at": (f"{finished} - interval '1 minute'", None),
        "started_at": (f"{finished} - interval '1 minute'", None),
        "finished_at": (finished, None),
        "updated_at": (finished, None),
    }
    now = time_now()
    columns, values, params = [], [], []
    for field in Operation._meta.concrete_fields:
        columns.append(cursor.db.ops.quote_name(field.column))
        if field.column in given:
            sql, extra = given[field.column]
            values.append(sql)
            params += ([now, age] * sql.count("%s::timestamptz")) if extra is None else extra
        elif field.null:
            values.append("NULL")
        elif isinstance(field, JSONField):
            values.append("%s::jsonb")
            params.append(json.dumps(field.get_default()))
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), cursor.db))
    table = Operation._meta.db_table
    cursor.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "
                   f"FROM generate_series(%s, %s) AS g", params + [first, last])
    events = OperationEvent._meta.db_table
    cursor.execute(f"INSERT INTO {events} (operation_id, at, actor, via, from_status, to_status, note) "
                   f"SELECT id, started_at, 'cli', 'cli', '', 'running', 'started' FROM {table} "
                   f"WHERE id BETWEEN %s AND %s UNION ALL "
                   f"SELECT id, finished_at, 'worker', 'worker', 'running', status, 'finished' FROM {table} "
                   f"WHERE id BETWEEN %s AND %s", [first, last, first, last])
    cursor.execute(f"INSERT INTO {StepBoundary._meta.db_table} (operation_id, step_index, carry) "
                   f"SELECT id, 2, '160'::jsonb FROM {table} WHERE id BETWEEN %s AND %s", [first, last])


def time_now():
    from django.utils import timezone

    return timezone.now()


def spread(rows, candidates):
    """{operation id: rows}: half on one operation, 4 % on each of ten, the rest over up to 1,000."""
    if not rows or not candidates:
        return {}
    picked = [candidates[i * len(candidates) // min(1011, len(candidates))] for i in range(min(1011, len(candidates)))]
    share = {}
    big, ten, rest = picked[0], picked[1:11], picked[11:]
    share[big] = rows // 2
    for op in ten:
        share[op] = rows * 4 // 100
    left = rows - sum(share.values())
    targets = rest or [big]
    for i, op in enumerate(targets):
        share[op] = share.get(op, 0) + left // len(targets) + (1 if i < left % len(targets) else 0)
    return {op: n for op, n in share.items() if n}


def insert_records(cursor, share):
    from operations.contrib.demo.models import Record

    ops, counts = list(share), [share[op] for op in share]
    cursor.execute(f"INSERT INTO {Record._meta.db_table} (operation_id, external_id, name, email, amount, date) "
                   f"SELECT o.op, g, 'Name ' || g, 'user' || g || '@example.com', mod(g, 100000) / 100.0, "
                   f"date '2020-01-01' + mod(g, 3650)::int "
                   f"FROM unnest(%s::bigint[], %s::bigint[]) AS o(op, n), generate_series(1, o.n) AS g",
                   [ops, counts])


def fill(operations, rows):
    """The due operations are ids 1..operations, the kept ones the next 1 %; returns what was put."""
    from django.db import connection, transaction

    from operations.models import Operation

    kept = max(10, operations // 100)
    with transaction.atomic(), connection.cursor() as cursor:
        insert_operations(cursor, 1, operations, age=f"{AGE_DAYS} days")
        insert_operations(cursor, operations + 1, operations + kept, age="1 day")
        share = spread(rows, [g for g in range(3, operations + 1, 3)])
        kept_share = spread(min(1000, max(rows // 100, 1)), [g for g in range(operations + 1, operations + kept + 1)
                                                               if g % 3 == 0])
        insert_records(cursor, share | kept_share)
        table = Operation._meta.db_table
        cursor.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT max(id) FROM {table}))", [table])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return kept, share, kept_share


def counts(first, last):
    """Operations, events, step boundaries and records of operation ids first..last."""
    from django.db import connection

    from operations.contrib.demo.models import Record
    from operations.models import Operation, OperationEvent, StepBoundary

    found = {}
    with connection.cursor() as cursor:
        for name, table, column in (("operations", Operation._meta.db_table, "id"),
                                    ("events", OperationEvent._meta.db_table, "operation_id"),
                                    ("step boundaries", StepBoundary._meta.db_table, "operation_id"),
                                    ("records", Record._meta.db_table, "operation_id")):
            cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} BETWEEN %s AND %s", [first, last])
            found[name] = cursor.fetchone()[0]
    return found


# --- the running operation and the pause cycles ---------------------------------------------


class Tracker(threading.Thread):
    """Runs arithmetic operations back to back (each started when the last one ended) and polls
    the running one's row every 10 ms: when its step changes, (time, operation, step) is noted."""

    def __init__(self, steps, delay):
        super().__init__(daemon=True)
        self.params = {"x": 4, "steps": steps, "delay": delay}
        self.per_operation = 60 + steps * delay * 10
        self.current = None
        self.advances = []  # (t, operation id, step index)
        self.finished = []  # (operation id, status, result is right)
        self.last_one = threading.Event()
        self.error = None

    def run(self):
        from django.db import connections

        from operations.contrib.demo.kinds.arithmetic import expected_result
        from operations.models import Operation
        from operations.services import operation_start
        from operations.states import Status

        expected = expected_result(x=self.params["x"], steps=self.params["steps"])
        try:
            while True:
                operation = operation_start(kind="arithmetic", params=self.params, actor="cli")
                self.current, row, seen = operation.pk, Operation.objects.filter(pk=operation.pk), None
                deadline = time.monotonic() + self.per_operation
                while True:
                    status, step, result = row.values_list("status", "step_index", "result").get()
                    now = time.perf_counter()
                    if step != seen:
                        self.advances.append((now, operation.pk, step))
                        seen = step
                    if status in (Status.COMPLETED, Status.CANCELLED, Status.FAILED):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"operation {operation.pk} still {status} after {self.per_operation:.0f} s")
                    time.sleep(POLL)
                self.finished.append((operation.pk, status, status == Status.COMPLETED and result == expected))
                if self.last_one.is_set():
                    return
        except Exception as error:  # reported by the main thread
            self.error = error
        finally:
            self.current = None
            connections.close_all()


def cycle(tracker, cycles):
    """One pause + resume of the running operation: the pause call, until the row says paused
    (5 s at most), the resume call. Appends (start, pause call s, until paused s or None, resume
    call s, (held-paused window) or None, the time the resume call returned) to ``cycles``."""
    from operations.exceptions import TransitionRefused
    from operations.models import Operation
    from operations.services import operation_pause, operation_resume
    from operations.states import Status

    operation_id = tracker.current
    if operation_id is None:
        return
    started = time.perf_counter()
    try:
        operation_pause(operation=operation_id, actor="cli")
    except TransitionRefused:  # it ended (or is being started) meanwhile
        return
    paused_call = time.perf_counter() - started
    row, obeyed, status = Operation.objects.filter(pk=operation_id), None, None
    for _ in range(1000):  # 5 s
        status = row.values_list("status", flat=True).get()
        if status != Status.PAUSE_REQUESTED:
            break
        time.sleep(0.005)
    if status == Status.PAUSED:
        obeyed = time.perf_counter()
    before_resume = time.perf_counter()
    try:
        operation_resume(operation=operation_id, actor="cli")
    except TransitionRefused:  # it ended before obeying the pause
        pass
    resumed = time.perf_counter()
    cycles.append((started, paused_call, None if obeyed is None else obeyed - started, resumed - before_resume,
                   (obeyed, resumed) if obeyed is not None else None, resumed))


def cycles_for(tracker, cycles, *, seconds=None, until=None, timeout=None):
    """Pause + resume every 0.5 s, for ``seconds`` or until ``until()`` (``timeout`` at most)."""
    started = time.perf_counter()
    limit = seconds if seconds is not None else timeout
    tick = started
    while time.perf_counter() - started < limit:
        if until is not None and until():
            return time.perf_counter() - started
        if tracker.error is not None:
            raise RuntimeError(f"the running operation: {tracker.error}")
        cycle(tracker, cycles)
        tick += CYCLE_EVERY
        while time.perf_counter() < tick:
            if until is not None and until():
                break
            time.sleep(0.01)
    if until is not None and not until():
        raise TimeoutError(f"retention did not end within {timeout} s")
    return time.perf_counter() - started


def step_gaps(advances, held):
    """The gaps between two step advances of the same operation: (start, end, seconds) with the
    windows the bench held it paused (``held``) left out."""
    gaps = []
    for (t0, op0, _), (t1, op1, _) in zip(advances, advances[1:]):
        if op0 != op1:
            continue
        overlap = sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in held if a < t1 and b > t0)
        gaps.append((t0, t1, t1 - t0 - overlap))
    return gaps


def touches_a_cycle(start, end, cycles, starts):
    """Whether the gap start..end overlaps a pause + resume cycle (from the pause call until the
    resume call returned); ``cycles`` in order, never overlapping, ``starts`` their start times."""
    last = bisect.bisect_left(starts, end) - 1
    return last >= 0 and cycles[last][5] > start


def in_window(start, end, window):
    return start < window[1] and end > window[0]


# --- the report ------------------------------------------------------------------------------


def ms(value):
    return "—" if value is None else f"{value * 1000:.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=100_000, help="finished operations due for deletion")
    parser.add_argument("--rows", type=int, default=1_000_000, help="records on them")
    parser.add_argument("--batch", type=int, default=0, help="operations per transaction (0: TAP_RETENTION_BATCH)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of each running arithmetic operation (≤ 1000)")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds each of its steps takes")
    parser.add_argument("--baseline", type=float, default=10.0,
                        help="seconds measured without retention before it; after it, as long as it took less this")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        child(options.batch or None)
        return 0
    if "test" in DB:
        sys.exit(f"{DB!r} looks like a test database: the benchmark drops its database")
    VAR.mkdir(parents=True, exist_ok=True)
    broker = broker_url(BROKER_DB)
    reset_database(DB)
    reset_broker(broker)
    configure_environment(database_url=database_url(DB), broker_url=broker, var_dir=VAR)
    print(f"database {server_label(database_url(DB))}, broker {server_label(broker)}", flush=True)
    setup_django()
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # this process's pause / resume calls: no INFO line each
    from operations.conf import conf

    batch = options.batch or conf.RETENTION_BATCH
    started = time.perf_counter()
    kept, share, kept_share = fill(options.operations, options.rows)
    n = options.operations
    by_status = {"completed": n - n // 10 - (n + 5) // 10, "cancelled": n // 10, "failed": (n + 5) // 10}
    sizes = sorted(share.values(), reverse=True)
    print(f"set-up in {time.perf_counter() - started:.1f} s: {n:,} operations finished {AGE_DAYS} days ago "
          f"({', '.join(f'{v:,} {k}' for k, v in by_status.items())}; 1 in 3 csv_import, the others arithmetic), "
          f"{2 * n:,} events, {n:,} step boundaries; {sum(sizes):,} records on {len(sizes):,} of them "
          f"(largest {sizes[0] if sizes else 0:,}, then {len(sizes[1:11])} × {sizes[1] if len(sizes) > 1 else 0:,}, "
          f"{len(sizes[11:])} × ~{sizes[-1] if len(sizes) > 11 else 0:,}); kept: {kept:,} that finished yesterday, "
          f"{sum(kept_share.values()):,} records", flush=True)
    due_before, kept_before = counts(1, n), counts(n + 1, n + kept)
    expected_due = {"operations": n, "events": 2 * n, "step boundaries": n, "records": sum(share.values())}
    if due_before != expected_due:
        print(f"the set-up is not what was meant: {due_before} != {expected_due}")
        return 1

    worker = make_worker(VAR / "worker.log", name="bench-retention")
    tracker = Tracker(options.steps, options.delay)
    cycles, retention, sampler = [], None, None
    broke = []
    with running(worker):
        try:
            tracker.start()
            for _ in range(3000):  # 30 s: the first step advance
                if len(tracker.advances) > 1:
                    break
                if tracker.error:
                    raise RuntimeError(f"the running operation: {tracker.error}")
                time.sleep(0.01)
            else:
                raise TimeoutError(f"the running operation made no step in 30 s: see {worker.log_path}")
            retention = Retention(options.batch)
            sampler = Sampler(retention.proc.pid)
            sampler.start()
            before_start = time.perf_counter()
            cycles_for(tracker, cycles, seconds=options.baseline)
            before = (before_start, time.perf_counter())
            sampler.retention_backend = retention.next_line(120)["backend_pid"]
            rss_start = sampler.process.memory_info().rss
            sampler.rss_on.set()
            time.sleep(2 * SAMPLE)
            t_start = time.perf_counter()
            retention.go()
            cycles_for(tracker, cycles, until=retention.done, timeout=RETENTION_TIMEOUT)
            t_end = time.perf_counter()
            sampler.rss_on.clear()
            outcome = retention.next_line(10)
            during = (t_start, t_end)
            after_start = time.perf_counter()
            cycles_for(tracker, cycles, seconds=max(options.baseline, (t_end - t_start) - options.baseline))
            after = (after_start, time.perf_counter())
            tracker.last_one.set()
            tracker.join(timeout=tracker.per_operation + 30)
            if tracker.is_alive() or tracker.error:
                raise RuntimeError(f"the running operation did not end: {tracker.error or 'still running'}")
        finally:
            tracker.last_one.set()
            if sampler is not None:
                sampler.stop.set()
                sampler.join(timeout=10)
            if retention is not None:
                retention.kill()
    due_after, kept_after = counts(1, n), counts(n + 1, n + kept)

    # Retention.
    rss = [b for _, b in sampler.rss] or [rss_start]
    peak = max(rss + [rss_start])
    growth = (peak - rss_start) / MB
    batches = [seconds for _, seconds, _ in outcome["batches"]]
    print(f"\nretention: {outcome['seconds']:.1f} s, deleted {outcome['total']:,} operations "
          f"({', '.join(f'{v:,} {k}' for k, v in outcome['operations'].items())}) and {outcome['events']:,} events, "
          f"in {len(batches)} transactions of ≤ {batch} operations "
          f"(median {statistics.median(batches) * 1000 if batches else 0:.0f} ms, "
          f"longest {max(batches, default=0) * 1000:.0f} ms; the longest open transaction pg_stat_activity saw "
          f"{sampler.longest_xact * 1000:.0f} ms)")
    pages = outcome["pages"]  # the id query before each batch: its cost must not grow with what is left
    tenth = max(1, len(pages) // 10)
    print(f"id queries: {len(pages)}, {sum(pages):.1f} s in all; median of the first tenth "
          f"{statistics.median(pages[:tenth]) * 1000:.1f} ms, of the last tenth {statistics.median(pages[-tenth:]) * 1000:.1f} ms")
    print(f"retention process RSS: {rss_start / MB:.1f} MB at the start, peak {peak / MB:.1f} MB "
          f"(+{growth:.1f} MB), {len(sampler.rss)} samples")
    print(f"left of the due operations: {due_after}; of the kept ones: {kept_after} (before: {kept_before})")

    # The running operations.
    held = [c[4] for c in cycles if c[4] is not None]
    gaps = step_gaps(tracker.advances, held)
    windows = {"without retention": [before, after], "during retention": [during]}
    print(f"\nrunning: {len(tracker.finished)} arithmetic operations of {options.steps} steps × {options.delay} s "
          f"back to back, {sum(ok for *_, ok in tracker.finished)} completed with the right result; "
          f"a pause + resume every {CYCLE_EVERY} s ({len(cycles)} cycles)")
    figures, starts = {}, [c[0] for c in cycles]
    for name, spans in windows.items():
        length = sum(b - a for a, b in spans)
        inside = [(a, b, s) for a, b, s in gaps if any(in_window(a, b, w) for w in spans)]
        g = [s for _, _, s in inside]
        away = [s for a, b, s in inside if not touches_a_cycle(a, b, cycles, starts)]
        c = [x for x in cycles if any(w[0] <= x[0] < w[1] for w in spans)]
        obeyed = [x[2] for x in c if x[2] is not None]
        waits = [w for w in sampler.lock_waits if any(a <= w[0] <= b for a, b in spans)]
        figures[name] = {
            "seconds": length, "advances": len(g), "max gap": max(g, default=None),
            "p99 gap": sorted(g)[int(0.99 * (len(g) - 1))] if g else None,
            "max gap away": max(away, default=None), "gaps over 0.5 s": sum(1 for x in g if x > 0.5),
            "cycles": len(c), "max pause call": max((x[1] for x in c), default=None),
            "max until paused": max(obeyed, default=None), "max resume call": max((x[3] for x in c), default=None),
            "not obeyed in 5 s": sum(1 for x in c if x[2] is None),
            "lock waits": len(waits), "longest lock wait": max((w[2] for w in waits), default=None),
            "blocked by retention": sum(1 for w in waits if w[4]),
        }
    base, ret = figures["without retention"], figures["during retention"]
    print(f"{'':32} {'without retention':>18} {'during retention':>17} {'ratio':>7}")
    print(f"{'measured for (s)':32} {base['seconds']:>18.1f} {ret['seconds']:>17.1f}")
    for key, label in (("max gap", "max step gap (ms)"), ("max gap away", "  … away from pause cycles (ms)"),
                       ("p99 gap", "p99 step gap (ms)"),
                       ("max pause call", "max pause call (ms)"), ("max until paused", "max pause → paused (ms)"),
                       ("max resume call", "max resume call (ms)"), ("longest lock wait", "longest lock wait (ms)")):
        ratio = f"{ret[key] / base[key]:.2f}×" if ret[key] and base[key] else ""
        print(f"{label:32} {ms(base[key]):>18} {ms(ret[key]):>17} {ratio:>7}")
    for key, label in (("advances", "step gaps measured"), ("gaps over 0.5 s", "step gaps over 0.5 s"),
                       ("cycles", "pause + resume cycles"),
                       ("not obeyed in 5 s", "pauses not obeyed in 5 s"), ("lock waits", "lock-wait samples (others)"),
                       ("blocked by retention", "  … blocked by the retention")):
        print(f"{label:32} {base[key]:>18} {ret[key]:>17}")
    for t, pid, seconds, query, by_retention in sorted(sampler.lock_waits, key=lambda w: -w[2])[:3]:
        print(f"  longest lock waits: backend {pid}, {seconds * 1000:.0f} ms"
              f"{' (behind the retention)' if by_retention else ''}: {query}")
    for name, spans in windows.items():
        seen = Counter(w for t, own, w in sampler.waits if not own and any(a <= t <= b for a, b in spans))
        print(f"what the other backends waited for, {name} (samples): "
              f"{', '.join(f'{k} {v}' for k, v in seen.most_common(6)) or 'nothing'}")
    seen = Counter(w for t, own, w in sampler.waits if own)
    print(f"what the retention's backend waited for (samples): "
          f"{', '.join(f'{k} {v}' for k, v in seen.most_common(6)) or 'nothing'}")
    long_gaps = [(a, b, s) for a, b, s in gaps if s > 0.5 and in_window(a, b, during)]
    for a, b, s in sorted(long_gaps, key=lambda g: -g[2])[:10]:
        near = [(i, sec, rows) for i, (start, sec, rows) in enumerate(outcome["batches"]) if start < b and start + sec > a]
        last = bisect.bisect_left(starts, b) - 1
        in_cycle = touches_a_cycle(a, b, cycles, starts)
        print(f"  step gap of {s * 1000:.0f} ms at +{a - during[0]:.1f} s"
              + (f", in a pause cycle (pause call {ms(cycles[last][1])}, until paused {ms(cycles[last][2])}, "
                 f"resume call {ms(cycles[last][3])} ms)" if in_cycle else ", away from the pause cycles")
              + "; retention batches meanwhile: "
              + (", ".join(f"#{i + 1} {sec * 1000:.0f} ms, {rows:,} records" for i, sec, rows in near) or "none"))

    verdicts = Verdicts()
    verdicts(growth < RSS_TARGET_MB, f"retention process RSS growth: {growth:.1f} MB (target < {RSS_TARGET_MB} MB)")
    worst = max((v for v in (ret["max gap"], ret["max pause call"], ret["max until paused"], ret["max resume call"],
                             ret["longest lock wait"]) if v is not None), default=0.0)
    verdicts(worst < WAIT_TARGET_S and not ret["not obeyed in 5 s"] and ret["advances"] > 0 and ret["cycles"] > 0,
             f"longest wait of the running operation during retention: {worst * 1000:.0f} ms (step gap "
             f"{ms(ret['max gap'])}, pause call {ms(ret['max pause call'])}, until paused "
             f"{ms(ret['max until paused'])}, resume call {ms(ret['max resume call'])} ms; "
             f"{ret['blocked by retention']} lock-wait samples behind the retention's locks; target < 1 s; "
             f"without retention {ms(base['max gap'])} / {ms(base['max pause call'])} / {ms(base['max until paused'])} / "
             f"{ms(base['max resume call'])} ms)")
    expected_outcome = dict(by_status)
    all_gone = not any(due_after.values()) and kept_after == kept_before
    outcome_right = outcome["operations"] == expected_outcome and outcome["events"] == 2 * n
    verdicts(all_gone and outcome_right,
             f"everything due deleted ({', '.join(f'{v:,} {k}' for k, v in due_before.items())} → "
             f"{sum(due_after.values())} left), the kept ones intact, the outcome counted right")
    expected = sum(-(-deleted // batch) for deleted in outcome["operations"].values())
    verdicts(len(batches) == expected, f"deleted in batches: {len(batches)} transactions of ≤ {batch} (one status at a time: {expected})")
    ok_ops = all(ok for *_, ok in tracker.finished) and tracker.finished
    verdicts(bool(ok_ops), f"the running operations: {len(tracker.finished)} completed with the right result"
             if ok_ops else f"the running operations: {tracker.finished}")
    verdicts.show()
    if not all_gone or not outcome_right or not ok_ops:
        broke.append("rows left or a wrong result")
    return 1 if broke else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
