"""``csv_import`` of a 1M-row file against a raw PostgreSQL COPY of the same file.

Measures, in one run, on PostgreSQL + Redis through one prefork worker with ``--concurrency 1``:
the import's time (one range and two side by side) against a single-transaction COPY of the
file into a plain table, into one keyed on id, and against the import's own floors (its bytes
COPYed into the records table in one range and in two side by side), the worker's peak RSS while it imports, how fast a pause lands mid-import (and that
pause/resume neither loses nor doubles a row), and how large the operation's stored state stays.

    python bench/import_csv.py [--rows 1000000] [--rounds 3] [--chunk-rows N] [--profile | --no-profile]

When the import misses its time or memory target (or with ``--profile``) it then profiles it:
other ``chunk_rows`` through the worker, and the import's pieces (reading, COPY, checkpoint,
commit) timed in this process with the records table as migrated, without its foreign key, and
without its primary key too (schema changes in this benchmark's own database, after every
measurement).

It is a report, not a test: it exits 0 when a target is missed, non-zero only on errors. It
drops and recreates the PostgreSQL database ``tapbench_import``; in Redis db 9 (shared with the
test slot 4, whose queue is ``celery_4``) it clears only its own queue, ``celery``. Its files
live in ``var/bench/import`` (the CSV files in ``csv/``, generated once and reused).
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0]: the project is beside it
    sys.path.insert(0, str(ROOT))

import psutil

from bench import common

# Another database / Redis db (e.g. beside another session running this benchmark): from the environment.
DATABASE = os.environ.get("TAP_BENCH_IMPORT_DATABASE", "tapbench_import")
DATABASE_URL = common.database_url(DATABASE)
BROKER_DB, QUEUE = int(os.environ.get("TAP_BENCH_IMPORT_REDIS_DB", "9")), "celery"
BROKER_URL = common.broker_url(BROKER_DB)
VAR_DIR = ROOT / "var" / "bench" / "import"
CSV_DIR = VAR_DIR / "csv"  # = TAP_CSV_DIR of both processes (TAP_VAR_DIR/csv)
SMALL_ROWS = 100_000  # the second file: the stored state must not grow with the file
COPY_BLOCK = 1 << 20  # bytes per cursor.copy() write of the baseline
POLL = 0.02  # seconds between two reads of the operation row while a timed import runs
WATCH_POLL = 0.005  # … while an import that is to be paused runs (to pause just after a checkpoint)
PAUSE_POLL = 0.002  # … while a pause is pending
RSS_INTERVAL = 0.05  # seconds between two samples of the worker's memory
PAUSE_AT = (0.20, 0.45)  # the paused import of each round: a pause once progress reaches each
PAUSE_LATEST = 0.60  # … but none past this: mid-import
TIMEOUT = 600  # seconds any one import may take before the benchmark gives up
RATIO_TARGET = 1.0  # ÷ the COPY into the keyed table (issue 13); ÷ the raw COPY is reported too
RANGES_TARGET = 0.8  # … for the parallel import: csv_import's ranges loaded side by side
RANGES = 2
IN_RANGES = f"{RANGES} ranges"  # csv_import with ranges=2 (the default, TAP_CSV_IMPORT_RANGES)
ONE_RANGE = "1 range"  # csv_import with ranges=1: the file from its first row to its last
FLOOR = "records COPY"  # the import's own bytes in one COPY into the records table: its floor
FLOOR_IN_RANGES = f"records COPY ×{RANGES}"  # … in RANGES COPYs side by side: the parallel import's
FLOOR_OPERATION = 0  # the operation id the floors' rows carry (the records have no foreign key)
RSS_TARGET = 150_000_000  # bytes (MB = 10**6 bytes)
PAUSE_TARGET = 1.0  # seconds
STATE_TARGET = 4_000  # bytes of JSON (KB = 1000 bytes)
MB = 1_000_000
RAW_TABLE = """
    CREATE TABLE raw_records (
        id bigint NOT NULL,
        name varchar(200) NOT NULL,
        email varchar(254) NOT NULL,
        amount numeric(14, 2) NOT NULL,
        date date NOT NULL
    );
    CREATE TABLE raw_records_keyed (LIKE raw_records);
    ALTER TABLE raw_records_keyed ADD PRIMARY KEY (id);
