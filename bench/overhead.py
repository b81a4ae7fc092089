"""Overhead of a tappable chain against the plain Celery chain it is built from, and the broker's floor.

All sides run N trivial steps on PostgreSQL + Redis through one prefork worker with
``--concurrency 1``: a **bare hop** (a task that sends itself again N times, ignore_result: one
broker hop per step and nothing else, the floor of any step that goes through the broker), the
**plain** Celery chain of ``operations.add`` steps (which carries the rest of the chain in every
message, so its cost per step grows with the length of the chain), and the **tappable** chain
of the same steps (the claim before and the advance after each step).

    python bench/overhead.py [--steps 200 1000] [--rounds 3] [--count-steps 20 120 | --no-count]

Then, in a separate untimed run through counting proxies (``common.CountingProxy``), what the
worker sends per step: PostgreSQL statements and round trips, Redis commands and round trips.

It is a report, not a test: it exits 0 when a target is missed, non-zero only on errors. It
drops and recreates the PostgreSQL database ``tapbench`` and flushes Redis db 6 (on the servers
of DATABASE_URL and CELERY_BROKER_URL, see ``bench/common.py``).

The worker imports this module too (``TAP_KIND_MODULES=bench.overhead``) to know the
``bench_chain`` kind, so everything but the kind runs under ``if __name__ == "__main__"``.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is sys.path[0]: the project is beside it
    sys.path.insert(0, str(ROOT))

from celery import chain
from django import forms

from bench import common
from bench.tasks import hop, send_hop
from operations.catalogue import AUTO_RECOVERY, Kind, KindForm, get_kind, register_kind

DATABASE = "tapbench"
DATABASE_URL = common.database_url(DATABASE)
BROKER_URL = common.broker_url(6)
VAR_DIR = ROOT / "var" / "bench"
POLL = 0.002  # seconds between two reads of the result, the same on both sides
# The stock hop's worker: the same settings but kombu's own transports (bench/stock_settings.py).
STOCK_QUEUE = "bench-stock"
STOCK_SETTINGS = "bench.stock_settings"
# DESIGN §7: tappable ÷ plain strict per chain length; ms/step; the tappable chain without
# sticky continuation (every step through the broker) ÷ the bare hop.
RATIO_TARGETS = {200: ("≤ 0.30×", lambda ratio: ratio <= 0.30),
                 1000: ("≤ 0.15×", lambda ratio: ratio <= 0.15)}
MS_PER_STEP_TARGET = 1.5
HOP_RATIO_TARGET = 1.2
WORKFLOW_TARGET_STEPS, WORKFLOW_TARGET_BYTES = 1000, 150_000
TARGET_GROWTH = 1.10  # tappable ms/step at the longest chain ÷ at the shortest: stays ~1.0
COUNT_STEPS = (20, 120)  # the counting run: per step = the difference between the two lengths


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
# The same chain without automatic recovery, so without sticky slices: every step through the broker.
register_kind(dataclasses.replace(get_kind("bench_chain"), name="bench_chain_broker", recovery=None,
                                  label="Benchmark chain, every step through the broker"))


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
    wait_for_result(result.id, steps)
    elapsed = time.perf_counter() - started
    # follow_parents=False: otherwise it also reads the state of all the parents.
    value = result.get(timeout=timeout(steps), follow_parents=False)
    if value != steps:
        raise RuntimeError(f"plain chain of {steps} returned {value!r}")
    stored = TaskResult.objects.count()
    if stored != (1 if strict else steps):  # proves the strict variant really skips the stores
        raise RuntimeError(f"plain chain of {steps} (strict={strict}) stored {stored} result(s)")
    return elapsed, None


def run_hop(steps, queue=None):
    """Seconds from sending the first hop until the last one's result is in the result backend.
    ``queue``: the stock worker's (``STOCK_QUEUE``), or None for the worker the other sides use."""
    from django_celery_results.models import TaskResult

    TaskResult.objects.all().delete()
    last_id = str(uuid.uuid4())
    started = time.perf_counter()
    send_hop(0, steps, last_id, queue)
    wait_for_result(last_id, steps)
    elapsed = time.perf_counter() - started
    value = hop.AsyncResult(last_id).get(timeout=timeout(steps))
    if value != steps:
        raise RuntimeError(f"bare hop of {steps} returned {value!r}")
    if (stored := TaskResult.objects.count()) != 1:
        raise RuntimeError(f"bare hop of {steps} stored {stored} results (expected the last one only)")
    return elapsed, None


def run_tappable(steps, kind="bench_chain"):
    """Seconds from ``operation_start()`` until the row says completed; and the plan's size."""
    from operations.models import Operation
    from operations.services import operation_start
    from operations.states import ACTIVE, Status

    started = time.perf_counter()
    operation = operation_start(kind=kind, params={"steps": steps}, actor="cli")
    poll_until(f"SELECT status NOT IN ({', '.join(['%s'] * len(ACTIVE))}) FROM operations_operation WHERE id = %s",
               [*ACTIVE, operation.pk], f"operation {operation.pk} ({steps} steps)", steps)
    elapsed = time.perf_counter() - started
    row = Operation.objects.filter(pk=operation.pk)
    status, result, error = row.values_list("status", "result", "error").get()
    if status != Status.COMPLETED or result != steps:
        raise RuntimeError(f"operation {operation.pk}: {status}, result {result!r}: {error}")
    return elapsed, len(json.dumps(row.values_list("workflow", flat=True).get()))


