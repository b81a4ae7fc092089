"""Write docs/reliability.md from what the fault suite recorded (``make faults``).

Reads var/faults/results.jsonl (one line per fault run, storm and load) and the JUnit XML files of
the pytest runs (var/faults/junit-*.xml) for the bad-input and security cases.

    python -m tests.faults.report > docs/reliability.md
"""

import json
import os
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FAULTS_DIR = ROOT / "var" / "faults"

FAULTS = {
    "sigkill-pool-child": "SIGKILL of the pool child running the step (the worker forks a new one)",
    "sigkill-whole-worker": "SIGKILL of the whole worker (main process and children), then a new worker",
    "redis-restart": "Redis restarted without persistence at a random point while a step runs: its unacknowledged message is lost",
    "redis-restart-queued": "Redis restarted empty while the step's only message waited in the queue (no worker had it)",
    "postgres-crash": "PostgreSQL stopped with `-m immediate` mid-chunk / mid-step, started again",
    "duplicate-messages": "every step message published twice (by the worker and by the starter)",
    "visibility-timeout": "a step outlives Redis' visibility timeout (2 s): the message is redelivered while it runs",
    "sigstop-past-lease": "the worker SIGSTOPped past its lease, rescued by another worker, then SIGCONTed",
    "sigkill-every-pool-child": "SIGKILL of every pool process at once mid-import (the OOM killer); the worker "
                                "runs under operations.supervise and beat recovers it — no person acts",
    "sigkill-every-pool-child-manual": "the same, for a kind with automatic recovery off: moving again where "
                                       "the broker kept the message, else shown interrupted with its heartbeat's "
                                       "age and left so by beat; the one resume that kind asks of a person is "
                                       "the test's (not counted)",
    "partition-postgres": "the worker (in its own network namespace) cut off from PostgreSQL mid-step, "
                          "packets dropped on its side, healed after longer than the lease",
    "partition-broker": "the worker (in its own network namespace) cut off from Redis mid-step, "
                        "packets dropped on its side, healed after longer than the lease",
    "disk-full": "the disk (a 48 MB tmpfs) under the embedded default's database and broker folders fills up "
                 "mid-run, for longer than the lease; then space comes back",
    "import-10m": "a 10,000,000-row (≈ 700 MB) CSV import whose pool child is SIGKILLed in the middle; "
                  "the worker's RSS is sampled throughout",
}