"""
RAW_COPY = "COPY {table} (id, name, email, amount, date) FROM STDIN WITH (FORMAT csv, HEADER true)"


# --- set-up ---------------------------------------------------------------------------------


def configure_environment():
    """The environment of this process and of the worker (see ``common.configure_environment``)."""
    common.configure_environment(database_url=DATABASE_URL, broker_url=BROKER_URL, var_dir=VAR_DIR)


def reset_services():
    """A fresh ``tapbench_import`` database and no leftover message in this benchmark's queue."""
    common.reset_database(DATABASE)
    common.reset_broker(BROKER_URL, queue=QUEUE)


def ensure_csv(rows):
    """The demo records file of ``rows`` rows in the CSV folder: written once, then reused."""
    from operations.contrib.demo.files import write_demo_csv

    path = CSV_DIR / f"bench-records-{rows}.csv"
    reused = path.exists()  # write_demo_csv renames a finished file into place: never partial
    if not reused:
        write_demo_csv(path, rows=rows)
    with open(path, "rb") as f:  # read it once: every side then finds it in the page cache
        while f.read(COPY_BLOCK):
            pass
    print(f"CSV {path.relative_to(ROOT)}: {rows:,} rows, {path.stat().st_size / MB:.1f} MB "
          f"({'reused' if reused else 'generated'})", flush=True)
    return path


# --- the worker's memory --------------------------------------------------------------------


class PeriodicSampler:
    """A ``with`` block during which ``_sample`` runs every ``interval`` seconds in a thread, and
    once at each end (``first=True`` at the start)."""

    def __init__(self, interval, name):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self):
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, first=False):
        raise NotImplementedError


class RssSampler(PeriodicSampler):
    """Samples the RSS of the worker's main process and of every child of it, in a thread.

    Per process: the first and the peak RSS, and the CPU time used meanwhile (the pool child
    with the most CPU time is the one that ran the import). For the tree: the peak of the sum
    of the RSS of all its processes at one sample (pages shared after the fork count in each).
    """

    def __init__(self, pid, interval=RSS_INTERVAL):
        super().__init__(interval, "rss-sampler")
        self.root = psutil.Process(pid)
        self.first, self.peak, self.cpu_first, self.cpu_last = {}, {}, {}, {}
        self.tree_peak = 0

    def _sample(self, first=False):
        total = 0
        for proc in [self.root] + self.root.children(recursive=True):
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.first.setdefault(proc.pid, rss)
            self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            self.cpu_first.setdefault(proc.pid, cpu)
            self.cpu_last[proc.pid] = cpu
        self.tree_peak = max(self.tree_peak, total)

    def busiest_child(self):
        """(pid, RSS at the start, peak RSS) of the pool child that used the most CPU."""
        children = [pid for pid in self.peak if pid != self.root.pid]
        pid = max(children, key=lambda p: self.cpu_last[p] - self.cpu_first[p])
        return pid, self.first[pid], self.peak[pid]


# --- one measurement ------------------------------------------------------------------------


def run_raw_copy(conn, path, rows, table="raw_records"):
    """Seconds of one transaction that COPYs the whole file into the empty ``raw_records``."""
    conn.execute(f"TRUNCATE {table}")  # autocommit: its own transaction, outside the timing
    started = time.perf_counter()
    with conn.transaction():
        with conn.cursor() as cursor, cursor.copy(RAW_COPY.format(table=table)) as copy, \
                open(path, "rb") as f:
            while block := f.read(COPY_BLOCK):
                copy.write(block)
    elapsed = time.perf_counter() - started
    stored = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    if stored != rows:
        raise RuntimeError(f"raw COPY stored {stored:,} rows, expected {rows:,}")
    return elapsed


