"""Overhead of a tappable chain against the plain Celery chain it is built from.

Both sides run the same ``operations.add`` steps on PostgreSQL + Redis through one prefork
worker with ``--concurrency 1``, so the difference is what the engine adds per step: the claim
before and the advance after each step, against Celery's own chain protocol (which carries the
rest of the chain in every message, so its cost per step grows with the length of the chain).

    python bench/overhead.py [--steps 200 1000] [--rounds 3]

It is a report, not a test: it exits 0 when a target is missed, non-zero only on errors. It
drops and recreates the PostgreSQL database ``tapbench`` and flushes Redis db 6.

The worker imports this module too (``TAP_KIND_MODULES=bench.overhead``) to know the
``bench_chain`` kind, so everything but the kind runs under ``if __name__ == "__main__"``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0]: the project is beside it
    sys.path.insert(0, str(ROOT))

from celery import chain
from django import forms

from bench import common
from operations.catalogue import AUTO_RECOVERY, Kind, KindForm, register_kind

DATABASE = "tapbench"
DATABASE_URL = common.database_url(DATABASE)
BROKER_URL = common.broker_url(6)
VAR_DIR = ROOT / "var" / "bench"
POLL = 0.002  # seconds between two reads of the result, the same on both sides
RATIO_TARGETS = {200: ("≤ 1.10×", lambda ratio: ratio <= 1.10),
                 1000: ("< 1.00×", lambda ratio: ratio < 1.00)}
WORKFLOW_TARGET_STEPS, WORKFLOW_TARGET_BYTES = 1000, 150_000
TARGET_GROWTH = 1.10  # tappable ms/step at the longest chain ÷ at the shortest: stays ~1.0


# --- the kind (registered wherever this module is imported: here and in the worker) ----------


def add_chain(steps, *, strict=False):
    """``0 + 1 + 1 + …``, ``steps`` adds: the workload of both sides (result: ``steps``).

    ``strict``: only the last step stores its result (the fastest plain chain Celery offers).
    """
    from operations.contrib.demo.kinds.arithmetic import (
        add,  # imports models: only once Django is set up
    )

    signatures = [add.s(0, 1)] + [add.s(1) for _ in range(steps - 1)]
    if strict:
        signatures = [sig.set(ignore_result=True) for sig in signatures[:-1]] + signatures[-1:]
    return chain(*signatures)


class BenchChainForm(KindForm):
    steps = forms.IntegerField(min_value=1, max_value=100_000, initial=200)


# register_kind replaces a kind of the same name, so importing this module twice (as __main__
# and as bench.overhead when Django loads TAP_KIND_MODULES) leaves one bench_chain.
register_kind(Kind(
    name="bench_chain",
    label="Benchmark chain",
    description="bench/overhead.py: a chain of add steps, 0 + 1 + 1 + …",
    form=BenchChainForm,
    build=lambda params: add_chain(params["steps"]),
    recovery=AUTO_RECOVERY,  # as the demo kinds: sticky continuation on (TAP_STICKY_STEPS)
))


# --- set-up ---------------------------------------------------------------------------------


def configure_environment():
    """The environment of this process and of the worker (see ``common.configure_environment``)."""
    common.configure_environment(database_url=DATABASE_URL, broker_url=BROKER_URL,
                                 var_dir=VAR_DIR, kind_modules="bench.overhead")


def reset_services():
    """A fresh ``tapbench`` database and an empty Redis db: no leftover rows or messages."""
    common.reset_database(DATABASE)
    common.reset_broker(BROKER_URL)


# --- one measurement ------------------------------------------------------------------------


def run_plain(steps, *, strict):
    """Seconds from ``apply_async()`` until the last step's result is in the result backend."""
    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()  # every run starts with the same (empty) table
    workflow = add_chain(steps, strict=strict)
    started = time.perf_counter()
    result = workflow.apply_async()
    # follow_parents=False: otherwise every poll also reads the state of all the parents.
    value = result.get(interval=POLL, timeout=timeout(steps), follow_parents=False)
    elapsed = time.perf_counter() - started
    if value != steps:
        raise RuntimeError(f"plain chain of {steps} returned {value!r}")
    stored = TaskResult.objects.count()
    if stored != (1 if strict else steps):  # proves the strict variant really skips the stores
        raise RuntimeError(f"plain chain of {steps} (strict={strict}) stored {stored} result(s)")
    return elapsed, None


