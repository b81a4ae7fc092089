"""Streaming CSV files in chunks whose cursor is a byte offset and a line number.

Memory stays flat whatever the file size: a chunk is at most ``chunk_rows`` records, read from
the cursor of the last checkpoint. Every error names the file, the line and, where it applies,
the column.
"""

import csv
import io
import queue
import re
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from operations.exceptions import DataError

from .pacing import Pace

#: A physical line longer than this is refused (no newline would otherwise mean no limit).
MAX_LINE_BYTES = 1 << 20


class CsvFileError(DataError):
    """What is wrong with a CSV file, and where: '<file>, line <n>, column <name>: <reason>'."""

    def __init__(self, file, reason, *, line=None, column=None):
        where = [str(file)]
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {reason}")
        self.file, self.line, self.column, self.reason = file, line, column, reason


#: How much of the file the fast path reads at a time.
BLOCK_BYTES = 1 << 20


@dataclass
class Chunk:
    """Up to ``chunk_rows`` records, as ``records`` (raw bytes, each ending in a newline, with
    their first ``lines``) or — the fast path — as ``blocks`` of the file cut at line ends, in
    which every line is one record, starting at ``first_line``."""

    next_offset: int
    next_line: int
    rows: int
    records: list = None
    lines: list = None
    blocks: list = None
    first_line: int = 0
    #: What ``chunks(prepare=...)`` made of the chunk, on the reader thread (e.g. COPY's input).
    payload: object = None

    def line_of(self, index):
        """The file's line of the chunk's record ``index`` (0-based)."""
        return self.first_line + index if self.blocks is not None else self.lines[index]


def check_file(path, header, display_name):
    """Refuse a missing file, an empty one, a wrong header and a file with no data rows, reading
    only its first lines: what starting an import checks before anything runs (the worker then
    counts the lines once). Returns the offset of the first data row and about how many lines
    follow (the file's size ÷ the mean length of its first 64 KiB's lines)."""
    with open(_existing(path, display_name), "rb") as f:
        offset = _after_header(f, header, display_name)
        sample = f.read(1 << 16)
        if not sample:
            raise CsvFileError(display_name, "the file has a header but no data rows")
        size = f.seek(0, 2)
    return offset, round((size - offset) * (sample.count(b"\n") or 1) / len(sample))


def start_state(path, header, display_name):
    """Check the file as ``check_file`` does; return the cursor just after its header, with the
    total of its data lines (the progress's total)."""
    with open(_existing(path, display_name), "rb") as f:
        offset = _after_header(f, header, display_name)
        data_lines = 0
        ends_with_newline = True
        while block := f.read(1 << 20):
            data_lines += block.count(b"\n")
            ends_with_newline = block.endswith(b"\n")
        data_lines += 0 if ends_with_newline else 1
    if data_lines == 0:
        raise CsvFileError(display_name, "the file has a header but no data rows")
    return {"offset": offset, "line": 2, "rows": 0, "total": data_lines}


def _existing(path, display_name):
    path = Path(path)
    if not path.is_file():
        raise CsvFileError(display_name, "no such file")
    return path


def _after_header(f, header, display_name):
    """Read and check the header line of ``f``; return the offset just after it."""
    first = f.readline(MAX_LINE_BYTES)
    if not first.strip():
        raise CsvFileError(display_name, "the file is empty" if not first else "line 1 is blank; expected a header",
                           line=None if not first else 1)
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvFileError(display_name, f"the header is not valid UTF-8 ({exc.reason})", line=1) from None
    got = tuple(field.strip().lower() for field in next(csv.reader([text])))
    if got != tuple(header):
        raise CsvFileError(display_name, f"expected the header {','.join(header)}, got {','.join(got)}", line=1)
    return f.tell()


def nth_newline(raw, n, count):
    """The index of the ``n``-th newline (1-based) of ``raw``, which holds ``count`` of them:
    counted from a guess (the lines are about as long as each other), not one line at a time."""
    guess = len(raw) * n // count
    seen = raw.count(b"\n", 0, guess)  # newlines before the guess
    if seen >= n:
        end = guess
        for _ in range(seen - n + 1):
            end = raw.rindex(b"\n", 0, end)
        return end
    end = guess - 1
    for _ in range(n - seen):
        end = raw.index(b"\n", end + 1)
    return end


