"""The seed operations end to end, with a real worker (issue 4's acceptance)."""

import csv
import hashlib
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from operations import selectors, services
from operations.contrib.demo.files import write_demo_csv
from operations.contrib.demo.models import Record, StagedRecord
from operations.models import Operation, StepMember
from operations.serializers import OperationSerializer
from operations.states import Status
from tests.support.ops import run_concurrently, status_changes, wait_for, wait_settled, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.backends("sqlite-fs", "pg-redis")]


def csv_file(name, rows, fmt="records"):
    return write_demo_csv(Path(settings.TAP_CSV_DIR) / name, rows=rows, fmt=fmt)


def raw_file(name, content):
    path = Path(settings.TAP_CSV_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def file_checksum(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return _checksum((int(r[0]), r[1], r[2], f"{float(r[3]):.2f}", r[4]) for r in rows)


def table_checksum(operation):
    rows = Record.objects.filter(operation=operation).values_list("external_id", "name", "email", "amount", "date")
    return _checksum((i, n, e, f"{float(a):.2f}", str(d)) for i, n, e, a, d in rows)


def _checksum(rows):
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def start(kind, owner=None, **params):
    return services.operation_start(kind=kind, params=params, owner=owner, actor="cli")


def records(operation):
    return Record.objects.filter(operation_id=operation.pk).count()


# --- csv_import -------------------------------------------------------------------------------


def test_import_paused_and_resumed_has_every_row_exactly_once(worker):
    path = csv_file("fifty-k.csv", 50_000)
    operation = start("csv_import", path="fifty-k.csv", chunk_rows=1000, rows_per_second=25_000, ranges=2)
    wait_for(operation.pk, lambda op: op.progress_done >= 10_000)
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    assert 10_000 <= paused.progress_done < 50_000
    assert records(operation) == paused.progress_done == paused.checkpoint["rows"]
    assert_cursor_is_the_next_lines(path, paused.checkpoint)
    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED, timeout=120)
    assert done.result == {"rows": 50_000, "file": "fifty-k.csv"}
    assert records(operation) == 50_000
    assert table_checksum(operation) == file_checksum(path)
    assert done.progress_done == done.progress_total == 50_000


def assert_cursor_is_the_next_lines(path, cursor):
    """The cursor's next line of the file (of each of its ranges, on PostgreSQL) follows its rows so far."""
    data = path.read_bytes()
    if connection.vendor != "postgresql":
        assert "ranges" not in cursor and cursor["line"] == cursor["rows"] + 2
        return
    ranges = sorted(cursor["ranges"], key=lambda each: each["end"])  # in file order: they tile the data
    assert len(ranges) >= 2 and sum(each["rows"] for each in ranges) == cursor["rows"]
    starts = [data.index(b"\n") + 1] + [each["end"] for each in ranges[:-1]]
    for start, each in zip(starts, ranges):
        assert each["line"] == 1 + data[:start].count(b"\n") + each["rows"], ranges
        assert each["offset"] == start + len(b"".join(data[start:].splitlines(keepends=True)[:each["rows"]]))


@pytest.mark.backends("pg-redis")
def test_a_large_file_is_loaded_in_ranges_side_by_side_and_an_id_repeated_across_them_is_refused(worker):
    path = csv_file("ranges.csv", 20_000)
    done = wait_status(start("csv_import", path="ranges.csv", chunk_rows=2000, ranges=2).pk, Status.COMPLETED, Status.FAILED)
    assert done.status == Status.COMPLETED, done.error
    assert records(done) == done.progress_done == done.progress_total == 20_000
    assert table_checksum(done) == file_checksum(path)

    lines = path.read_bytes().splitlines(keepends=True)
    again = lines[3].split(b",", 1)[1]  # line 4's id (3) again on the last line, in the other range
    raw_file("ranges-dupe.csv", b"".join(lines[:-1]) + b"3," + again)
    failed = wait_settled(start("csv_import", path="ranges-dupe.csv", chunk_rows=2000, ranges=2).pk)
    assert failed.status == Status.FAILED, failed.error
    assert re.search(r"ranges-dupe\.csv, line (4|20001), column id: duplicate id 3 \(another row of the file "
                     r"has the same id\)", failed.error), failed.error


def test_cancel_mid_import_leaves_no_row(worker):
    csv_file("cancel-me.csv", 30_000)
    operation = start("csv_import", path="cancel-me.csv", chunk_rows=500, rows_per_second=20_000)
    wait_for(operation.pk, lambda op: op.progress_done >= 3000)
    services.operation_cancel(operation=operation, actor="cli")
    cancelled = wait_status(operation.pk, Status.CANCELLED)
    assert records(operation) == 0
    assert cancelled.events.filter(to_status="cancelled").get().note.startswith("compensation: removed ")


def test_a_killed_worker_mid_import_loses_and_doubles_nothing(worker):
    path = csv_file("kill-me.csv", 40_000)
    operation = start("csv_import", path="kill-me.csv", chunk_rows=1000, rows_per_second=20_000)
    wait_for(operation.pk, lambda op: op.progress_done >= 8000)
    worker.kill()
    at_kill = records(operation)
    assert 8000 <= at_kill < 40_000
    deadline = time.monotonic() + settings.TAP_HEARTBEAT_LEASE + 15
    while operation.pk not in services.operations_reconcile():
        assert time.monotonic() < deadline, "the reconciler did not find the silent import"
        time.sleep(0.5)
    worker.start()
    worker.wait_ready()
    services.operation_resume(operation=operation, actor="cli")
    wait_status(operation.pk, Status.COMPLETED, timeout=120)
    assert records(operation) == 40_000
    assert table_checksum(operation) == file_checksum(path)


@pytest.mark.parametrize("name, content, line, column", [
    ("columns.csv", b"id,name,email,amount,date\n1,A,a@x,1.00,2020-01-01\n2,B,b@x,2.00\n", 3, None),
    ("amount.csv", b"id,name,email,amount,date\n1,A,a@x,1.00,2020-01-01\n2,B,b@x,lots,2020-01-02\n", 3, "amount"),
    ("utf8.csv", b"id,name,email,amount,date\n1,A,a@x,1.00,2020-01-01\n2,B\xff\xfe,b@x,2.00,2020-01-02\n", 3, None),
    ("date.csv", b"id,name,email,amount,date\n1,A,a@x,1.00,2020-01-01\n2,B,b@x,2.00,31/12/2020\n", 3, "date"),
    ("dupe.csv", b"id,name,email,amount,date\n1,A,a@x,1.00,2020-01-01\n1,B,b@x,2.00,2020-01-02\n", 3, "id"),
])
def test_a_bad_row_fails_the_import_naming_line_and_column_and_keeps_nothing_of_its_chunk(
        worker, name, content, line, column):
    good_chunk = b"".join(b"%d,Row %d,r%d@x,1.00,2020-01-01\n" % (i, i, i) for i in range(100, 104))
    header, rest = content.split(b"\n", 1)
    raw_file(name, header + b"\n" + good_chunk + rest)  # four good rows, then the sample
    operation = start("csv_import", path=name, chunk_rows=4)
    failed = wait_settled(operation.pk)
    assert failed.status == Status.FAILED, failed.error
    where = f"{name}, line {line + 4}" + (f", column {column}" if column else "")
    assert where in failed.error, failed.error
    assert records(operation) == 4  # the first chunk committed; nothing of the failing one did


def uploaded(name, content):
    return {"file": SimpleUploadedFile(name, content)}


def wait_gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def test_an_upload_is_removed_once_its_import_completed_and_a_server_file_is_left_alone(worker):
    server_file = csv_file("kept-on-server.csv", 300)
    operation = services.operation_start(kind="csv_import", params={"chunk_rows": 100}, actor="cli",
                                         files=uploaded("mine.csv", server_file.read_bytes()))
    stored = Path(operation.params["path"])
    assert stored.parent == Path(settings.TAP_UPLOAD_DIR) and stored.is_file()
    assert wait_status(operation.pk, Status.COMPLETED).progress_done == 300
    assert records(operation) == 300
    assert wait_gone(stored), "the upload of a completed import is never read again"
    on_server = start("csv_import", path=server_file.name, chunk_rows=100)
    wait_status(on_server.pk, Status.COMPLETED)
    assert server_file.is_file()


def test_a_failed_import_keeps_its_upload_for_a_retry_until_cancel_or_delete(worker):
    content = csv_file("fails.csv", 50).read_bytes() + b"51,Row 51,r51@x,not-a-number,2020-01-01\n"

    def failed_import(name):  # one after the other: one import at a time
        operation = services.operation_start(kind="csv_import", params={"chunk_rows": 10}, actor="cli",
                                             files=uploaded(name, content))
        assert wait_settled(operation.pk).status == Status.FAILED
        assert Path(operation.params["path"]).is_file()  # a retry reads it again
        return operation

    cancelled, deleted = failed_import("fails.csv"), failed_import("fails-too.csv")
    services.operation_cancel(operation=cancelled.pk, actor="cli")
    assert wait_gone(Path(cancelled.params["path"]))
    Operation.objects.filter(pk=deleted.pk).delete()
    assert not Path(deleted.params["path"]).exists()


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "empty.csv: the file is empty"),
    ("header-only.csv", b"id,name,email,amount,date\n", "header-only.csv: the file has a header but no data rows"),
    ("wrong-header.csv", b"a,b\n1,2\n", "wrong-header.csv, line 1: expected the header id,name,email,amount,date"),
])
def test_files_that_cannot_be_imported_are_refused_at_start(worker, name, content, message):
    raw_file(name, content)
    with pytest.raises(services.InvalidParams, match=message):
        start("csv_import", path=name)
    assert not Operation.objects.filter(kind="csv_import").exists()