def timeout(steps):
    return 60 + steps * 0.1


def poll_until(sql, params, what, steps):
    """Run ``sql`` (one row, one boolean) every POLL seconds until it says true: the same light
    read on every side. (Through the ORM or ``AsyncResult.get()`` each read cost this process
    ~0.4 ms of CPU, about a fifth of a core beside the worker at 2 ms a step.)"""
    from django.db import connection

    deadline = time.perf_counter() + timeout(steps)
    with connection.cursor() as cursor:
        while True:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            if row is not None and row[0]:
                return
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{what} has not finished in {timeout(steps):.0f} s")
            time.sleep(POLL)


def wait_for_result(task_id, steps):
    """Until the task's result is in the result backend (django-celery-results' table); the
    caller then reads it with ``AsyncResult.get()``, which raises if the task failed."""
    poll_until("SELECT EXISTS (SELECT 1 FROM django_celery_results_taskresult WHERE task_id = %s "
               "AND status IN ('SUCCESS', 'FAILURE'))", [task_id], f"task {task_id} ({steps} steps)", steps)


SIDES = {
    "bare hop": run_hop,
    "plain default": lambda steps: run_plain(steps, strict=False),
    "plain strict": lambda steps: run_plain(steps, strict=True),
    "tappable": run_tappable,
    "no sticky": lambda steps: run_tappable(steps, kind="bench_chain_broker"),
    "stock hop": lambda steps: run_hop(steps, queue=STOCK_QUEUE),
}
#: The sides of the counting run: the stock worker is not behind its proxies.
COUNTED_SIDES = {side: run for side, run in SIDES.items() if side != "stock hop"}


def measure(steps_list, rounds, sides=SIDES):
    """ms/step of each side per chain length (median of the rounds), and the plans' sizes.

    ``sides``: name → callable(steps) → (seconds, workflow bytes or None); interleaved rounds
    (``common.interleaved``), the order of the sides flipped every round.
    """
    medians, workflow_bytes = {}, {}
    for steps in steps_list:
        runs = {side: (lambda run=run: run(steps)) for side, run in sides.items()}
        samples, extras = common.interleaved(runs, rounds, f"{steps:>5} steps", per=steps / 1000,
                                             unit="ms/step")
        medians.update({(steps, side): statistics.median(values) for side, values in samples.items()})
        workflow_bytes.update({steps: size for size in extras.values()})
    return medians, workflow_bytes


# --- what a step sends: statements, commands and round trips --------------------------------


def count_per_step(sides, log_path, lengths=COUNT_STEPS):
    """Per step of each side: what the worker sends to PostgreSQL and to Redis.

    A second worker (the timed one must be stopped: it would take the messages) runs against
    the same database and Redis db through two ``CountingProxy``s; this process talks to both
    directly, so its own polling is not counted. Each side runs at both ``lengths``; per step is
    the difference ÷ the difference of lengths, so what an operation pays once (its first claim,
    its completion) and connecting drop out. The worker's idle traffic while they run (the
    broker's BRPOP timeouts, the unacked-message restore) is in it; it is well under 0.1/step.
    Returns {side: (PG statements, PG round trips, Redis commands, Redis round trips)}.
    """
    short, long_ = lengths
    env = dict(os.environ)
    with common.CountingProxy(env["DATABASE_URL"], "postgres") as pg, \
            common.CountingProxy(env["CELERY_BROKER_URL"], "redis") as redis:
        env.update(DATABASE_URL=pg.url, CELERY_BROKER_URL=redis.url)
        worker = common.make_worker(log_path, name="bench-count", env=env)
        counts = {}
        with common.running(worker):
            for side, run in sides.items():
                run(short)  # warm: this side's first-call paths
                per_length = {}
                for steps in lengths:
                    before = pg.counts() + redis.counts()
                    run(steps)
                    time.sleep(0.05)  # the worker's last replies are on their way
                    after = pg.counts() + redis.counts()
                    per_length[steps] = [b - a for a, b in zip(before, after)]
                counts[side] = tuple((b - a) / (long_ - short)
                                     for a, b in zip(per_length[short], per_length[long_]))
    return counts


