"""Write docs/reliability.md from what the fault suite recorded (``make faults``).

Reads var/faults/results.jsonl (one line per fault run, storm and load) and the JUnit XML files of
the pytest runs (var/faults/junit-*.xml) for the bad-input and security cases.

    python -m tests.faults.report > docs/reliability.md
"""

import json
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
}


def load_runs():
    path = FAULTS_DIR / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_run(run):
    """Append one run (a dict with at least "fault" and "problems") to results.jsonl."""
    FAULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(FAULTS_DIR / "results.jsonl", "a") as out:
        out.write(json.dumps({**run, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


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
        if run.get("fault") in FAULTS:
            grouped[run["fault"], run["workload"], run["backend"]].append(run)
    lines = ["| fault | workload | backend | runs | with problems | resumes / retries / worker restarts | median s |",
             "|---|---|---|---:|---:|---|---:|"]
    for (fault, workload, backend), items in sorted(grouped.items()):
        bad = sum(1 for item in items if item["problems"])
        done = [i for item in items for i in item["interventions"]]
        counts = (sum(i.startswith("resume") for i in done), done.count("retry"), done.count("worker restarted"))
        seconds = statistics.median(item["seconds"] for item in items)
        lines.append(f"| {fault} | {workload} | {backend} | {len(items)} | {bad} | {' / '.join(map(str, counts))} "
                     f"| {seconds:.0f} |")
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


def main(out=sys.stdout):
    runs, cases = load_runs(), junit_cases()
    problems = [run for run in runs if run.get("problems")]
    fault_runs = [run for run in runs if run.get("fault") in FAULTS]
    out.write(f"""# Reliability

_Written by `make faults` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({platform.machine()},
Python {platform.python_version()}). Do not edit by hand: run `make faults` again._

The promise: whatever happens, an operation loses no row of work and applies no effect twice.
The fault suite (`tests/faults/`) injects each fault at a random point (seeded) of two workloads —
a 20,000-row **CSV import** (chunks of 500 rows, each committed with its checkpoint) and a 25-step
**chain** whose every step writes one row in the step's own transaction — drives the operation to
completion the way an operator would (resume what is interrupted, retry what failed), then checks:
exact row count, no id stored twice, the checksum of the input, the expected result, and an event
history in which every status change is legal and continues from the previous one.

**{len(fault_runs)} fault runs, {len(problems)} with a problem.**

## Faults

{chr(10).join(f"- **{name}**: {text}" for name, text in FAULTS.items())}

{fault_table(runs)}

"with problems" counts runs in which the checker found a lost or doubled row, a wrong checksum
or result, or an illegal transition. Interventions are what an operator did afterwards: a resume
of an operation the reconciler marked `interrupted` (its worker or its messages were gone), or a
retry of one whose step failed while the database was down; and what a process supervisor does:
start a worker that exited. No worker had to be restarted after a Redis restart: kombu 5.7's Redis
transport makes a worker exit when Redis restarts under a running task (it restores and acks
through the closed connection); `operations/brokers/redis.py` fixes that, and the redis-restart runs
check that the same worker carries on.

Why the interventions differ: RabbitMQ returns a killed worker's unacknowledged message to the
queue as soon as its connection closes, so the new worker simply runs it again (fenced, so it
counts once); Redis keeps it until the visibility timeout (an hour by default), so the reconciler
marks the operation `interrupted` after the lease and a resume re-sends the step from the stored
workflow. When Redis restarts while the step is running, the worker finishes it, reconnects and
sends the next step to the new, empty Redis; `redis-restart-queued` is the harder case in which the only
message was waiting in the queue and is gone.

## Concurrent control storm

Threads and processes send random pause / resume / cancel / retry to the same operations while
the worker runs them; afterwards every operation must end in one final state, with only legal
transitions and exactly its rows.

{other_table(runs, "storm")}

## Load

{other_table(runs, "load")}

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