def run_records_copy(path, rows, parts=1):
    """Seconds of the import's floor: the bytes csv_import sends (each line prefixed with an
    operation id, COPY's text format) COPYed into the records table itself, in ``parts`` byte
    ranges cut at line starts, each one transaction on its own connection, side by side — no
    checkpoint, no claim, no Celery, nothing read ahead."""
    import psycopg

    from operations.contrib.demo.models import Record

    clear_records()
    with open(path, "rb") as f:
        f.readline()  # the header
        start, size = f.tell(), path.stat().st_size
        cuts = [start]
        for part in range(1, parts):
            f.seek(start + (size - start) * part // parts)
            f.readline()
            cuts.append(f.tell())
    cuts = sorted({*cuts, size})  # a file too small for its parts has fewer
    prefix = b"%d," % FLOOR_OPERATION
    statement = (f"COPY operations_demo_record ({', '.join(Record.COLUMNS)}) "
                 f"FROM STDIN WITH (FORMAT text, DELIMITER ',', NULL '')")

    def copy_range(connection, begin, end):
        with connection.transaction(), connection.cursor() as cursor, cursor.copy(statement) as copy, \
                open(path, "rb") as f:
            f.seek(begin)
            copy.write(prefix)
            while begin < end:
                block = f.read(min(COPY_BLOCK, end - begin))
                begin += len(block)
                last = begin >= end  # the range's last line ends it: no prefix after its newline
                copy.write((block[:-1] if last else block).replace(b"\n", b"\n" + prefix) + (b"\n" if last else b""))

    connections = [psycopg.connect(DATABASE_URL, autocommit=True) for _ in cuts[1:]]  # outside the timing
    try:
        threads = [threading.Thread(target=copy_range, args=(connection, begin, end))
                   for connection, begin, end in zip(connections, cuts, cuts[1:])]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT external_id) FROM operations_demo_record WHERE operation_id = %s",
                       [FLOOR_OPERATION])
        stored = cursor.fetchone()[0]
    clear_records()
    if stored != rows:
        raise RuntimeError(f"records COPY in {parts} range(s) stored {stored:,} ids, expected {rows:,}")
    return elapsed


class BackendCpu(PeriodicSampler):
    """CPU seconds (user + system) that the PostgreSQL backends of this database spend while a
    side runs, but the one of this process's Django connection (its polls are the benchmark's,
    not the import's). Sampled in a thread: the connections an import opens for its ranges end
    with its step, so a reading after it would miss them."""

    def __init__(self, conn, interval=RSS_INTERVAL):
        from django.db import connection

        super().__init__(interval, "backend-cpu")
        connection.ensure_connection()
        self.polling = connection.connection.info.backend_pid
        self.postmaster = psutil.Process(conn.info.backend_pid).ppid()
        self.database = conn.info.dbname
        self.first, self.last = {}, {}

    @property
    def seconds(self):
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items())

    def _sample(self, first=False):
        for proc in psutil.Process(self.postmaster).children():
            try:
                if proc.pid == self.polling or f" {self.database} " not in " ".join(proc.cmdline()) + " ":
                    continue
                cpu = sum(proc.cpu_times()[:2])
            except psutil.Error:  # gone meanwhile
                continue
            if first:
                self.first[proc.pid] = cpu
            self.last[proc.pid] = cpu


def state_bytes(workflow, checkpoint, carry):
    """What the row stores of an operation's plan and position, as the bus writes it."""
    return len(json.dumps(workflow)) + len(json.dumps(checkpoint)) + len(json.dumps(carry))


