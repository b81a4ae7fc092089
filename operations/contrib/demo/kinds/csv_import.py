"""``csv_import``: stream a CSV file into records, a chunk per checkpoint (COPY on PostgreSQL).

Each chunk's rows, the cursor (byte offset + line) and the progress commit in one transaction,
so a pause or cancel lands within one chunk and a crash loses at most the chunk in flight. A bad
row fails the operation with its line, column and reason; nothing of its chunk is committed. On
PostgreSQL a large file is loaded in byte ranges through up to ``ranges`` (TAP_CSV_IMPORT_RANGES)
connections side by side, shared out as they go (``byteranges``); the cursor then holds each
range's, and a chunk of any range commits with all.
"""

import datetime
import os
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

from ..byteranges import SharedRanges, first_cursor, with_cut, with_range
from ..conf import conf
from ..csvio import CsvFileError, check_file, chunks, copy_error, parse, start_state
from ..files import RECORD_HEADER
from ..models import Record
from ..pacing import Pace
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
        help_text="On PostgreSQL, a large file is loaded in byte ranges through up to this many database "
                  "connections side by side; 1: from the first row to the last.")
    setting_defaults = {**CsvSourceForm.setting_defaults, "ranges": lambda: conf.CSV_IMPORT_RANGES}


@step(name="operations.csv_import", context=True, atomic=False)
def import_csv(ctx, path, source, chunk_rows, rows_per_second=None, ranges=None):
    on_postgresql = is_postgresql()
    side_by_side = (ranges or conf.CSV_IMPORT_RANGES) if on_postgresql else 1
    if ctx.state is None and side_by_side > 1:
        ctx.state = first_state(path, source, chunk_rows)
    if ctx.state is not None and "ranges" in ctx.state:
        import_in_ranges(ctx, path, source, chunk_rows, rows_per_second, side_by_side)
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


#: A file is loaded in ranges only if it holds at least this many chunks.
IN_RANGES_CHUNKS = 4
#: A file up to this size has its lines counted before it is loaded (a few milliseconds): it may
#: stay whole. A larger one is loaded in ranges at once, its lines counted beside the loading.
COUNTED_FIRST_BYTES = 16 << 20


def first_state(path, source, chunk_rows):
    """The cursor of an import on PostgreSQL that has not begun: in ranges for a large file."""
    size = os.path.getsize(path)
    if size > COUNTED_FIRST_BYTES:
        offset, about = check_file(path, RECORD_HEADER, source)  # about: the mean line of its start
        return first_cursor(offset, size) if about >= IN_RANGES_CHUNKS * chunk_rows else None
    state = start_state(path, RECORD_HEADER, source)
    return first_cursor(state["offset"], size, state["total"]) if state["total"] >= IN_RANGES_CHUNKS * chunk_rows else state


def import_in_ranges(ctx, path, source, chunk_rows, rows_per_second, side_by_side):
    """PostgreSQL: the byte ranges of ``ctx.state`` loaded by ``side_by_side`` threads, each
    through its own connection and COPYs; a thread with no range left cuts the largest one in
    two (``byteranges``). Each chunk commits with the cursor of every range (its own moved on),
    so a crash or a pause resumes each range where its last chunk committed."""
    bytes_left = sum(each["end"] - each["offset"] for each in ctx.state["ranges"])
    counted = ctx.state["total"] is not None
    # Not counted yet: meanwhile, the mean line of the file's start.
    data_start, rows_left = (None, ctx.state["total"] - ctx.state["rows"]) if counted else check_file(
        path, RECORD_HEADER, source)
    shared = SharedRanges(path, ctx.state["ranges"], chunk_rows=chunk_rows,
                          bytes_per_row=bytes_left / max(1, rows_left), threads=side_by_side)
    pace = rows_per_second / side_by_side if rows_per_second else None  # the threads share the rate

    def commit_cut(cut):
        with ctx.checkpoint(shared.after(with_cut, cut), done=_rows, total=_total):
            pass

    def load(stopping):
        # One chunk in memory per thread, prefixed as it is sent: while one thread's chunk is
        # being copied, another reads its next one. (Reading the next chunk while PostgreSQL
        # still copies this one was slower: bench/README.md.)
        with open(path, "rb") as f:
            paced = Pace(pace)
            while not stopping.is_set():
                # An unfinished range of a resumed import first; then half of the largest one left.
                if (index := shared.take()) is None and (index := shared.cut(commit_cut)) is None:
                    return  # nothing left worth sharing
                rows = ctx.state["ranges"][index]["rows"]
                while not stopping.is_set() and (chunk := shared.read(index, f, source)) is not None:
                    rows += chunk.rows
                    cursor = {"offset": chunk.next_offset, "line": chunk.next_line, "rows": rows}
                    with ctx.checkpoint(shared.after(with_range, index, cursor), done=_rows, total=_total):
                        load_chunk(ctx.operation_id, chunk, source, side_by_side=True)
                    paced(chunk.rows)

    counting = [] if counted else [partial(shared.count, data_start)]  # beside the loading, holding no connection
    run_side_by_side([load] * side_by_side + counting, name="csv-range")
    if ctx.state["total"] != ctx.state["rows"]:  # the line count held blank lines: the exact total
        with ctx.checkpoint(lambda last: {**last, "total": last["rows"]}, done=_rows, total=_total):
            pass


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

