"""Byte ranges of one CSV file, loaded side by side by a few threads that share out the work.

A thread with no range left takes the second half of the range with the most left to read, cut
at a line start, and the chunks get smaller as the end nears (each at most a ``2 × threads``-th
of what is left): so the threads finish together however fast each one goes. (On PostgreSQL the
range holding the file's highest ids appends at the right edge of the records' key and runs
20–25 % faster than one inserting into its middle: cut once, in two fixed halves, the import
waited for the slow half alone at the end.)

The cursor is ``{"ranges": [{"offset", "line", "end", "rows"}, ...], "rows", "total"}``; the
ranges cover the data without overlap, in the order they were cut (not in file order). A cut is
committed, as a checkpoint, before any row past it is loaded, so a resumed import finds every
range it must finish in the cursor. The loading begins at once: the lines are counted beside it,
and the total (the progress's) goes with the next checkpoint.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .csvio import BLOCK_BYTES, MAX_LINE_BYTES, Chunk, read_chunk


@dataclass(frozen=True)
class Cut:
    """Range ``of`` now ends at ``offset`` (a line start, on ``line``); the rest of it, up to
    ``end``, is the new range ``index``."""

    of: int
    offset: int
    line: int
    end: int
    index: int


def first_cursor(offset: int, size: int, total: int | None = None) -> dict:
    """The cursor of an import in ranges that has not begun: one range, from ``offset`` (the
    first data row, on line 2) to the end; ``total`` None: not counted yet (``SharedRanges.count``)."""
    return {"ranges": [{"offset": offset, "line": 2, "end": size, "rows": 0}], "rows": 0, "total": total}


def with_range(index: int, cursor: dict, last: dict) -> dict:
    """``last`` with range ``index`` moved on to ``cursor`` (its end stays the committed one:
    it may have been cut meanwhile)."""
    ranges = [*last["ranges"]]
    ranges[index] = {**ranges[index], **cursor}
    return {**last, "ranges": ranges, "rows": sum(each["rows"] for each in ranges)}


def with_cut(cut: Cut, last: dict) -> dict:
    """``last`` with range ``cut.of`` cut in two at ``cut.offset``."""
    ranges = [*last["ranges"]]
    if len(ranges) != cut.index:
        raise RuntimeError(f"cut {cut.index} committed out of order ({len(ranges)} ranges committed)")
    ranges[cut.of] = {**ranges[cut.of], "end": cut.offset}
    ranges.append({"offset": cut.offset, "line": cut.line, "end": cut.end, "rows": 0})
    return {**last, "ranges": ranges}


class SharedRanges:
    """The ranges being loaded, as far as this process has read them: where each one's next
    chunk starts and where it ends now. Reading a chunk and cutting a range go under one lock, so
    a range is never read past a cut."""

    #: The smallest chunk near the end, as a fraction of ``chunk_rows``.
    SMALLEST_CHUNK = 1 / 8
    #: The longest the count waits for the first cut, in seconds.
    COUNT_WAITS_FOR_CUT = 0.5

    def __init__(self, path, ranges: list[dict], *, chunk_rows: int, bytes_per_row: float, threads: int):
        self.path = path
        self.chunk_rows = chunk_rows
        self.bytes_per_row = max(bytes_per_row, 1.0)
        self.threads = threads
        self.min_cut_bytes = int(chunk_rows * self.bytes_per_row * self.SMALLEST_CHUNK * 2)
        self._next = [(each["offset"], each["line"]) for each in ranges]
        self._ends = [each["end"] for each in ranges]
        self._taken: set[int] = set()
        self._lock = threading.Lock()
        self._cutting = threading.Lock()  # one cut at a time, from its choice to its commit
        self.total: int | None = None  # the lines counted (``count``)
        self._cuts: list[Cut] = []
        self._first_cut = threading.Event()  # set once a cut was tried

    def count(self, start: int, stopping: threading.Event | None = None) -> None:
        """Count the lines from ``start`` (the first data row, on line 2) to the end: the total
        of the progress, for the next checkpoint (``after``). It waits for the first cut (a
        moment), not to compete with its read of the first half for the interpreter, then counts
        from there."""
        self._first_cut.wait(self.COUNT_WAITS_FOR_CUT)
        lines, ends_with_newline = 0, True
        if self._cuts:
            start, lines = self._cuts[0].offset, self._cuts[0].line - 2
        with open(self.path, "rb") as f:
            f.seek(start)
            while block := f.read(BLOCK_BYTES):
                if stopping is not None and stopping.is_set():
                    return  # the import stops: the next run counts
                lines += block.count(b"\n")
                ends_with_newline = block.endswith(b"\n")
        self.total = lines + (0 if ends_with_newline else 1)

    def after(self, change: Callable[..., dict], *args) -> Callable[[dict], dict]:
        """A checkpoint's cursor as a function of the last one: ``change(*args, last)``, with the
        total once counted."""
        def cursor(last):
            state = change(*args, last)
            return state if state["total"] is not None or self.total is None else {**state, "total": self.total}
        return cursor

    def take(self) -> int | None:
        """An unfinished range that no thread is loading (on a resumed import), or None."""
        with self._lock:
            for index, (offset, _) in enumerate(self._next):
                if index not in self._taken and offset < self._ends[index]:
                    self._taken.add(index)
                    return index
        return None

    def read(self, index: int, f: BinaryIO, display_name: str) -> Chunk | None:
        """Range ``index``'s next chunk from ``f`` (this thread's handle on the file), or None
        once the range is read to its end."""
        with self._lock:
            offset, line = self._next[index]
            end = self._ends[index]
            if offset >= end:
                return None
            rows_left = sum(end - start for (start, _), end in zip(self._next, self._ends)) / self.bytes_per_row
            rows = max(int(self.chunk_rows * self.SMALLEST_CHUNK), min(self.chunk_rows, int(rows_left / (2 * self.threads))), 1)
            f.seek(offset)
            chunk = read_chunk(f, line, rows, display_name, blocks=True, end=end)
            # No rows before the end: only blank lines were left.
            self._next[index] = (chunk.next_offset if chunk.rows else end, chunk.next_line)
        return chunk if chunk.rows else None

    def cut(self, commit: Callable[[Cut], None]) -> int | None:
        """Cut the range with the most left to read (two of the smallest chunks at least) in two, have
        ``commit`` record it, and return the new range for the calling thread; None if no range
        is worth cutting, or the one that is may not be cut (a quote before the middle: the cut
        could fall inside a quoted field)."""
        try:
            return self._cut(commit)
        finally:
            self._first_cut.set()

    def _cut(self, commit):
        with self._cutting:
            with self._lock:
                left, of = max((end - offset, index) for index, ((offset, _), end) in enumerate(zip(self._next, self._ends)))
                (offset, line), end = self._next[of], self._ends[of]
            if left < self.min_cut_bytes:
                return None
            found = line_start_after_middle(self.path, offset, line, end)  # the range's reader goes on meanwhile
            if found is None:
                return None
            with self._lock:
                if self._ends[of] != end or self._next[of][0] >= found[0]:
                    return None  # read past the middle meanwhile: its end is near
                cut = Cut(of=of, offset=found[0], line=found[1], end=end, index=len(self._ends))
                self._ends[of] = cut.offset
                self._next.append((cut.offset, cut.line))
                self._ends.append(cut.end)
                self._taken.add(cut.index)
            commit(cut)
            self._cuts.append(cut)
            return cut.index


def line_start_after_middle(path, offset: int, line: int, end: int) -> tuple[int, int] | None:
    """The first line start after the middle of ``[offset, end)`` (``offset`` a record's start,
    on ``line``) and its line, or None if a quote comes before it or it is ``end``. Read in
    blocks: the memory stays flat whatever the range's size."""
    middle = offset + (end - offset) // 2
    newlines = 0
    with open(path, "rb") as f:
        f.seek(offset)
        position = offset
        while position < middle:
            block = f.read(min(BLOCK_BYTES, middle - position))
            if not block or b'"' in block:
                return None
            newlines += block.count(b"\n")
            position += len(block)
        rest = f.readline(MAX_LINE_BYTES)  # to the end of the line the middle falls in
    if b'"' in rest or not rest.endswith(b"\n") or position + len(rest) >= end:
        return None
    return position + len(rest), line + newlines + 1