def read_blocks(f, line, chunk_rows, end=None):
    """The fast path: up to ``chunk_rows`` lines as blocks of bytes, if each line is one plain
    record (no quote, no blank line, no stray CR, no over-long line); else None, ``f`` rewound.
    ``end``: a line start not to read past (a range's end)."""
    start, blocks, rows = f.tell(), [], 0
    while rows < chunk_rows:
        raw = f.read(BLOCK_BYTES if end is None else min(BLOCK_BYTES, end - f.tell()))
        if not raw:
            break
        if not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n")
            if cut >= 0:  # keep whole lines; the rest is read again with the next block
                f.seek(cut + 1 - len(raw), 1)
                raw = raw[:cut + 1]
            elif len(raw) < BLOCK_BYTES:
                raw += b"\n"  # the file's last line, without a newline
            else:
                f.seek(start)
                return None  # a line longer than a block: the record reader says where
        count = raw.count(b"\n")
        if rows + count > chunk_rows:  # keep only the lines this chunk still needs
            end = nth_newline(raw, chunk_rows - rows, count)
            f.seek(end + 1 - len(raw), 1)
            raw, count = raw[:end + 1], chunk_rows - rows
        block = raw.replace(b"\r\n", b"\n") if b"\r" in raw else raw
        if b'"' in block or b"\r" in block or b"\n\n" in block or block.startswith(b"\n"):
            f.seek(start)
            return None
        blocks.append(block)
        rows += count
    if not blocks:
        return None
    return Chunk(f.tell(), line + rows, rows, blocks=blocks, first_line=line)


def read_chunk(f, line, chunk_rows, display_name, blocks=False, end=None):
    """Read up to ``chunk_rows`` records from the current position of ``f`` (opened in binary).

    Blank lines are skipped; a quoted field may span lines (the record keeps its first line).
    With ``blocks``, a chunk of plain records comes back as blocks of the file (``read_blocks``).
    ``end``: a line start where the records stop (a range's end; ranges hold no quote).
    """
    if blocks:
        chunk = read_blocks(f, line, chunk_rows, end)
        if chunk is not None:
            return chunk
    records, lines = [], []
    readline = f.readline
    while len(records) < chunk_rows:
        if end is not None and f.tell() >= end:
            break
        raw = readline(MAX_LINE_BYTES)
        if not raw:
            break
        start_line = line
        line += 1
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise CsvFileError(display_name, f"the line is longer than {MAX_LINE_BYTES} bytes", line=start_line)
        if raw in (b"\n", b"\r\n"):
            continue
        if b'"' in raw:
            while raw.count(b'"') % 2:  # an open quote: the record continues on the next line
                more = readline(MAX_LINE_BYTES)
                if not more:
                    raise CsvFileError(display_name, "a quoted field is not closed before the end of the file",
                                       line=start_line)
                raw += more
                line += 1
        if not raw.endswith(b"\n"):
            raw += b"\n"
        records.append(raw)
        lines.append(start_line)
    return Chunk(f.tell(), line, len(records), records=records, lines=lines)


def chunks(state, path, header, display_name, chunk_rows, rows_per_second=None, blocks=False,
           prefetch=False, prepare=None, **initial):
    """Yield (chunk, cursor after it) from ``state`` (a checkpoint's cursor, or None) to the end.

    The cursor holds the byte offset, the next line, the rows so far and the total (exact once
    the end is reached); ``initial`` adds the caller's own fields on a first run.

    ``prepare(chunk)``, if given, sets ``chunk.payload`` before the chunk is yielded. With
    ``prefetch``, a reader thread reads (and prepares) the next chunk while the caller works on
    this one: at most two chunks are in memory, and the chunks, their cursors and any error come
    in the same order, at the same chunk, as without it. Close the generator when stopping early
    (``contextlib.closing``): the reader thread stops with it.
    """
    state = state or {**start_state(path, header, display_name), **initial}
    items = _read_chunks(state, path, display_name, chunk_rows, rows_per_second, blocks, prepare)
    if not prefetch:
        yield from items
        return
    yield from _one_ahead(items)


