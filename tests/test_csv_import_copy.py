"""csv_import's PostgreSQL path, in-process: what a chunk's COPY stores and how its transaction commits."""

import io

import pytest
from django.db import connection, transaction

from operations.contrib.demo import csvio
from operations.contrib.demo.kinds.csv_import import copy_input, load_chunk
from operations.contrib.demo.models import Record
from operations.models import Operation

pytestmark = [pytest.mark.integration, pytest.mark.backends("pg-redis", "pg-rabbitmq"),
              pytest.mark.django_db(transaction=True)]

ROWS = (b"1,Ann Lee,a@example.org,1.5,2020-01-01\n"
        b"2, spaced , s@example.org , 2 ,2020-01-02\n"
        b"3,tab\there,t@example.org,3.00,2020-01-03\n")


def a_chunk(data):
    chunk = csvio.read_chunk(io.BytesIO(data), 2, 100, "t.csv", blocks=True)
    assert chunk.blocks is not None
    return chunk


def stored(operation):
    return list(Record.objects.filter(operation_id=operation.pk).order_by("external_id")
                .values_list("external_id", "name", "email", "amount", "date"))


def test_the_text_format_stores_what_the_csv_format_stores():
    text_op, csv_op = (Operation.objects.create(kind="csv_import", status="running") for _ in range(2))
    pieces, plain = copy_input(text_op.pk)(a_chunk(ROWS))
    assert plain
    as_text = a_chunk(ROWS)
    as_text.payload = pieces, True
    as_csv = a_chunk(ROWS)
    as_csv.payload = copy_input(csv_op.pk)(as_csv)[0], False
    with transaction.atomic():
        load_chunk(text_op.pk, as_text, "t.csv")
        load_chunk(csv_op.pk, as_csv, "t.csv")
    assert stored(text_op) == stored(csv_op)
    assert [row[1] for row in stored(text_op)] == ["Ann Lee", " spaced ", "tab\there"]


def test_a_chunk_with_a_backslash_goes_through_the_csv_format():
    operation = Operation.objects.create(kind="csv_import", status="running")
    chunk = a_chunk(b"1,\\N,a@example.org,1,2020-01-01\n")
    assert copy_input(operation.pk)(chunk)[1] is False
    with transaction.atomic():
        load_chunk(operation.pk, chunk, "t.csv")
    assert stored(operation)[0][1] == "\\N"


@pytest.mark.parametrize("durable, expected", [(False, "off"), (True, "on")])
def test_a_chunk_commits_as_step_commits_do(settings, durable, expected):
    settings.TAP_DURABLE_STEP_COMMITS = durable
    operation = Operation.objects.create(kind="csv_import", status="running")
    with transaction.atomic():
        load_chunk(operation.pk, a_chunk(ROWS), "t.csv")
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == expected
    with connection.cursor() as cursor:  # SET LOCAL: the next transaction is back to the default
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
