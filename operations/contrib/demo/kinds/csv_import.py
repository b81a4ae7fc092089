"""``csv_import``: stream a CSV file into records, a chunk per checkpoint (COPY on PostgreSQL).

Each chunk's rows, the cursor (byte offset + line) and the progress commit in one transaction,
so a pause or cancel lands within one chunk and a crash loses at most the chunk in flight. A bad
row fails the operation with its line, column and reason; nothing of its chunk is committed.
"""

import datetime
from contextlib import closing
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from celery import chain
from django.db import DatabaseError, IntegrityError, transaction

from operations.catalogue import AUTO_RECOVERY, Kind, register_kind
from operations.conf import conf as engine_conf
from operations.outages import is_outage
from operations.workflow import step

from ..conf import conf
from ..csvio import CsvFileError, chunks, copy_error, parse
from ..files import RECORD_HEADER
from ..models import Record
from ..rowstore import copy_csv, is_postgresql, write_rows
from .csv_source import CsvSourceForm, prepare_source, start_again_from

#: Database column → the CSV column it comes from, for error messages.
CSV_COLUMN = {"external_id": "id", "name": "name", "email": "email", "amount": "amount", "date": "date"}
MAX_AMOUNT = Decimal(10) ** 12
CENT = Decimal("0.01")


@step(name="operations.csv_import", context=True, atomic=False)
def import_csv(ctx, path, source, chunk_rows, rows_per_second=None):
    on_postgresql = is_postgresql()
    # On PostgreSQL a reader thread reads the next chunk, and turns it into COPY's input, while
    # this one is copied: the chunks, their cursors and their errors stay those of a plain read.
    reader = chunks(ctx.state, path, RECORD_HEADER, source, chunk_rows, rows_per_second,
                    blocks=on_postgresql, prefetch=on_postgresql,
                    prepare=copy_input(ctx.operation_id) if on_postgresql else None)
    with closing(reader):
        for chunk, state in reader:
            with ctx.checkpoint(state, done=state["rows"], total=state["total"]):
                load_chunk(ctx.operation_id, chunk, source)
    return {"rows": (ctx.state or {}).get("rows", 0), "file": source}