class Import:
    """One ``csv_import`` operation, followed on its row until it is no longer active."""

    def __init__(self, path, rows, chunk_rows=None, ranges=None):
        self.path, self.rows, self.chunk_rows, self.ranges = path, rows, chunk_rows, ranges
        self.operation_id = None
        self.state_samples = []  # (bytes, (workflow, checkpoint, carry) bytes)
        self.pauses = []  # (seconds, progress when requested, progress when paused)

    def start(self):
        from operations.services import operation_start

        params = {"path": self.path.name}
        if self.chunk_rows:
            params["chunk_rows"] = self.chunk_rows
        if self.ranges:
            params["ranges"] = self.ranges
        self.operation_id = operation_start(kind="csv_import", params=params, actor="cli").pk
        return self

    def row(self, *fields):
        from operations.models import Operation

        return Operation.objects.filter(pk=self.operation_id).values_list(*fields).get()

    def follow(self, pause_at=(), started=None):
        """Until the row leaves the active statuses; pause (and resume) at each ``pause_at``."""
        from operations.states import ACTIVE

        started = started or time.perf_counter()
        pending = list(pause_at)
        poll = WATCH_POLL if pause_at else POLL
        while True:
            status, done, total, workflow, checkpoint, carry = self.row(
                "status", "progress_done", "progress_total", "workflow", "checkpoint", "carry")
            self.state_samples.append((state_bytes(workflow, checkpoint, carry),
                                       tuple(len(json.dumps(v)) for v in (workflow, checkpoint, carry))))
            if status not in ACTIVE:
                return status, time.perf_counter() - started
            if pending and status == "running" and total and done < total and done / total >= pending[0]:
                pending.pop(0)
                if done / total <= PAUSE_LATEST:
                    self.pause_and_resume(done / total)
                continue
            if time.perf_counter() - started > TIMEOUT:
                raise TimeoutError(f"operation {self.operation_id} is still {status} after {TIMEOUT}s")
            time.sleep(poll)

    def pause_and_resume(self, requested_at):
        """Seconds from ``operation_pause()`` until the row says paused; then resume it."""
        from operations.services import operation_pause, operation_resume

        started = time.perf_counter()
        operation_pause(operation=self.operation_id, actor="cli")
        while True:
            status, done, total = self.row("status", "progress_done", "progress_total")
            if status == "paused":
                break
            if status not in ("running", "pause_requested"):
                raise RuntimeError(f"operation {self.operation_id}: {status} while pausing")
            if time.perf_counter() - started > TIMEOUT:
                raise TimeoutError(f"operation {self.operation_id}: the pause did not land")
            time.sleep(PAUSE_POLL)
        self.pauses.append((time.perf_counter() - started, requested_at, done / total))
        operation_resume(operation=self.operation_id, actor="cli")

    def check(self, status):
        """The operation completed and stored each row of the file exactly once."""
        from django.db import connection

        if status != "completed":
            raise RuntimeError(f"operation {self.operation_id}: {status}: {self.row('error')[0]}")
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*), count(DISTINCT external_id), coalesce(sum(external_id), 0) "
                           "FROM operations_demo_record WHERE operation_id = %s", [self.operation_id])
            count, distinct, total = cursor.fetchone()
        expected_sum = self.rows * (self.rows + 1) // 2  # the demo file's ids are 1..rows
        if (count, distinct, total) != (self.rows, self.rows, expected_sum):
            raise RuntimeError(f"operation {self.operation_id} stored {count:,} rows ({distinct:,} ids, "
                               f"sum {total}), expected {self.rows:,} (ids 1..{self.rows:,})")

    @property
    def max_state(self):
        return max(self.state_samples)


def clear_records():
    """Every run starts from the same, empty, records table (this database is the benchmark's)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE operations_demo_record")


def run_import(worker, path, rows, *, chunk_rows=None, pause_at=(), ranges=None):
    """Seconds from ``operation_start()`` until the row says completed; the import, the memory.
    ``ranges``: the import's parameter (None: TAP_CSV_IMPORT_RANGES, the default)."""
    with RssSampler(worker.proc.pid) as rss:
        started = time.perf_counter()
        run = Import(path, rows, chunk_rows, ranges).start()
        status, elapsed = run.follow(pause_at, started)
    run.check(status)
    clear_records()
    return elapsed, run, rss


def checkpoint(conn):
    """Each side starts from a clean server: a CHECKPOINT first (outside the timing), so no side
    pays for the previous one's dirty pages, or for a checkpoint that its own WAL would trigger
    sooner (a 1M-row import writes a few hundred MB of WAL; max_wal_size is 1 GB by default)."""
    import psycopg

    try:
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:  # not a superuser (nor pg_checkpoint): as it comes
        pass


def default_side():
    """The side that is csv_import as configured (TAP_CSV_IMPORT_RANGES): 1 range or RANGES."""
    from operations.contrib.demo.conf import conf

    if conf.CSV_IMPORT_RANGES not in (1, RANGES):
        raise SystemExit(f"TAP_CSV_IMPORT_RANGES={conf.CSV_IMPORT_RANGES}: this benchmark times 1 and {RANGES}")
    return IN_RANGES if conf.CSV_IMPORT_RANGES == RANGES else ONE_RANGE


