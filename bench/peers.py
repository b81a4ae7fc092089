"""Peers: DBOS Transact and the tappable engine side by side, in the same run, interleaved.

    python bench/peers.py [--steps 200 1000] [--rows 1000000] [--rounds 3] [--chunk-rows 50000]
                          [--no-count] [--no-import]

(a) **A chain of N trivial durable steps**: DBOS's workflow of N ``@DBOS.step`` adds (in this
process, its system database on the same PostgreSQL server) against the tappable chain of N
``operations.add`` steps (``bench_chain``, as ``bench/overhead.py`` runs it: PostgreSQL + Redis,
one prefork worker with ``--concurrency 1``). Prints ms/step of each and ours ÷ DBOS; then, in
an untimed run through counting proxies, the statements and round trips of each per step.

(b) **The 1M-row demo CSV into a keyed table**: DBOS doing it as a workflow with one
``@ds.transaction`` step per ``--chunk-rows`` rows (a COPY of that byte range of the file,
committed with DBOS's record of the step, so a re-run never loads a chunk twice), against our
``csv_import`` (as ``bench/import_csv.py`` runs it) and a single COPY of the whole file into the
same keyed table (``raw_records_keyed``: the floor of any import that refuses duplicate ids).

Medians of ``--rounds`` interleaved rounds. DBOS is an optional dependency
(``requirements/bench.txt``; ``make bench`` and ``make bench-smoke`` install it): without it the
DBOS sides are skipped with a line saying so and the rest still runs. It drops and recreates the
PostgreSQL databases ``tapbench_peers`` (ours; DBOS's datasource tables go in its ``dbos`` schema)
and ``tapbench_peers_dbos`` (DBOS's system database), and flushes Redis db 12 (on the servers of
DATABASE_URL and CELERY_BROKER_URL, see ``bench/common.py``). A report, not a test: exits 0.
"""

import argparse
import math
import os
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0]: the project is beside it
    sys.path.insert(0, str(ROOT))

from bench import common, import_csv, overhead

DATABASE, DBOS_DATABASE, BROKER_DB = "tapbench_peers", "tapbench_peers_dbos", 12
DATABASE_URL = common.database_url(DATABASE)
DBOS_URL = common.database_url(DBOS_DATABASE)
BROKER_URL = common.broker_url(BROKER_DB)
VAR_DIR = ROOT / "var" / "bench" / "peers"
KEYED_TABLE = "raw_records_keyed"
CHUNK_COPY = f"COPY {KEYED_TABLE} (id, name, email, amount, date) FROM STDIN WITH (FORMAT csv)"
DBOS_RATIO_TARGET = 0.5  # DESIGN §7: a tappable step ≤ 0.5× DBOS's
IMPORT_RATIO_TARGET = 1.0  # … and csv_import ≤ 1.0× a COPY into the keyed table


# --- DBOS -----------------------------------------------------------------------------------


class Dbos:
    """DBOS, launched in this process: the chain workflow and the chunked-COPY workflow."""

    def __init__(self, system_url, app_url):
        import logging

        from dbos import DBOS, SQLAlchemyDatasource

        logging.getLogger("dbos").setLevel(logging.WARNING)  # DBOS's own start-up lines
        self.DBOS, self.system_url = DBOS, system_url
        self.version = version("dbos")
        # One datasource (our database): each chunk's COPY commits with DBOS's record of it.
        datasource = SQLAlchemyDatasource.create(app_url)

        @DBOS.step()
        def add(x, y):
            return x + y

        @DBOS.workflow()
        def chain(steps):
            value = 0
            for _ in range(steps):
                value = add(value, 1)
            return value

        @DBOS.step()
        def plan(path, rows, chunk_rows):
            return chunk_ranges(path, rows, chunk_rows)

        # READ COMMITTED, as Django runs our import (DBOS's default is SERIALIZABLE).
        @datasource.transaction(isolation_level="READ COMMITTED")
        def copy_chunk(path, start, end):
            conn = datasource.sql_session().connection().connection.driver_connection
            with conn.cursor() as cursor, cursor.copy(CHUNK_COPY) as copy, open(path, "rb") as f:
                f.seek(start)
                while (left := end - f.tell()) > 0:
                    copy.write(f.read(min(import_csv.COPY_BLOCK, left)))

        @DBOS.workflow()
        def load(path, rows, chunk_rows):
            ranges = plan(path, rows, chunk_rows)
            for start, end in ranges:
                copy_chunk(path, start, end)
            return len(ranges)

        self.chain, self.load = chain, load
        self.launch(system_url)

    def launch(self, system_url):
        self.DBOS(config={"name": "tapbench-peers", "system_database_url": system_url,
                          "log_level": "WARNING", "run_admin_server": False})
        self.DBOS.launch()

    def relaunch(self, system_url):
        """The same workflows against another system database URL (e.g. a counting proxy)."""
        self.DBOS.destroy()
        self.launch(system_url)

    def run_chain(self, steps):
        started = time.perf_counter()
        value = self.chain(steps)
        elapsed = time.perf_counter() - started
        if value != steps:
            raise RuntimeError(f"DBOS chain of {steps} returned {value!r}")
        return elapsed, None

    def run_load(self, conn, path, rows, chunk_rows):
        conn.execute(f"TRUNCATE {KEYED_TABLE}")
        started = time.perf_counter()
        chunks = self.load(str(path), rows, chunk_rows)
        elapsed = time.perf_counter() - started
        stored = conn.execute(f"SELECT count(*) FROM {KEYED_TABLE}").fetchone()[0]
        if stored != rows:
            raise RuntimeError(f"DBOS's chunked COPY stored {stored:,} rows, expected {rows:,}")
        return elapsed, chunks


