"""Operation kinds that exist only for the tests: flaky steps, steps that write rows, a long loop.

Loaded in every test process and test worker through ``TAP_KIND_MODULES`` (settings.test).
"""

import dataclasses
import datetime
import time
from decimal import Decimal
from pathlib import Path

from celery import chain, group
from django import forms

from operations.catalogue import AUTO_RECOVERY, Kind, KindForm, Recovery, get_kind, register_kind
from operations.contrib.demo.kinds import csv_import as _demo_csv_import  # noqa: F401 (registers csv_import)
from operations.contrib.demo.kinds.arithmetic import add
from operations.contrib.demo.models import Record
from operations.waiting import sleep_for, wait_for_signal
from operations.workflow import step


def write_rows(operation_id, lines):
    Record.objects.bulk_create([
        Record(operation_id=operation_id, external_id=line, name=f"row {line}",
               email=f"row{line}@example.com", amount=Decimal("1.00"), date=datetime.date(2026, 1, 1))
        for line in lines
    ])


def remove_rows(operation):
    removed, _ = Record.objects.filter(operation_id=operation.pk).delete()
    return f"removed {removed} record(s)"


# --- flaky: a step that fails its first attempts ----------------------------------------------


@step(name="tests.flaky", atomic=False)
def flaky(x, counter, fail_times):
    """Fails while the counter file says it has run at most ``fail_times`` times."""
    path = Path(counter)
    count = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count <= fail_times:
        raise RuntimeError(f"flaky failure number {count}")
    return x * 10


class FlakyForm(KindForm):
    counter = forms.CharField()
    fail_times = forms.IntegerField(min_value=0)
    max_retries = forms.IntegerField(min_value=0)


register_kind(Kind(
    name="flaky", label="Flaky (tests)", form=FlakyForm,
    build=lambda p: chain(
        add.s(1, 1),
        flaky.s(p["counter"], p["fail_times"]).set(max_retries=p["max_retries"], retry_delay=0),
        add.s(1),
    ),
))


# --- records: each step writes one row, in the step's transaction ------------------------------


@step(name="tests.write_record", context=True)
def write_record(ctx, carry, line, delay=0.0):
    write_rows(ctx.operation_id, [line])
    if delay:
        time.sleep(delay)
    return (carry or 0) + 1


class RecordsForm(KindForm):
    steps = forms.IntegerField(min_value=1, max_value=10000)
    delay = forms.FloatField(required=False, initial=0.0)


register_kind(Kind(
    name="records", label="Records (tests)", form=RecordsForm,
    build=lambda p: chain(
        write_record.s(None, 0, delay=p["delay"]),
        *[write_record.s(line, delay=p["delay"]) for line in range(1, p["steps"])],
    ),
    compensate=remove_rows,
    cancel_effect="Removes every record this operation wrote.",
    recovery=AUTO_RECOVERY,  # like the demo kinds: the fault suite needs no person
))

# stuck: step 1 commits a row, step 2 writes one and then sleeps an hour inside its transaction,
# where no checkpoint is (what terminate is for) — only while the file ``hold`` (named tap-hold-*)
# exists, so that a start by the API fuzzer, which cannot make that file, does not hang.
@step(name="tests.write_record_and_hold", context=True)
def write_record_and_hold(ctx, carry, line, hold):
    write_rows(ctx.operation_id, [line])
    if Path(hold).name.startswith("tap-hold-") and Path(hold).is_file():
        time.sleep(3600)
    return (carry or 0) + 1


class StuckForm(KindForm):
    hold = forms.CharField(max_length=500)


register_kind(Kind(
    name="stuck", label="Stuck (tests)", form=StuckForm,
    build=lambda p: chain(write_record.s(None, 0), write_record_and_hold.s(1, p["hold"])),
    compensate=remove_rows,
    cancel_effect="Removes every record this operation wrote.",
))

# gated: 1 + 1, then a wait (for approval, or a named signal), then + 1 (of what was carried on).
class ApprovalForm(KindForm):
    name = forms.CharField(required=False, initial="approval")
    timeout = forms.FloatField(required=False, min_value=0.1)
    on_timeout = forms.ChoiceField(required=False, choices=[(o, o) for o in ("fail", "continue", "cancel")],
                                   initial="fail")


register_kind(Kind(
    name="gated", label="Gated by a wait (tests)", form=ApprovalForm,
    build=lambda p: chain(add.s(1, 1), wait_for_signal(p["name"], timeout=p["timeout"], on_timeout=p["on_timeout"]),
                          add.s(1)),
))

# The same kinds without a recovery policy: the settings' default (off) applies, a person resumes.
register_kind(dataclasses.replace(get_kind("records"), name="tests.records_manual",
                                  label="Records (tests, no automatic recovery)", recovery=None))
# Pure steps (arithmetic's add / mult) without automatic recovery, so without sticky slices: on
# PostgreSQL each step's message is published while the advance before it runs.
register_kind(dataclasses.replace(get_kind("arithmetic"), name="tests.arithmetic_manual",
                                  label="Arithmetic (tests, every step through the broker)", recovery=None))