def run_tappable(steps):
    """Seconds from ``operation_start()`` until the row says completed; and the plan's size."""
    from operations.models import Operation
    from operations.services import operation_start
    from operations.states import ACTIVE, Status

    started = time.perf_counter()
    operation = operation_start(kind="bench_chain", params={"steps": steps}, actor="cli")
    row = Operation.objects.filter(pk=operation.pk)
    while True:
        # .get() runs a new query each time (only iterating a queryset caches it).
        status, result, error = row.values_list("status", "result", "error").get()
        if status not in ACTIVE:
            break
        if time.perf_counter() - started > timeout(steps):
            raise TimeoutError(f"operation {operation.pk} ({steps} steps) is still {status}")
        time.sleep(POLL)
    elapsed = time.perf_counter() - started
    if status != Status.COMPLETED or result != steps:
        raise RuntimeError(f"operation {operation.pk}: {status}, result {result!r}: {error}")
    return elapsed, len(json.dumps(row.values_list("workflow", flat=True).get()))


def timeout(steps):
    return 60 + steps * 0.1


SIDES = {
    "plain default": lambda steps: run_plain(steps, strict=False),
    "plain strict": lambda steps: run_plain(steps, strict=True),
    "tappable": run_tappable,
}


def measure(steps_list, rounds):
    """ms/step of each side per chain length (median of the rounds), and the plans' sizes.

    The order of the sides flips every round (ABC, CBA, …) so drift weighs on all of them.
    """
    samples = {(steps, side): [] for steps in steps_list for side in SIDES}
    workflow_bytes = {}
    for steps in steps_list:
        for round_ in range(rounds):
            order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
            line = []
            for side in order:
                seconds, size = SIDES[side](steps)
                samples[steps, side].append(seconds * 1000 / steps)
                if size is not None:
                    workflow_bytes[steps] = size
                line.append(f"{side} {seconds * 1000 / steps:.3f}")
            print(f"  {steps:>5} steps, round {round_ + 1}/{rounds}: {', '.join(line)} ms/step",
                  flush=True)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return medians, workflow_bytes


# --- the report -----------------------------------------------------------------------------


def report(steps_list, rounds, medians, workflow_bytes):
    verdicts = []

    def verdict(ok, what):
        verdicts.append(f"{'PASS' if ok else 'MISS'}  {what}")

    print(f"\nMedian ms/step over {rounds} round(s). ratio = tappable ÷ plain strict, the faster")
    print("baseline (intermediate steps ignore_result=True, only the last one stores its result).")
    print(f"{'steps':>6} | {'plain default':>13} | {'plain strict':>12} | {'tappable':>9} | "
          f"{'ratio':>6} | {'target':>7} | {'workflow JSON':>13}")
    print("-" * 86)
    for steps in steps_list:
        plain_default, plain, ours = (medians[steps, side] for side in SIDES)
        ratio = ours / plain
        target, met = RATIO_TARGETS.get(steps, ("-", None))
        print(f"{steps:>6} | {plain_default:>13.3f} | {plain:>12.3f} | {ours:>9.3f} | "
              f"{ratio:>5.2f}× | {target:>7} | {workflow_bytes[steps]:>11,} B")
        if met:
            verdict(met(ratio), f"tappable ÷ plain strict at {steps} steps: {ratio:.2f}× "
                                f"(target {target})")
    if len(steps_list) > 1:
        short, long_ = min(steps_list), max(steps_list)
        print(f"\nPer-step cost growth (ms/step at {long_} steps ÷ at {short} steps):")
        for side in SIDES:
            print(f"  {side:<13} {medians[long_, side] / medians[short, side]:.2f}")
        growth = medians[long_, "tappable"] / medians[short, "tappable"]
        verdict(growth <= TARGET_GROWTH, f"tappable per-step growth {short}→{long_} steps: "
                                         f"{growth:.2f} (target ~1.0, ≤ {TARGET_GROWTH:.2f})")
    if WORKFLOW_TARGET_STEPS in workflow_bytes:
        size = workflow_bytes[WORKFLOW_TARGET_STEPS]
        print(f"\nOperation.workflow of the {WORKFLOW_TARGET_STEPS}-step operation: "
              f"{size:,} bytes of JSON ({size / WORKFLOW_TARGET_STEPS:.0f} B/step)")
        verdict(size <= WORKFLOW_TARGET_BYTES, f"workflow size at {WORKFLOW_TARGET_STEPS} steps: "
                                               f"{size / 1000:.1f} KB (target ≤ 150 KB)")
    print()
    for line in verdicts:
        print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1000], help="chain lengths")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per length")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")

    configure_environment()
    reset_services()
    common.setup_django()
    worker = common.make_worker(VAR_DIR / "worker.log")
    print(f"PostgreSQL tapbench + Redis db 6; one prefork worker, --concurrency 1 "
          f"(log: {worker.log_path.relative_to(ROOT)})", flush=True)
    with common.running(worker):
        for side in SIDES.values():  # warm-up: imports, connections, first-call code paths
            side(20)
        medians, workflow_bytes = measure(args.steps, args.rounds)
    report(args.steps, args.rounds, medians, workflow_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