def chunk_ranges(path, rows, chunk_rows):
    """Byte ranges of the file's data lines, ``ceil(rows / chunk_rows)`` of them, about equal in
    size, each cut at a line end (the demo file has no line break inside a field)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        first = len(f.readline())  # the header
        count = max(1, math.ceil(rows / chunk_rows))
        cuts = [first]
        for i in range(1, count):
            f.seek(first + (size - first) * i // count)
            f.readline()  # to the end of the line the cut fell in
            cuts.append(max(f.tell(), cuts[-1]))
        cuts.append(size)
    return [(start, end) for start, end in zip(cuts, cuts[1:]) if end > start]


def load_dbos(system_url, app_url):
    """A launched ``Dbos``, or (None, why) when the package is not installed."""
    try:
        import dbos  # noqa: F401
    except ImportError as exc:
        return None, f"DBOS is not installed ({exc}); `pip install -r requirements/bench.txt`"
    return Dbos(system_url, app_url), None


# --- (a) the chain --------------------------------------------------------------------------


def chain_part(worker, peer, steps_list, rounds):
    sides = {"tappable": overhead.run_tappable}
    if peer:
        sides["DBOS"] = peer.run_chain
    for side in sides.values():  # warm-up: imports, connections, first-call code paths
        side(20)
    medians, _ = overhead.measure(steps_list, rounds, sides)
    return medians


def count_chain(peer, count_steps):
    """Per step: what the worker sends for a tappable step, and what DBOS sends for one of its."""
    counts = overhead.count_per_step({"tappable": overhead.run_tappable}, VAR_DIR / "worker-count.log",
                                     count_steps)
    if peer:
        with common.CountingProxy(DBOS_URL, "postgres") as pg:
            peer.relaunch(pg.url)
            try:
                peer.run_chain(count_steps[0])  # warm
                per_length = []
                for steps in count_steps:
                    before = pg.counts()
                    peer.run_chain(steps)
                    time.sleep(0.05)
                    per_length.append([b - a for a, b in zip(before, pg.counts())])
            finally:
                peer.relaunch(DBOS_URL)
        statements, round_trips = ((b - a) / (count_steps[1] - count_steps[0])
                                   for a, b in zip(*per_length))
        counts["DBOS"] = (statements, round_trips, 0.0, 0.0)
    return counts


def report_chain(steps_list, rounds, medians, peer, skipped, verdict):
    print(f"\n(a) A chain of trivial durable steps. Median ms/step over {rounds} interleaved round(s); "
          f"ratio = tappable ÷ DBOS.")
    print(f"{'steps':>6} | {'tappable':>9} | {'DBOS':>9} | {'ratio':>6}")
    print("-" * 40)
    for steps in steps_list:
        ours = medians[steps, "tappable"]
        if not peer:
            print(f"{steps:>6} | {ours:>9.3f} | {'-':>9} | {'-':>6}")
            continue
        theirs = medians[steps, "DBOS"]
        print(f"{steps:>6} | {ours:>9.3f} | {theirs:>9.3f} | {ours / theirs:>5.2f}×")
        verdict(ours / theirs <= DBOS_RATIO_TARGET, f"tappable ÷ DBOS at {steps} steps: "
                                                    f"{ours / theirs:.2f}× (target ≤ {DBOS_RATIO_TARGET}×)")
    if skipped:
        print(f"  DBOS skipped: {skipped}")


# --- (b) the import -------------------------------------------------------------------------


def import_part(worker, conn, peer, path, rows, rounds, chunk_rows, label=None):
    def after_a_checkpoint(side):  # as in bench/import_csv: no side pays for another's dirty pages
        return lambda: (import_csv.checkpoint(conn), side())[1]

    sides = {
        "keyed COPY": lambda: (import_csv.run_raw_copy(conn, path, rows, KEYED_TABLE), None),
        "csv_import": lambda: (import_csv.run_import(worker, path, rows, chunk_rows=chunk_rows)[0], None),
    }
    if peer:
        sides["DBOS chunked COPY"] = lambda: peer.run_load(conn, path, rows, chunk_rows)
    sides = {name: after_a_checkpoint(side) for name, side in sides.items()}
    samples, extras = common.interleaved(sides, rounds, label or f"{rows:,} rows")
    return {side: statistics.median(values) for side, values in samples.items()}, extras


def report_import(rows, rounds, chunk_rows, medians, extras, skipped, verdict):
    keyed, ours = medians["keyed COPY"], medians["csv_import"]
    print(f"\n(b) {rows:,} rows of the demo CSV into a keyed table. Median s over {rounds} interleaved "
          f"round(s); ÷ keyed = ÷ one COPY of the whole file into {KEYED_TABLE} (primary key on id).")
    print(f"{'side':<18} | {'median s':>8} | {'rows/s':>9} | {'÷ keyed':>7}")
    print("-" * 52)
    for side, median in medians.items():
        print(f"{side:<18} | {median:>8.3f} | {rows / median:>9,.0f} | {median / keyed:>6.2f}×")
    if "DBOS chunked COPY" in medians:
        theirs = medians["DBOS chunked COPY"]
        print(f"  csv_import ÷ DBOS chunked COPY: {ours / theirs:.2f}× (DBOS: "
              f"{extras['DBOS chunked COPY']} steps of ~{chunk_rows:,} rows, each a READ COMMITTED "
              f"transaction recorded by DBOS; csv_import: chunk_rows {chunk_rows:,})")
    if skipped:
        print(f"  DBOS skipped: {skipped}")
    verdict(ours / keyed <= IMPORT_RATIO_TARGET, f"csv_import ÷ keyed COPY at {rows:,} rows: "
                                                 f"{ours / keyed:.2f}× (target ≤ {IMPORT_RATIO_TARGET}×)")


# --- main -----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1000], help="chain lengths")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the CSV file")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each part")
    parser.add_argument("--chunk-rows", type=int, default=50_000,
                        help="rows per chunk, of csv_import and of DBOS's steps")
    parser.add_argument("--count-steps", type=int, nargs=2, default=overhead.COUNT_STEPS,
                        help="the two chain lengths of the counting run")
    parser.add_argument("--no-count", action="store_true", help="skip the counting run")
    parser.add_argument("--no-import", action="store_true", help="skip part (b)")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.rounds < 1 or args.rows < 1 or args.chunk_rows < 1:
        parser.error("--steps, --rounds, --rows and --chunk-rows must be at least 1")
    count_steps = tuple(args.count_steps)

    common.configure_environment(database_url=DATABASE_URL, broker_url=BROKER_URL, var_dir=VAR_DIR,
                                 kind_modules="bench.overhead")
    os.environ["TAP_CSV_DIR"] = str(import_csv.CSV_DIR)  # one copy of the demo files for both benches
    for name in (DATABASE, DBOS_DATABASE):
        common.reset_database(name)
    common.reset_broker(BROKER_URL)
    common.setup_django()
    import psycopg

    path = None if args.no_import else import_csv.ensure_csv(args.rows)
    warm_rows = min(args.rows, 20_000)
    warm_path = None if args.no_import else import_csv.ensure_csv(warm_rows)
    worker = common.make_worker(VAR_DIR / "worker.log")
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(import_csv.RAW_TABLE)
        peer, skipped = load_dbos(DBOS_URL, DATABASE_URL)
        print(f"PostgreSQL {common.server_label(DATABASE_URL)} (DBOS's system database "
              f"{DBOS_DATABASE}) + Redis {common.server_label(BROKER_URL)}; one prefork worker, "
              f"--concurrency 1 (log: {worker.log_path.relative_to(ROOT)}); "
              f"{f'DBOS Transact {peer.version}' if peer else skipped}", flush=True)
        try:
            with common.running(worker):
                medians = chain_part(worker, peer, args.steps, args.rounds)
                if path:
                    import_part(worker, conn, peer, warm_path, warm_rows, 1, args.chunk_rows,
                                f"warm-up, {warm_rows:,} rows")
                    import_medians, extras = import_part(worker, conn, peer, path, args.rows,
                                                         args.rounds, args.chunk_rows)
            counts = None if args.no_count else count_chain(peer, count_steps)
        finally:
            if peer:
                peer.DBOS.destroy()
    verdict = common.Verdicts()
    report_chain(args.steps, args.rounds, medians, peer, skipped, verdict)
    if counts:
        overhead.print_counts(counts, count_steps)
        if peer:
            print("  (DBOS talks to PostgreSQL only: its steps run in this process, no broker.)")
    if path:
        report_import(args.rows, args.rounds, args.chunk_rows, import_medians, extras, skipped, verdict)
    verdict.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