def load_runs():
    path = FAULTS_DIR / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_run(run):
    """Append one run (a dict with at least "fault" and "problems") to results.jsonl, with the
    test that ran it, as its JUnit case is named (to find the tests that failed before this)."""
    FAULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(FAULTS_DIR / "results.jsonl", "a") as out:
        out.write(json.dumps({**run, "test": current_test(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def current_test():
    """'tests.faults.test_faults::test_sigkill[pool-child-import-0]': pytest's running test,
    as a JUnit file's classname and name."""
    nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    path, _, name = nodeid.partition("::")
    return f"{path.removesuffix('.py').replace('/', '.')}::{name}"


#: The modules whose tests each end in a recorded run (``verdict``, or the partitions' ``_failed``).
FAULT_MODULES = ("test_faults", "test_partitions", "test_scale", "test_disk")
BACKENDS = ("sqlite-fs", "pg-redis", "pg-rabbitmq")


def failed_before_a_verdict(runs, cases):
    """JUnit cases of the fault modules that failed without recording a run (a wait that timed
    out, a set-up that broke): runs with a problem too, or the totals would leave them out."""
    recorded = {(run.get("test"), run.get("backend")) for run in runs}
    return [case for case in cases if case["outcome"] == "failed"
            and case["file"].rpartition(".")[2] in FAULT_MODULES
            and (f"{case['file']}::{case['name']}", _backend(case["backend"])) not in recorded]


def _backend(junit_backend):
    """'pg-redis-partitions' → 'pg-redis': the backend a JUnit file's pytest run used."""
    return next((name for name in BACKENDS if junit_backend.startswith(name)), junit_backend)


def junit_cases():
    cases = []
    for path in sorted(FAULTS_DIR.glob("junit-*.xml")):
        backend = path.stem.removeprefix("junit-")
        for case in ET.parse(path).iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            cases.append({"backend": backend, "file": case.get("classname", ""), "name": case.get("name", ""),
                          "outcome": outcome})
    return cases


def fault_table(runs):
    grouped = defaultdict(list)
    for run in runs:
        if run.get("fault") in FAULTS and run["fault"] != "import-10m":
            grouped[run["fault"], run["workload"], run["backend"]].append(run)
    lines = ["| fault | workload | backend | runs | with problems | person's actions | automatic resumes "
             "| worker restarts | median s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (fault, workload, backend), items in sorted(grouped.items()):
        bad = sum(1 for item in items if item["problems"])
        people = sum(len(item.get("interventions", [])) for item in items)
        automatic = sum(item.get("auto_resumes", 0) for item in items)
        restarts = sum(item.get("restarts", 0) for item in items)
        seconds = statistics.median(item["seconds"] for item in items)
        lines.append(f"| {fault} | {workload} | {backend} | {len(items)} | {bad} | {people} | {automatic} "
                     f"| {restarts} | {seconds:.0f} |")
    return "\n".join(lines)


def scale_table(runs):
    items = [run for run in runs if run.get("fault") == "import-10m"]
    if not items:
        return "_No big import was recorded._"
    lines = ["| backend | rows | rows/s | killed at row | moving again after (s) | pool child RSS start → peak "
             "(MB) | RSS growth after warm-up (MB) | main process growth (MB) | person's actions | problems |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for item in sorted(items, key=lambda i: (i["backend"], i.get("rows", 0))):
        lines.append(f"| {item['backend']} | {item.get('rows', 0):,} | {item.get('rows_per_second', 0):,} "
                     f"| {item.get('kill_at_rows', 0):,} | {item.get('recovered_in', '')} "
                     f"| {item.get('rss_start_mb', '')} → {item.get('rss_peak_mb', '')} | {item.get('rss_growth_mb', '')} "
                     f"| {item.get('main_rss_growth_mb', '')} | {len(item.get('interventions', []))} "
                     f"| {len(item['problems'])} |")
    return "\n".join(lines)


def other_table(runs, kind):
    items = [run for run in runs if run.get("fault") == kind]
    if not items:
        return f"_No {kind} run was recorded._"
    keys = sorted({key for item in items for key in item if key not in ("fault", "problems", "at")})
    lines = ["| " + " | ".join(keys) + " | problems |", "|" + "---|" * (len(keys) + 1)]
    for item in items:
        lines.append("| " + " | ".join(str(item.get(key, "")) for key in keys) + f" | {len(item['problems'])} |")
    return "\n".join(lines)


def case_list(cases, file_part):
    chosen = [c for c in cases if file_part in c["file"]]
    if not chosen:
        return "_Not run._"
    by_name = defaultdict(list)
    for case in chosen:
        by_name[case["name"]].append(f"{case['backend']}: {case['outcome']}")
    return "\n".join(f"- `{name}` — {', '.join(outcomes)}" for name, outcomes in sorted(by_name.items()))


def _unrecorded_list(unrecorded):
    if not unrecorded:
        return ""
    return ("Failed before their verdict (not in the table; each counts as a run with a problem):\n\n"
            + "\n".join(f"- `{case['file']}::{case['name']}` ({case['backend']})" for case in unrecorded) + "\n\n")


def main(out=sys.stdout):
    runs, cases = load_runs(), junit_cases()
    problems = [run for run in runs if run.get("problems")]
    fault_runs = [run for run in runs if run.get("fault") in FAULTS]
    unrecorded = failed_before_a_verdict(runs, cases)
    out.write(f"""# Reliability

_Written by `make faults` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({platform.machine()},
Python {platform.python_version()}). Do not edit by hand: run `make faults` again._

The promise: whatever happens, an operation loses no row of work and applies no effect twice.
The fault suite (`tests/faults/`) injects each fault at a random point (seeded) of two workloads —
a 20,000-row **CSV import** (chunks of 500 rows, each committed with its checkpoint) and a 25-step
**chain** whose every step writes one row in the step's own transaction (on PostgreSQL in sticky
slices: the worker that commits a step runs the next one itself) — plus, for duplicate messages,
a **pure chain** of arithmetic steps whose messages are published while their advances run — drives the operation to
completion with **nobody acting**: beat runs next to the workers, its reconciler marks a silent
operation interrupted after the heartbeat lease and resumes it by the kind's recovery policy (on
for the demo kinds), and workers that must come back run under `operations.supervise`. Then it
checks: exact row count, no id stored twice, the checksum of the input, the expected result, an
event history in which every status change is legal and continues from the previous one — and
that no person changed the operation's status after the fault (a person's action is a problem).

**{len(fault_runs) + len(unrecorded)} fault runs, {len(problems) + len(unrecorded)} with a problem ({len(unrecorded)} of them failed before their verdict), {sum(len(r.get("interventions", [])) for r in fault_runs)} person's actions.**

## Faults

{chr(10).join(f"- **{name}**: {text}" for name, text in FAULTS.items())}

{fault_table(runs)}

{_unrecorded_list(unrecorded)}"with problems" counts runs in which the checker found a lost or doubled row, a wrong checksum
or result, an illegal transition, or a status change by a person after the fault. Automatic
resumes are beat's (an event by `beat`, after its reconciler marked the operation `interrupted`);
worker restarts are a process supervisor's: `operations.supervise` starting a worker that exited
(its watchdog ends a wedged one), or the test standing in for a machine's init system after it
killed the whole worker. The `-manual` fault uses a kind with automatic recovery off: where the
broker keeps the message (Redis, RabbitMQ) the pool's new children simply run it again; where it
is lost with the wedged worker (the filesystem broker), the operation is shown interrupted with its
heartbeat's age and beat leaves it so — the one resume that kind asks of a person is the test's.

Why beat's resumes differ by backend: RabbitMQ returns a killed worker's unacknowledged message to
the queue as soon as its connection closes, so the new worker runs it again (fenced, so it counts
once); Redis keeps it until the visibility timeout (an hour by default) and the filesystem broker
not at all, so the reconciler marks the operation `interrupted` after the lease and beat's resume
re-sends the step from the stored workflow. When Redis restarts while the step is running, the
worker finishes it, reconnects (`operations/brokers/redis.py`; kombu 5.7's own transport makes it
exit) and sends the next step to the new, empty Redis; `redis-restart-queued` is the harder case in
which the only message was waiting in the queue and is gone.

A database that is down or a disk that is full does not fail a step (operations/outages.py): the
step stops, its heartbeat goes stale, and beat's reconciler — whose own writes wait for the same
database — interrupts and resumes it once writes succeed again. `sigstop-past-lease` is not run on
SQLite: a process frozen inside a write transaction holds SQLite's only write lock, so nothing —
beat included — can write until it continues or dies; on one machine, that is the whole machine
being frozen. Partitions need a network, so they run on PostgreSQL + Redis only.

## A big import with a fault in the middle

{scale_table(runs)}

The pool child running the import is SIGKILLed at a seeded point between 30 % and 70 %; its RSS
(and every later child's) is sampled every 0.1 s. "Growth after warm-up" is a child's peak after the
first 10 % of the rows it imported minus its peak before: what grows with the file's size.

## Concurrent control storm

Threads and processes send random pause / resume / cancel / retry / terminate / edit / fork /
approve / signal / reject to the same operations while the worker runs them; afterwards every
operation — and every fork the storm made, against what its original promises — must end in one
final state, with only legal transitions and exactly its rows.

{other_table(runs, "storm")}

## Load

{other_table(runs, "load")}

## Clean stop

Ctrl-C (SIGINT to honcho) of `make run` at random moments — idle, mid-step, mid-checkpoint — must
leave no process of it after 10 s (`tests/faults/test_stop.py`, twice as many rounds as the
faults' seeds):

{case_list(cases, "test_stop")}

## Bad input

Each case asserts the message (naming the file, line and column, or the parameter) and that
nothing was written.

{case_list(cases, "test_bad_input")}

## Security

{case_list(cases, "test_security")}
""")
    for run in problems:
        out.write(f"\n- problem in {run.get('fault')}/{run.get('workload')} ({run.get('backend')}, seed "
                  f"{run.get('seed')}): {run['problems']}")


if __name__ == "__main__":
    main()