def measure(worker, conn, path, rows, rounds, chunk_rows):
    """Per round: the COPYs and the timed imports (order flipped every round), then an import
    paused (and resumed) mid-way. Returns the samples of every side."""
    sides = {
        "raw COPY": lambda: (run_raw_copy(conn, path, rows), None, None),
        # The floor of any import that refuses a duplicate id: the same COPY into a keyed table.
        "keyed COPY": lambda: (run_raw_copy(conn, path, rows, "raw_records_keyed"), None, None),
        FLOOR: lambda: (run_records_copy(path, rows), None, None),
        FLOOR_IN_RANGES: lambda: (run_records_copy(path, rows, RANGES), None, None),
        ONE_RANGE: lambda: run_import(worker, path, rows, chunk_rows=chunk_rows, ranges=1),
        IN_RANGES: lambda: run_import(worker, path, rows, chunk_rows=chunk_rows, ranges=RANGES),
    }
    seconds = {side: [] for side in sides}
    cpu = {side: [] for side in sides}  # PostgreSQL backend CPU seconds: steadier than time on a busy machine
    imports, samplers = [], []
    for round_ in range(rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        line = []
        for side in order:
            checkpoint(conn)
            with BackendCpu(conn) as backends:
                elapsed, run, rss = sides[side]()
            cpu[side].append(backends.seconds)
            seconds[side].append(elapsed)
            if run is None:
                line.append(f"{side} {elapsed:.3f} s")
            else:
                imports.append(run)
                samplers.append(rss)
                line.append(f"{side} {elapsed:.3f} s (child peak {rss.busiest_child()[2] / MB:.1f} MB)")
        # The paused import: the default one round, the parallel one the next.
        _, paused, rss = run_import(worker, path, rows, chunk_rows=chunk_rows, pause_at=PAUSE_AT,
                                    ranges=RANGES if round_ % 2 else 1)
        imports.append(paused)
        samplers.append(rss)
        landed = ", ".join(f"{s:.3f} s ({a:.0%}→{b:.0%})" for s, a, b in paused.pauses)
        ratio = seconds[default_side()][-1] / seconds["keyed COPY"][-1]
        print(f"  round {round_ + 1}/{rounds}: {', '.join(line)}, ÷ keyed COPY {ratio:.2f}×; paused import: "
              f"{landed or 'no pause landed mid-import'} (child peak {rss.busiest_child()[2] / MB:.1f} MB)",
              flush=True)
    return seconds, imports, samplers, cpu


# --- the report -----------------------------------------------------------------------------


def report(rows, rounds, chunk_rows, seconds, imports, samplers, small, cpu):
    verdicts = []

    def verdict(ok, what):
        verdicts.append(f"{'PASS' if ok else 'MISS'}  {what}")

    medians = {side: statistics.median(values) for side, values in seconds.items()}
    default = default_side()
    raw, keyed, ours, parallel = (medians[side] for side in ("raw COPY", "keyed COPY", default, IN_RANGES))
    ratio = ours / keyed
    print(f"\nMedian over {rounds} round(s), {rows:,} rows, chunk_rows {chunk_rows:,}. "
          f"ratio = ÷ raw COPY (no index); keyed COPY = the same COPY into a table with a primary key on id; "
          f"{FLOOR} = the bytes csv_import sends (each line prefixed with its operation id), in one COPY "
          f"into the records table (its key: operation, id), the floor of a one-connection import; "
          f"{FLOOR_IN_RANGES} = the same in {RANGES} COPYs side by side, the parallel import's floor; "
          f"{ONE_RANGE} / {IN_RANGES} = csv_import with ranges=1 / {RANGES} "
          f"(csv_import as configured: {default}).")
    print(f"{'side':<15} | {'median s':>8} | {'min s':>6} | {'max s':>6} | {'rows/s':>9} | {'ratio':>6}")
    print("-" * 66)
    for side, median in medians.items():
        print(f"{side:<15} | {median:>8.3f} | {min(seconds[side]):>6.3f} | {max(seconds[side]):>6.3f} | "
              f"{rows / median:>9,.0f} | {median / raw:>5.2f}×")
    for side, floor in ((ONE_RANGE, FLOOR), (IN_RANGES, FLOOR_IN_RANGES)):
        print(f"  {side} ÷ keyed COPY: {medians[side] / keyed:.2f}×; round by round: "
              + ", ".join(f"{o / k:.2f}×" for o, k in zip(seconds[side], seconds["keyed COPY"]))
              + f"; ÷ its floor ({floor}, {medians[floor] / keyed:.2f}× the keyed COPY): "
              f"{medians[side] / medians[floor]:.2f}×")
    backend = {side: statistics.median(values) for side, values in cpu.items()}
    timed = [(run, rss) for run, rss in zip(imports, samplers) if not run.pauses]
    child_cpu = {side: statistics.median([rss.cpu_last[pid] - rss.cpu_first[pid] for run, rss in timed
                                          if (run.ranges == RANGES) == (side == IN_RANGES)
                                          for pid in [rss.busiest_child()[0]]] or [0])
                 for side in (ONE_RANGE, IN_RANGES)}
    print("  PostgreSQL backend CPU (user + system, /proc; median; × the keyed COPY's): "
          + ", ".join(f"{side} {value:.2f} s ({value / backend['keyed COPY']:.2f}×)" for side, value in backend.items())
          + f"; the importing pool child's own CPU: median {child_cpu[ONE_RANGE]:.2f} s "
          f"({IN_RANGES} {child_cpu[IN_RANGES]:.2f} s)")
    verdict(ratio <= RATIO_TARGET, f"csv_import ({default}, as configured) ÷ keyed COPY at {rows:,} rows: "
                                   f"{ratio:.2f}× (target ≤ {RATIO_TARGET:.1f}×; ÷ raw COPY {ours / raw:.2f}×)")
    verdict(parallel / keyed <= RANGES_TARGET, f"the parallel import ({IN_RANGES} side by side) ÷ keyed COPY: "
                                               f"{parallel / keyed:.2f}× (target ≤ {RANGES_TARGET:.1f}×; its "
                                               f"floor, {FLOOR_IN_RANGES}: {medians[FLOOR_IN_RANGES] / keyed:.2f}×)")

    children = [rss.busiest_child() for rss in samplers]
    child_peak = max(peak for _, _, peak in children)
    child_idle = statistics.median(first for _, first, _ in children)
    tree_peak = max(rss.tree_peak for rss in samplers)
    pids = sorted({pid for pid, _, _ in children})
    print(f"\nWorker RSS during the {len(samplers)} imports of {rows:,} rows (psutil, every "
          f"{RSS_INTERVAL * 1000:.0f} ms; MB = 10^6 bytes):")
    print(f"  pool child that ran them (pid {', '.join(map(str, pids))}): {child_idle / MB:.1f} MB when "
          f"an import starts, peak {child_peak / MB:.1f} MB (+{(child_peak - child_idle) / MB:.1f} MB)")
    print(f"  whole worker (main process + pool child, summed; pages shared since the fork counted in "
          f"each): peak {tree_peak / MB:.1f} MB")
    verdict(child_peak <= RSS_TARGET, f"peak RSS of the pool child that imports {rows:,} rows: "
                                      f"{child_peak / MB:.1f} MB (target ≤ {RSS_TARGET / MB:.0f} MB)")

    pauses = [pause for run in imports for pause in run.pauses]
    if pauses:
        latencies = [s for s, _, _ in pauses]
        print(f"\nPause latency, operation_pause() → row says paused ({len(pauses)} pauses, each "
              f"requested as soon as a checkpoint showed ≥ {' / '.join(f'{p:.0%}' for p in PAUSE_AT)}; "
              f"then resumed):")
        print(f"  median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
              f"landed at " + ", ".join(f"{b:.0%}" for _, _, b in pauses))
        print(f"  every paused import completed after its resume(s) with exactly {rows:,} distinct ids")
        verdict(max(latencies) <= PAUSE_TARGET,
                f"pause latency mid-import: median {statistics.median(latencies) * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms (target ≤ {PAUSE_TARGET * 1000:.0f} ms)")
    else:
        verdict(False, "pause latency: no pause landed mid-import (file too small for its chunks?)")

    big = max(run.max_state for run in imports)
    samples = sum(len(run.state_samples) for run in imports)
    print("\nStored state while importing: len(json.dumps(x)) of workflow + checkpoint + carry, "
          "read from the row at every poll:")
    for label, (size, parts), count in ((f"{rows:,}-row file", big, samples),
                                        (f"{SMALL_ROWS:,}-row file", small.max_state, len(small.state_samples))):
        print(f"  {label:<17} max {size:,} B over {count:,} samples "
              f"(workflow {parts[0]:,} + checkpoint {parts[1]:,} + carry {parts[2]:,})")
    worst = max(big[0], small.max_state[0])
    verdict(worst <= STATE_TARGET, f"stored workflow + checkpoint + carry: max {worst:,} B "
                                   f"({SMALL_ROWS:,} rows: {small.max_state[0]:,} B, {rows:,} rows: "
                                   f"{big[0]:,} B) (target ≤ {STATE_TARGET / 1000:.0f} KB)")
    return verdicts, ratio > RATIO_TARGET or child_peak > RSS_TARGET, child_peak


# --- where the import's time goes (when it misses a target, or with --profile) --------------


def in_process_import(path, rows, chunk_rows):
    """The worker's work for one import, done here and timed piece by piece.

    The same code a worker runs for the step: ``csvio.chunks`` reads the file, ``load_chunk``
    COPYs a chunk, ``services.step_checkpoint`` moves the cursor, in one transaction per chunk
    (as ``ctx.checkpoint`` does). Only Celery, the claim and the final advance are missing.
    Returns (seconds in all, {piece: seconds}).
    """
    from django.db import transaction

    from operations import services
    from operations.contrib.demo.csvio import chunks, start_state
    from operations.contrib.demo.files import RECORD_HEADER
    from operations.contrib.demo.kinds.csv_import import load_chunk
    from operations.models import Operation

    operation = Operation.objects.create(kind="csv_import", status="running", run_token=1)
    pieces = dict.fromkeys(PIECES, 0.0)
    started = time.perf_counter()
    state = start_state(path, RECORD_HEADER, path.name)
    reader = chunks(state, path, RECORD_HEADER, path.name, chunk_rows, blocks=True)  # as csv_import on PostgreSQL
    fence = 0
    last = time.perf_counter()
    pieces["header + line count"] = last - started
    while True:
        item = next(reader, None)
        now = time.perf_counter()
        pieces["read chunks"] += now - last
        if item is None:
            break
        chunk, state = item
        with transaction.atomic():
            load_chunk(operation.pk, chunk, path.name)
            copied = time.perf_counter()
            services.step_checkpoint(operation.pk, 1, fence, state, done=state["rows"], total=state["total"])
            checkpointed = time.perf_counter()
        last = time.perf_counter()
        pieces["COPY"] += copied - now
        pieces["checkpoint UPDATE"] += checkpointed - copied
        pieces["COMMIT"] += last - checkpointed
        fence += 1
    elapsed = time.perf_counter() - started
    Operation.objects.filter(pk=operation.pk).update(status="completed")
    run = Import(path, rows)
    run.operation_id = operation.pk
    run.check("completed")
    clear_records()
    return elapsed, pieces


PIECES = ("header + line count", "read chunks", "COPY", "checkpoint UPDATE", "COMMIT")


def drop_record_constraint(contype):
    """Drop the records table's foreign key ("f") or primary key ("p"): this database only."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint "
                       "WHERE conrelid = 'operations_demo_record'::regclass AND contype = %s", [contype])
        for (name,) in cursor.fetchall():
            cursor.execute(f'ALTER TABLE operations_demo_record DROP CONSTRAINT "{name}"')


def profile(worker, conn, path, rows, chunk_rows, seconds, default_peak):
    """Other ``chunk_rows`` through the worker; the import's pieces timed in this process, with
    the records table as migrated and without its primary key (the records have no foreign key)."""
    raw = statistics.median(seconds["raw COPY"])
    default = statistics.median(seconds[default_side()])
    print(f"\nProfile. Other chunk_rows through the worker (one import each; {chunk_rows:,} is the "
          f"median above):")
    print(f"{'chunk_rows':>10} | {'seconds':>7} | {'÷ raw':>6} | {'s/chunk':>7} | {'child peak RSS':>14}")
    print("-" * 57)
    sweep = {}  # chunk_rows: (seconds, seconds per chunk, peak RSS of the pool child)
    for value in sorted({*PROFILE_CHUNK_ROWS, chunk_rows}):
        if value == chunk_rows:
            elapsed, peak, shown = default, default_peak, f"{default_peak / MB:.1f} MB (above)"
        else:
            elapsed, _, rss = run_import(worker, path, rows, chunk_rows=value)
            peak = rss.busiest_child()[2]
            shown = f"{peak / MB:>11.1f} MB"
        sweep[value] = elapsed, elapsed / -(-rows // value), peak
        print(f"{value:>10,} | {elapsed:>7.3f} | {elapsed / raw:>5.2f}× | {sweep[value][1]:>7.3f} | {shown}",
              flush=True)
    best = min(sweep, key=lambda value: sweep[value][0])
    fit = [value for value, (_, per_chunk, peak) in sweep.items() if per_chunk <= PAUSE_TARGET and peak <= RSS_TARGET]
    print(f"  fastest: chunk_rows {best:,}, {sweep[best][0]:.3f} s ({sweep[best][0] / raw:.2f}× the raw COPY)")
    if fit:
        best_fit = min(fit, key=lambda value: sweep[value][0])
        print(f"  fastest with a chunk within the pause target (s/chunk ≤ {PAUSE_TARGET:.0f} s: a pause "
              f"waits up to one chunk) and the memory target: chunk_rows {best_fit:,}, "
              f"{sweep[best_fit][0]:.3f} s ({sweep[best_fit][0] / raw:.2f}×)")

    print(f"\nThe import's pieces, timed in this process (the faster of 2 imports; chunk_rows "
          f"{chunk_rows:,}; the raw COPY median is {raw:.3f} s; 'read chunks' cuts the file into "
          f"blocks, the prefixing of each line is part of COPY). The schema change is made in "
          f"{DATABASE} only, after every measurement above:")
    print(f"{'records table':<24} | {'total':>6} | " + " | ".join(f"{p:>{max(7, len(p))}}" for p in PIECES)
          + f" | {'÷ raw':>6}")
    print("-" * 120)
    without_pk = None
    for label, drop in (("as migrated (primary key)", None), ("without the primary key", "p")):
        if drop:
            drop_record_constraint(drop)
        elapsed, pieces = min((in_process_import(path, rows, chunk_rows) for _ in range(2)), key=lambda run: run[0])
        print(f"{label:<24} | {elapsed:>6.3f} | "
              + " | ".join(f"{pieces[p]:>{max(7, len(p))}.3f}" for p in PIECES)
              + f" | {elapsed / raw:>5.2f}×", flush=True)
        if drop == "p":  # the key's share, end to end: the real worker on the table without it
            without_pk = [run_import(worker, path, rows, chunk_rows=chunk_rows)[0] for _ in range(2)]
    started = time.perf_counter()
    with open(path, "rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(COPY_BLOCK), b""))
    block_read = time.perf_counter() - started
    print(f"  reading the same file in {COPY_BLOCK >> 20} MiB blocks and counting its {lines:,} lines: "
          f"{block_read:.3f} s")
    median = statistics.median(without_pk)
    print(f"  csv_import through the worker on the records table without its primary key (2 imports): "
          f"median {median:.3f} s, {median / raw:.2f}× the raw COPY (as migrated: {default / raw:.2f}×)")
    # The floor of any import that keeps a unique key: the baseline with a primary key on id.
    conn.execute("CREATE TABLE raw_records_pk (LIKE raw_records); ALTER TABLE raw_records_pk ADD PRIMARY KEY (id)")
    keyed = [run_raw_copy(conn, path, rows, "raw_records_pk") for _ in range(2)]
    conn.execute("DROP TABLE raw_records_pk")
    print(f"  the raw COPY into the same table with a primary key on id (2 runs): median "
          f"{statistics.median(keyed):.3f} s, {statistics.median(keyed) / raw:.2f}× the raw COPY without it")


PROFILE_CHUNK_ROWS = (10_000, 25_000, 100_000, 200_000)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the CSV file")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="the import's chunk_rows parameter (default: TAP_CSV_CHUNK_ROWS)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the import even if it meets its time and memory targets")
    parser.add_argument("--no-profile", action="store_true",
                        help="do not profile the import even if it misses them")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rounds < 1 or (args.chunk_rows is not None and args.chunk_rows < 1):
        parser.error("--rows, --rounds and --chunk-rows must be at least 1")

    configure_environment()
    reset_services()
    common.setup_django()
    import psycopg
    from django.conf import settings

    chunk_rows = args.chunk_rows or settings.TAP_CSV_CHUNK_ROWS
    path = ensure_csv(args.rows)
    small_path = ensure_csv(SMALL_ROWS)
    worker = common.make_worker(VAR_DIR / "worker.log")
    print(f"PostgreSQL {DATABASE} + Redis db {BROKER_DB} (queue {QUEUE}); one prefork worker, "
          f"--concurrency 1 (log: {worker.log_path.relative_to(ROOT)})", flush=True)
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn, common.running(worker):
        conn.execute(RAW_TABLE)
        # Warm-up (imports, connections, first-call code paths), and the small file's state.
        run_raw_copy(conn, small_path, SMALL_ROWS)
        _, small, _ = run_import(worker, small_path, SMALL_ROWS, chunk_rows=chunk_rows)
        seconds, imports, samplers, cpu = measure(worker, conn, path, args.rows, args.rounds, chunk_rows)
        verdicts, missed, child_peak = report(args.rows, args.rounds, chunk_rows, seconds, imports,
                                              samplers, small, cpu)
        if args.profile or (missed and not args.no_profile):
            profile(worker, conn, path, args.rows, chunk_rows, seconds, child_peak)
    print()
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