def print_counts(counts, lengths=COUNT_STEPS):
    print(f"\nPer step, what the worker sends (counting proxies, an untimed run; the difference "
          f"between {lengths[0]} and {lengths[1]} steps ÷ {lengths[1] - lengths[0]}). PostgreSQL "
          f"statements = Query + Execute messages (BEGIN, COMMIT and a SELECT 1 health check count "
          f"one each); Redis commands = each command of a pipeline too; a round trip = the client "
          f"sends after the server last answered it (a pipeline is one):")
    print(f"{'side':<14} | {'PG statements':>13} | {'PG round trips':>14} | {'Redis commands':>14} | "
          f"{'Redis round trips':>17}")
    print("-" * 84)
    for side, values in counts.items():
        print(f"{side:<14} | " + " | ".join(f"{value:>{width}.2f}" for value, width
                                          in zip(values, (13, 14, 14, 17))))


# --- the report -----------------------------------------------------------------------------


def report(steps_list, rounds, medians, workflow_bytes, counts=None, count_steps=COUNT_STEPS):
    verdicts = []

    def verdict(ok, what):
        verdicts.append(f"{'PASS' if ok else 'MISS'}  {what}")

    print(f"\nMedian ms/step over {rounds} round(s). ÷ strict = tappable ÷ plain strict, the faster")
    print("plain chain (intermediate steps ignore_result=True, only the last one stores its result);")
    print("no sticky = the tappable chain with every step through the broker (a kind without automatic")
    print("recovery runs no sticky slices); ÷ hop = no sticky ÷ the bare self-chaining task (the broker's floor)")
    print("on the same worker, with the app's Redis transport (operations/brokers/redis.py); stock hop = the same")
    print("task on a worker with kombu's own transport, i.e. a bare hop as Celery ships it; ÷ stock = no sticky ÷ it.")
    print(f"{'steps':>6} | {'bare hop':>8} | {'stock hop':>9} | {'plain default':>13} | {'plain strict':>12} | "
          f"{'tappable':>9} | {'÷ strict':>8} | {'target':>7} | {'no sticky':>9} | {'÷ hop':>6} | {'÷ stock':>7} | "
          f"{'workflow JSON':>13}")
    print("-" * 143)
    for steps in steps_list:
        bare, stock, plain_default, plain, ours, unsticky = (
            medians[steps, side] for side in ("bare hop", "stock hop", "plain default", "plain strict", "tappable",
                                              "no sticky"))
        ratio, hop_ratio = ours / plain, unsticky / bare
        target, met = RATIO_TARGETS.get(steps, ("-", None))
        print(f"{steps:>6} | {bare:>8.3f} | {stock:>9.3f} | {plain_default:>13.3f} | {plain:>12.3f} | {ours:>9.3f} | "
              f"{ratio:>7.2f}× | {target:>7} | {unsticky:>9.3f} | {hop_ratio:>5.2f}× | {unsticky / stock:>6.2f}× | "
              f"{workflow_bytes[steps]:>11,} B")
        verdict(ours <= MS_PER_STEP_TARGET, f"tappable at {steps} steps: {ours:.3f} ms/step "
                                            f"(target ≤ {MS_PER_STEP_TARGET} ms)")
        if met:
            verdict(met(ratio), f"tappable ÷ plain strict at {steps} steps: {ratio:.2f}× "
                                f"(target {target})")
        verdict(hop_ratio <= HOP_RATIO_TARGET,
                f"no sticky ÷ bare hop at {steps} steps: {hop_ratio:.2f}× (target ≤ {HOP_RATIO_TARGET}×; "
                f"÷ the stock hop, a bare hop as Celery ships it: {unsticky / stock:.2f}×)")
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
    if counts:
        print_counts(counts, count_steps)
    print()
    for line in verdicts:
        print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1000], help="chain lengths")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per length")
    parser.add_argument("--count-steps", type=int, nargs=2, default=COUNT_STEPS,
                        help="the two chain lengths of the counting run")
    parser.add_argument("--no-count", action="store_true", help="skip the counting run")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    if not 1 <= args.count_steps[0] < args.count_steps[1]:
        parser.error("--count-steps: two lengths, the first shorter, both at least 1")

    configure_environment()
    reset_services()
    common.setup_django()
    worker = common.make_worker(VAR_DIR / "worker.log")
    stock = common.make_worker(VAR_DIR / "worker-stock.log", name="bench-stock", queues=[STOCK_QUEUE],
                               env={**os.environ, "DJANGO_SETTINGS_MODULE": STOCK_SETTINGS})
    print(f"PostgreSQL {common.server_label(DATABASE_URL)} + Redis {common.server_label(BROKER_URL)}; "
          f"one prefork worker, --concurrency 1 (log: {worker.log_path.relative_to(ROOT)}); the stock hop's "
          f"worker alike, on kombu's own transport (log: {stock.log_path.relative_to(ROOT)})", flush=True)
    with common.running(worker), common.running(stock):
        for side in SIDES.values():  # warm-up: imports, connections, first-call code paths
            side(20)
        medians, workflow_bytes = measure(args.steps, args.rounds)
    counts = None if args.no_count else count_per_step(COUNTED_SIDES, VAR_DIR / "worker-count.log",
                                                       tuple(args.count_steps))
    report(args.steps, args.rounds, medians, workflow_bytes, counts, tuple(args.count_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
