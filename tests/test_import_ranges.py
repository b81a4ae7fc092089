"""csv_import's ranges, in-process on PostgreSQL: a large file loads at once, its lines counted
beside the loading, its ranges shared out between the connections; paused anywhere, it resumes
each range where its last chunk committed."""

import pytest
from django.db import connection

from operations import engine
from operations.contrib.demo.files import write_demo_csv
from operations.contrib.demo.kinds import csv_import
from operations.exceptions import StopStep
from operations.models import Operation
from operations.states import Status
from operations.workflow import STEPS

pytestmark = [pytest.mark.integration, pytest.mark.backends("pg-redis", "pg-rabbitmq"),
              pytest.mark.django_db(transaction=True)]

ROWS, CHUNK = 12_000, 1000
import_csv = STEPS["operations.csv_import"].func


@pytest.fixture
def large(tmp_path, monkeypatch):
    """A file csv_import takes for a large one: loaded in ranges at once, counted beside."""
    monkeypatch.setattr(csv_import, "COUNTED_FIRST_BYTES", 0)
    return write_demo_csv(tmp_path / "large.csv", rows=ROWS)


def run(operation, state=None):
    row = Operation.objects.get(pk=operation.pk)
    ctx = engine.StepContext(operation.pk, row.run_token, 0, row.fence, state, 0)
    return import_csv(ctx, str(large_path(operation)), "large.csv", CHUNK, None, 2)


def large_path(operation):
    return operation.params["path"]


def stored(operation):
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT external_id), coalesce(sum(external_id), 0) "
                       "FROM operations_demo_record WHERE operation_id = %s", [operation.pk])
        return cursor.fetchone()


def test_a_large_file_loads_at_once_in_ranges_counted_beside(large):
    operation = Operation.objects.create(kind="csv_import", status=Status.RUNNING, run_token=1,
                                         params={"path": str(large)})
    # Every checkpoint's progress, as committed: the total comes with one before the last row.
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE TABLE progress_seen (seen serial PRIMARY KEY, done bigint, total bigint);
            CREATE FUNCTION progress_seen() RETURNS trigger AS $$ BEGIN
                INSERT INTO progress_seen (done, total) VALUES (NEW.progress_done, NEW.progress_total);
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER progress_seen AFTER UPDATE OF fence ON operations_operation
                FOR EACH ROW WHEN (NEW.id = {operation.pk}) EXECUTE FUNCTION progress_seen();""")
    try:
        assert run(operation) == {"rows": ROWS, "file": "large.csv"}
        with connection.cursor() as cursor:
            cursor.execute("SELECT done, total FROM progress_seen ORDER BY seen")
            seen = cursor.fetchall()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER progress_seen ON operations_operation; DROP FUNCTION progress_seen(); "
                           "DROP TABLE progress_seen")
    assert seen[0][1] is None  # the first checkpoint (a cut or a chunk) came before the count
    assert any(total == ROWS and done < ROWS for done, total in seen)  # counted beside the loading
    assert stored(operation) == (ROWS, ROWS, ROWS * (ROWS + 1) // 2)
    row = Operation.objects.get(pk=operation.pk)
    assert row.checkpoint["total"] == row.checkpoint["rows"] == row.progress_done == row.progress_total == ROWS
    ranges = row.checkpoint["ranges"]
    assert len(ranges) >= 2  # the second connection cut the first range in two
    assert all(each["offset"] == each["end"] for each in ranges)
    assert max(each["end"] for each in ranges) == large.stat().st_size


@pytest.mark.parametrize("after_checkpoints", [0, 1, 3, 8])
def test_paused_at_any_checkpoint_it_resumes_each_range_and_stores_every_row_once(large, after_checkpoints):
    operation = Operation.objects.create(kind="csv_import", status=Status.RUNNING, run_token=1,
                                         params={"path": str(large)})
    # The pause lands at the first checkpoint after this many (a cut's or a chunk's).
    with connection.cursor() as cursor:
        cursor.execute(f"""
            CREATE FUNCTION pause_after() RETURNS trigger AS $$ BEGIN
                IF NEW.fence >= {after_checkpoints} AND NEW.status = 'running' THEN
                    NEW.status := 'pause_requested';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER pause_after BEFORE UPDATE OF fence ON operations_operation
                FOR EACH ROW WHEN (NEW.id = {operation.pk}) EXECUTE FUNCTION pause_after();""")
    try:
        with pytest.raises(StopStep):
            run(operation)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER pause_after ON operations_operation; DROP FUNCTION pause_after()")
    paused = Operation.objects.get(pk=operation.pk)
    cursor_then = paused.checkpoint
    assert stored(operation)[0] == cursor_then["rows"] == paused.progress_done < ROWS
    if after_checkpoints == 8:  # counted by then (a moment after the first cut), and committed with a chunk
        assert cursor_then["total"] == paused.progress_total == ROWS
    Operation.objects.filter(pk=operation.pk).update(status=Status.RUNNING)
    assert run(operation, cursor_then) == {"rows": ROWS, "file": "large.csv"}
    assert stored(operation) == (ROWS, ROWS, ROWS * (ROWS + 1) // 2)
    done = Operation.objects.get(pk=operation.pk)
    assert done.progress_done == done.progress_total == ROWS