def copy_input(operation_id):
    """``prepare`` for ``csvio.chunks``: a chunk as COPY's input, each line prefixed with the
    operation id — (pieces, plain), plain when COPY may read it in its faster text format."""
    prefix = b"%d," % operation_id

    def prepare(chunk):
        if chunk.blocks is None:
            return [b"".join(prefix + record for record in chunk.records)], False
        pieces = [prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n" for block in chunk.blocks]
        # A block has no quote and no CR (csvio.read_blocks); without a backslash either, the text
        # format reads the same fields as the csv one.
        return pieces, not any(b"\\" in block for block in chunk.blocks)

    return prepare


def load_chunk(operation_id, chunk, source):
    """Write a chunk's records for ``operation_id``; a bad row raises CsvFileError."""
    if is_postgresql():
        # The file's own bytes, each line prefixed with the operation id: PostgreSQL parses and
        # checks them (types, lengths, the unique id), and names the line of a bad one.
        pieces, plain = chunk.payload if chunk.payload is not None else copy_input(operation_id)(chunk)
        try:
            # The chunk commits with its cursor, whole or not at all: if a database crash undoes
            # the last commits (TAP_DURABLE_STEP_COMMITS off), their rows go with their cursors,
            # and the resumed step copies those chunks again.
            copy_csv(Record, Record.COLUMNS, pieces, plain=plain, durable=engine_conf.DURABLE_STEP_COMMITS)
        except Exception as exc:
            # A bad row is the file's fault; a lost connection or a full disk is an outage, which
            # the engine leaves to the reconciler instead of failing the import (operations/outages.py).
            if is_outage(exc) or not (isinstance(exc, DatabaseError) or type(exc).__module__.startswith("psycopg")):
                raise
            raise copy_error(exc.__cause__ or exc, chunk, source, CSV_COLUMN, RECORD_HEADER) from None
        return
    rows = [(operation_id, *validated(line, fields, source))
            for line, fields in parse(chunk, len(RECORD_HEADER), source, RECORD_HEADER)]
    try:
        with transaction.atomic():  # a savepoint: the search for the duplicate sees only earlier chunks
            write_rows(Record, Record.COLUMNS, rows)
    except IntegrityError:
        raise duplicate_error(operation_id, chunk, rows, source) from None


def validated(line, fields, source):
    """Check and convert one row the way PostgreSQL's COPY would (the SQLite path)."""
    external_id, name, email, amount, date = fields

    def fail(column, reason):
        return CsvFileError(source, reason, line=line, column=column)

    try:
        external_id = int(external_id)
    except ValueError:
        raise fail("id", f"not a whole number: {external_id!r}") from None
    if not -2**63 <= external_id < 2**63:
        raise fail("id", f"out of range: {external_id}")
    for column, value, limit in (("name", name, 200), ("email", email, 254)):
        if not value:
            raise fail(column, "the value is empty")
        if len(value) > limit:
            raise fail(column, f"longer than {limit} characters ({len(value)})")
    try:
        amount = Decimal(amount.strip()).quantize(CENT, ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        raise fail("amount", f"not a number: {amount!r}") from None
    if not amount.is_finite() or abs(amount) >= MAX_AMOUNT:
        raise fail("amount", f"out of range: {amount}")
    try:
        date = datetime.date.fromisoformat(date.strip())
    except ValueError:
        raise fail("date", f"not a date (expected YYYY-MM-DD): {date!r}") from None
    return external_id, name, email, str(amount), date.isoformat()


def duplicate_error(operation_id, chunk, rows, source):
    """Name the first row whose id repeats an earlier one (in this chunk or an earlier chunk)."""
    seen = {}
    for line, row in zip(chunk.lines, rows):
        if row[1] in seen:
            return CsvFileError(source, f"duplicate id {row[1]} (line {seen[row[1]]} has the same id)",
                                line=line, column="id")
        seen[row[1]] = line
    ids = list(seen)
    stored = set()
    for start in range(0, len(ids), 500):
        stored.update(Record.objects.filter(operation_id=operation_id, external_id__in=ids[start:start + 500])
                      .values_list("external_id", flat=True))
    for line, row in zip(chunk.lines, rows):
        if row[1] in stored:
            return CsvFileError(source, f"duplicate id {row[1]} (an earlier row has the same id)",
                                line=line, column="id")
    return CsvFileError(source, "a row could not be stored")


def remove_records(operation):
    removed, _ = Record.objects.filter(operation_id=operation.pk).delete()
    return f"removed {removed} imported record(s)"


def count_records(operation):
    return Record.objects.filter(operation_id=operation.pk).count()


def build(params):
    return chain(import_csv.si(params["path"], params["source"], params["chunk_rows"], params["rows_per_second"]))


register_kind(Kind(
    name="csv_import",
    label="Import a CSV file",
    description="Loads a CSV of records (id,name,email,amount,date) into the database, chunk by chunk.",
    form=CsvSourceForm,
    hidden_params=("path",),  # a server path: faces show the source's name
    start_again=start_again_from,
    build=build,
    prepare=prepare_source(RECORD_HEADER),
    compensate=remove_records,
    cancel_effect="Removes every record this import has stored so far.",
    count_rows=count_records,
    max_concurrent=lambda: conf.CSV_IMPORT_MAX_CONCURRENT,
    concurrency_scope="user",
    progress="custom",
    progress_unit="rows",
    recovery=AUTO_RECOVERY,  # the demo kinds come back by themselves after a crash
    editable=("chunk_rows", "rows_per_second"),  # while paused: the rest of the file goes at the new pace
))

