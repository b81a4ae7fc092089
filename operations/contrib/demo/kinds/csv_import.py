"""``csv_import``: stream a CSV file into records, a chunk per checkpoint (COPY on PostgreSQL).

Each chunk's rows, the cursor (byte offset + line) and the progress commit in one transaction,
so a pause or cancel lands within one chunk and a crash loses at most the chunk in flight. A bad
row fails the operation with its line, column and reason; nothing of its chunk is committed. On
PostgreSQL a large file may be cut into byte ranges (``ranges``, TAP_CSV_IMPORT_RANGES) loaded side
by side, one connection each; the cursor then holds each range's, and a chunk of any range commits with all.
"""

import datetime
from contextlib import closing
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import partial

from celery import chain
from django import forms
from django.db import DatabaseError, IntegrityError, transaction

from operations.catalogue import AUTO_RECOVERY, Kind, register_kind
from operations.conf import conf as engine_conf
from operations.outages import is_outage
from operations.workflow import step

from ..conf import conf
from ..csvio import CsvFileError, chunks, copy_error, parse, start_state
from ..files import RECORD_HEADER
from ..models import Record
from ..rowstore import copy_csv, is_postgresql, write_rows
from ..together import run_side_by_side
from .csv_source import CsvSourceForm, prepare_source, start_again_from

#: Database column → the CSV column it comes from, for error messages.
CSV_COLUMN = {"external_id": "id", "name": "name", "email": "email", "amount": "amount", "date": "date"}
MAX_AMOUNT = Decimal(10) ** 12
DEADLOCK = "40P01"
CENT = Decimal("0.01")


#: The most byte ranges a person may ask one import to load side by side.
MAX_RANGES = 16


class ImportForm(CsvSourceForm):
    ranges = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_RANGES,
        help_text="On PostgreSQL, a large file is cut into up to this many byte ranges, loaded side by "
                  "side (one database connection each); 1: from the first row to the last.")
    setting_defaults = {**CsvSourceForm.setting_defaults, "ranges": lambda: conf.CSV_IMPORT_RANGES}


@step(name="operations.csv_import", context=True, atomic=False)
def import_csv(ctx, path, source, chunk_rows, rows_per_second=None, ranges=None):
    on_postgresql = is_postgresql()
    if ctx.state is None and on_postgresql:  # a large file: in byte ranges, loaded side by side
        ctx.state = start_state(path, RECORD_HEADER, source, ranges=ranges or conf.CSV_IMPORT_RANGES,
                                min_range_rows=MIN_RANGE_CHUNKS * chunk_rows)
    if ctx.state is not None and "ranges" in ctx.state:
        import_in_ranges(ctx, path, source, chunk_rows, rows_per_second)
        return {"rows": ctx.state["rows"], "file": source}
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


#: A file is cut into ranges only if each range holds at least this many chunks.
MIN_RANGE_CHUNKS = 2


def import_in_ranges(ctx, path, source, chunk_rows, rows_per_second):
    """PostgreSQL: each byte range of ``ctx.state`` through its own connection and COPYs, side by
    side; each chunk commits with the cursor of every range (its own moved on), so a crash or a
    pause resumes each range where its last chunk committed."""
    ranges = ctx.state["ranges"]
    pace = rows_per_second / len(ranges) if rows_per_second else None  # the ranges share the rate

    def import_range(index, stopping):
        # No reader thread ahead of each range: while one range's chunk is being copied, another
        # range reads its next one; one chunk in memory per range, prefixed as it is sent.
        reader = chunks(ranges[index], path, RECORD_HEADER, source, chunk_rows, pace, blocks=True)
        with closing(reader):
            for chunk, cursor in reader:
                if stopping.is_set():  # another range failed, or saw a pause or cancel
                    return
                with ctx.checkpoint(partial(_with_range, index, cursor), done=_rows, total=_total):
                    load_chunk(ctx.operation_id, chunk, source, side_by_side=True)

    run_side_by_side([partial(import_range, index) for index, cursor in enumerate(ranges)
                      if cursor["offset"] < cursor["end"]], name="csv-range")
    if ctx.state["total"] != ctx.state["rows"]:  # the line count held blank lines: the exact total
        with ctx.checkpoint(lambda last: {**last, "total": last["rows"]}, done=_rows, total=_total):
            pass


def _with_range(index, cursor, last):
    ranges = [*last["ranges"]]
    ranges[index] = cursor
    return {**last, "ranges": ranges, "rows": sum(each["rows"] for each in ranges)}


def _rows(state):
    return state["rows"]


def _total(state):
    return state["total"]


def copy_input(operation_id, lazy=False):
    """``prepare`` for ``csvio.chunks``: a chunk as COPY's input, each line prefixed with the
    operation id — (pieces, plain), plain when COPY may read it in its faster text format.
    ``lazy``: the pieces as they are sent, one block's worth in memory at a time."""
    prefix = b"%d," % operation_id

    def prepare(chunk):
        if chunk.blocks is None:
            return [b"".join(prefix + record for record in chunk.records)], False
        pieces = (prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n" for block in chunk.blocks)
        # A block has no quote and no CR (csvio.read_blocks); without a backslash either, the text
        # format reads the same fields as the csv one.
        return pieces if lazy else list(pieces), not any(b"\\" in block for block in chunk.blocks)

    return prepare


def load_chunk(operation_id, chunk, source, *, side_by_side=False):
    """Write a chunk's records for ``operation_id``; a bad row raises CsvFileError.
    ``side_by_side``: other ranges of the file are being loaded at the same time."""
    if is_postgresql():
        # The file's own bytes, each line prefixed with the operation id: PostgreSQL parses and
        # checks them (types, lengths, the unique id), and names the line of a bad one.
        pieces, plain = chunk.payload if chunk.payload is not None else copy_input(operation_id, lazy=True)(chunk)
        try:
            # The chunk commits with its cursor, whole or not at all: if a database crash undoes
            # the last commits (TAP_DURABLE_STEP_COMMITS off), their rows go with their cursors,
            # and the resumed step copies those chunks again.
            copy_csv(Record, Record.COLUMNS, pieces, plain=plain, durable=engine_conf.DURABLE_STEP_COMMITS)
        except Exception as exc:
            # A bad row is the file's fault; a lost connection or a full disk is an outage, which
            # the engine leaves to the reconciler instead of failing the import (operations/outages.py).
            cause = exc.__cause__ or exc
            # Two ranges inserting each other's ids wait for each other: PostgreSQL breaks the
            # deadlock by failing one of them, at a duplicate id of the file.
            duplicates = side_by_side and getattr(getattr(cause, "diag", None), "sqlstate", None) == DEADLOCK
            if not duplicates and (is_outage(exc) or not (isinstance(exc, DatabaseError)
                                                          or type(exc).__module__.startswith("psycopg"))):
                raise
            raise copy_error(cause, chunk, source, CSV_COLUMN, RECORD_HEADER, anywhere=side_by_side) from None
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
    return chain(import_csv.si(params["path"], params["source"], params["chunk_rows"], params["rows_per_second"],
                               params.get("ranges")))


register_kind(Kind(
    name="csv_import",
    label="Import a CSV file",
    description="Loads a CSV of records (id,name,email,amount,date) into the database, chunk by chunk.",
    form=ImportForm,
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