def test_a_missing_file_is_refused_at_start(worker):
    with pytest.raises(services.InvalidParams, match="nope.csv: no such file in the CSV folder"):
        start("csv_import", path="nope.csv")
    with pytest.raises(services.InvalidParams, match="give the name of a file in the CSV folder, not a path"):
        start("csv_import", path="../../etc/passwd")


# --- csv_summary ------------------------------------------------------------------------------


def test_summary_paused_and_resumed_twice_counts_like_one_pass(worker):
    path = csv_file("people-200k.csv", 200_000, fmt="people")
    expected = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            expected.setdefault(row["company"], Counter())[row["gender"]] += 1
    operation = start("csv_summary", path="people-200k.csv", chunk_rows=2000, rows_per_second=100_000)
    for at_least in (40_000, 120_000):
        wait_for(operation.pk, lambda op, n=at_least: op.progress_done >= n)
        services.operation_pause(operation=operation, actor="cli")
        paused = wait_status(operation.pk, Status.PAUSED)
        assert at_least <= paused.progress_done < 200_000
        assert sum(sum(g.values()) for g in paused.checkpoint["counts"].values()) == paused.progress_done
        services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED, timeout=120)
    assert done.result == {company: dict(genders) for company, genders in expected.items()}
    assert any("Agender" in genders for genders in done.result.values())  # unusual values are counted
    assert len([c for c in status_changes(operation.pk) if c[1] == "paused"]) == 2