def _read_chunks(state, path, display_name, chunk_rows, rows_per_second, blocks, prepare):
    pace = Pace(rows_per_second)
    end = state.get("end")  # a range's cursor has an end, and no total of its own
    with open(path, "rb") as f:
        f.seek(state["offset"])
        while end is None or f.tell() < end:
            chunk = read_chunk(f, state["line"], chunk_rows, display_name, blocks=blocks, end=end)
            if not chunk.rows:
                return
            if prepare is not None:
                chunk.payload = prepare(chunk)
            rows = state["rows"] + chunk.rows
            at_end = chunk.rows < chunk_rows or (end is not None and chunk.next_offset >= end)
            state = {**state, "offset": chunk.next_offset, "line": chunk.next_line, "rows": rows}
            if end is None:
                state["total"] = rows if at_end else max(state["total"], rows)
            yield chunk, state
            if at_end:
                return
            pace(chunk.rows)


_ITEM, _END, _ERROR = "item", "end", "error"


def _one_ahead(items):
    """Iterate the generator ``items`` in a thread, one item ahead of the caller (see ``chunks``)."""
    wanted, ready = queue.SimpleQueue(), queue.SimpleQueue()

    def read():
        with closing(items):
            while wanted.get():
                try:
                    ready.put((_ITEM, next(items)))
                except StopIteration:
                    ready.put((_END, None))
                    return
                except BaseException as exc:  # raised in the caller's thread, at the same chunk
                    ready.put((_ERROR, exc))
                    return

    reader = threading.Thread(target=read, name="csv-reader", daemon=True)
    reader.start()
    wanted.put(True)
    try:
        while True:
            kind, value = ready.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            wanted.put(True)  # read the next chunk while the caller loads this one
            yield value
    finally:
        wanted.put(False)
        reader.join()


def parse(chunk, width, display_name, columns):
    """Decode and split each record of a chunk: (line, [fields]). Checks UTF-8, NUL and the width."""
    for raw, line in zip(chunk.records, chunk.lines):
        if b"\x00" in raw:
            raise CsvFileError(display_name, "contains a NUL byte", line=line)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CsvFileError(display_name, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})",
                               line=line) from None
        fields = next(csv.reader(io.StringIO(text)))
        if len(fields) != width:
            raise CsvFileError(display_name, f"expected {width} columns ({', '.join(columns)}), got {len(fields)}",
                               line=line)
        yield line, fields


_COPY_CONTEXT = re.compile(r"line (\d+)(?:, column (\w+))?")


def copy_error(exc, chunk, display_name, column_names, header, anywhere=False):
    """Turn a PostgreSQL COPY error into a CsvFileError naming the file's line and column.
    ``anywhere``: the file's ranges were loaded side by side, so the row whose id a duplicate
    repeats may come later in the file."""
    diag = getattr(exc, "diag", None)
    context = (diag.context if diag else None) or ""
    match = _COPY_CONTEXT.search(context)
    line = column = None
    if match:
        index = int(match.group(1)) - 1
        line = chunk.line_of(index) if 0 <= index < chunk.rows else None
        column = column_names.get(match.group(2), match.group(2)) if match.group(2) else None
    reason = (diag.message_primary if diag else None) or str(exc).splitlines()[0]
    width = f"expected {len(header)} columns ({', '.join(header)})"
    sqlstate = diag.sqlstate if diag else None
    named = re.search(r'column "(\w+)"', reason)
    if sqlstate in ("23505", "40P01"):  # unique violation (or two ranges waiting for each other's)
        key = re.search(r"\)=\([^,]+, ([^)]+)\)", (diag.message_detail or "") if diag else "")
        other = "another row of the file" if anywhere else "an earlier row"
        column, reason = "id", f"duplicate id {key.group(1) if key else '?'} ({other} has the same id)"
    elif sqlstate == "23502":  # not null: an empty field
        column, reason = column_names.get(diag.column_name, diag.column_name), "the value is empty"
    elif reason.startswith("missing data for column") and named:
        column, reason = None, f"{width}; the row ends before column {column_names.get(named.group(1), named.group(1))}"
    elif reason.startswith("extra data after last expected column"):
        reason = f"{width}; the row has more"
    return CsvFileError(display_name, reason, line=line, column=column)