# The demo's import with automatic recovery off: what a kind without a policy does after a crash.
register_kind(dataclasses.replace(get_kind("csv_import"), name="tests.csv_import_manual",
                                  label="Import a CSV file (no automatic recovery)",
                                  recovery=Recovery(auto_resume=False)))


# --- looper: one long step with in-step checkpoints --------------------------------------------


@step(name="tests.loop_in_chunks", context=True, atomic=False)
def loop_in_chunks(ctx, total, chunk, delay=0.0):
    position = (ctx.state or {}).get("next", 0)
    while position < total:
        upper = min(total, position + chunk)
        with ctx.checkpoint({"next": upper}, done=upper, total=total):
            write_rows(ctx.operation_id, range(position, upper))
        position = upper
        if delay:
            time.sleep(delay)
    return position


class LooperForm(KindForm):
    # Bounded: the API fuzzer starts it with whatever the schema allows, and one chunk is one write
    # transaction — SQLite's only one — for as long as it takes.
    total = forms.IntegerField(min_value=1, max_value=1_000_000)
    chunk = forms.IntegerField(min_value=1, max_value=10_000)
    delay = forms.FloatField(required=False, initial=0.0, min_value=0, max_value=5)


register_kind(Kind(
    name="looper", label="Looper (tests)", form=LooperForm, progress="custom", progress_unit="rows",
    build=lambda p: chain(loop_in_chunks.si(p["total"], p["chunk"], delay=p["delay"])),
    compensate=remove_rows,
))


# --- session: what a worker's database session looks like ----------------------------------------


@step(name="tests.session_setting", atomic=False)
def session_setting(name):
    """The worker session's value of a PostgreSQL setting (None on other databases)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


class SessionForm(KindForm):
    name = forms.CharField()


register_kind(Kind(
    name="session", label="Session setting (tests)", form=SessionForm,
    build=lambda p: chain(session_setting.si(p["name"])),
))


# --- killer: a step that kills the pool process running it (an OOM kill, every time) -------------


@step(name="tests.kill_my_process", atomic=False)
def kill_my_process(x):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return x


class KillerForm(KindForm):
    pass


register_kind(Kind(
    name="killer", label="Killer (tests)", form=KillerForm,
    build=lambda p: chain(add.s(1, 1), kill_my_process.s(), add.s(1)),
    recovery=Recovery(auto_resume=True, backoff=0.2, poison_limit=3),
))


# --- a group followed by a step: the step after a group goes on by its own message ---------------


@step(name="tests.count_results", atomic=False)
def count_results(results):
    return len(results)


class NoParamsForm(KindForm):
    pass


register_kind(Kind(
    name="tests.group_then_step", label="A group, then a step (tests)", form=NoParamsForm,
    build=lambda p: chain(group(add.si(1, 2), add.si(3, 4)), count_results.s()),
    recovery=AUTO_RECOVERY,
))


# --- time in the workflow (issue 15) ----------------------------------------------------------

# sleepy: 1 + 1, a durable sleep of ``seconds``, then + 1.
class SleepForm(KindForm):
    seconds = forms.FloatField(min_value=0, max_value=3600, initial=30)


register_kind(Kind(
    name="tests.sleepy", label="Sleeps between two steps (tests)", form=SleepForm,
    build=lambda p: chain(add.s(1, 1), sleep_for(p["seconds"]), add.s(1)),
))


# napping: 1 + 1, then a step that sleeps in its worker process (no pause point) for ``seconds``,
# only while the file ``hold`` (tap-hold-*) exists — the API fuzzer cannot make one — then + 1.
@step(name="tests.nap", atomic=False)
def nap(carry, seconds, hold):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(hold).name.startswith("tap-hold-") and Path(hold).is_file():
        time.sleep(0.05)
    return carry


class NapForm(KindForm):
    seconds = forms.FloatField(min_value=0, max_value=3600)
    hold = forms.CharField(max_length=500)


register_kind(Kind(
    name="tests.napping", label="Naps inside a step (tests)", form=NapForm,
    build=lambda p: chain(add.s(1, 1), nap.s(p["seconds"], p["hold"]), add.s(1)),
))
# Its step may take 1.5 s, and a deadline cancels it (the kind's own choice).
register_kind(dataclasses.replace(get_kind("tests.napping"), name="tests.napping_limited",
                                  label="Naps, with a step time limit (tests)", step_time_limit=1.5,
                                  on_deadline="cancel"))


# --- a step whose connection the server drops while its threads fail (csv_import's ranges) ------


@step(name="tests.lose_connection_and_fail", atomic=False)
def lose_connection_and_fail(x):
    """The server drops this thread's (idle) connection, then the step fails with the outage its
    threads met on their own connections: what a partition does to csv_import in ranges."""
    import psycopg
    from django.db import OperationalError, connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    settings_dict = connection.settings_dict
    with psycopg.connect(host=settings_dict["HOST"], port=settings_dict["PORT"], user=settings_dict["USER"],
                         password=settings_dict["PASSWORD"] or None, dbname=settings_dict["NAME"],
                         autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    raise OperationalError("a part's connection was lost: server closed the connection unexpectedly")


register_kind(Kind(
    name="tests.connection_lost", label="Loses its connection (tests)", form=NoParamsForm,
    build=lambda p: chain(add.s(1, 1), lose_connection_and_fail.s(), add.s(1)),
))