# --- bulk_insert ------------------------------------------------------------------------------


def test_bulk_insert_cancelled_mid_way_leaves_zero_rows(worker):
    operation = start("bulk_insert", rows=100_000, chunk_rows=2000, rows_per_second=50_000)
    wait_for(operation.pk, lambda op: op.progress_done >= 10_000)
    assert records(operation) == 0  # staged rows are not records yet
    services.operation_cancel(operation=operation, actor="cli")
    wait_status(operation.pk, Status.CANCELLED)
    assert records(operation) == 0
    assert StagedRecord.objects.filter(operation_id=operation.pk).count() == 0
    assert selectors.operation_row_count(Operation.objects.get(pk=operation.pk)) == 0
    assert OperationSerializer(Operation.objects.get(pk=operation.pk)).data["rows_stored"] == 0  # the API's count


def test_bulk_insert_completed_has_exactly_n_rows(worker):
    operation = start("bulk_insert", rows=100_000, chunk_rows=10_000)
    done = wait_status(operation.pk, Status.COMPLETED, timeout=120)
    assert done.result == {"rows": 100_000}
    assert records(operation) == 100_000
    assert OperationSerializer(done).data["rows_stored"] == 100_000  # the API's count
    assert StagedRecord.objects.filter(operation_id=operation.pk).count() == 0
    ids = Record.objects.filter(operation_id=operation.pk).values_list("external_id", flat=True)
    assert min(ids) == 1 and max(ids) == 100_000


# --- batch_sum --------------------------------------------------------------------------------


def test_batch_progress_rises_to_the_total_and_a_second_batch_comes_from_the_cache(worker):
    tasks = [{"paramA": i, "paramB": 100 + i} for i in range(20)]
    operation = start("batch_sum", tasks=tasks, min_seconds=0.05, max_seconds=0.3)
    seen, partial_results = [], False
    while True:
        op = Operation.objects.get(pk=operation.pk)
        seen.append(op.progress_done)
        results = list(StepMember.objects.filter(operation=op, state="SUCCESS").values_list("result", flat=True))
        partial_results |= 0 < len(results) < 20
        if op.status != Status.RUNNING:
            break
        time.sleep(0.02)
    assert op.status == Status.COMPLETED
    assert seen == sorted(seen) and seen[-1] == 20 and op.progress_total == 20
    assert partial_results, "partial results were never visible while it ran"
    assert op.result == [i + 100 + i for i in range(20)]

    again = start("batch_sum", tasks=tasks, min_seconds=5, max_seconds=10)
    done = wait_status(again.pk, Status.COMPLETED, timeout=10)  # no task sleeps its 5-10 s
    assert done.result == op.result
    assert StepMember.objects.filter(operation=again, cached=True).count() == 20


def test_batch_paused_mid_way_holds_members_and_resume_completes_all(worker):
    tasks = [{"paramA": i, "paramB": 1000 * i} for i in range(20)]
    operation = start("batch_sum", tasks=tasks, min_seconds=0.2, max_seconds=0.4)
    wait_for(operation.pk, lambda op: op.progress_done >= 3)
    services.operation_pause(operation=operation, actor="cli")
    paused = wait_status(operation.pk, Status.PAUSED)
    assert 3 <= paused.progress_done < 20
    time.sleep(1)
    assert Operation.objects.get(pk=operation.pk).progress_done == paused.progress_done  # held
    services.operation_resume(operation=operation, actor="cli")
    done = wait_status(operation.pk, Status.COMPLETED, timeout=60)
    assert done.result == [i + 1000 * i for i in range(20)] and done.progress_done == 20


# --- one at a time ----------------------------------------------------------------------------


def test_one_import_at_a_time_per_user_enforced_by_the_database(worker):
    user = User.objects.create_user("importer")
    csv_file("slot.csv", 20_000)
    outcomes = run_concurrently(2, lambda: start("csv_import", owner=user, path="slot.csv", chunk_rows=500,
                                                 rows_per_second=5000))
    accepted = [o.pk for o in outcomes if isinstance(o, Operation)]
    refused = [str(o) for o in outcomes if isinstance(o, services.OperationError)]
    assert len(accepted) == 1 and len(refused) == 1, outcomes
    assert refused[0] == (f"csv_import allows 1 unfinished operation(s) per user at a time; operation "
                          f"{accepted[0]} holds the slot — wait for it to end, or cancel it")
    assert Operation.objects.filter(kind="csv_import", owner=user).count() == 1

    services.operation_cancel(operation=accepted[0], actor="cli")
    wait_status(accepted[0], Status.CANCELLED)
    second = start("csv_import", owner=user, path="slot.csv")
    wait_status(second.pk, Status.COMPLETED, timeout=120)
    # Another user is not limited by this user's import.
    other = start("csv_import", owner=User.objects.create_user("other"), path="slot.csv", chunk_rows=500)
    wait_status(other.pk, Status.COMPLETED, timeout=120)  # and the worker is idle before the teardown
