"""Byte ranges shared out among threads: however the threads take turns, every record of the file
is read exactly once, on its own line, and the committed cursor always covers what is left."""

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from operations.contrib.demo import byteranges, csvio

HEADER = ("id", "x")
plain_line = st.from_regex(r"[0-9a-z,. @-]{1,30}", fullmatch=True)
quoted_line = st.builds(lambda a, b: f'{a},"{b}\nwith a newline, and a comma"', plain_line, plain_line)
range_line = st.one_of(plain_line, plain_line, plain_line, st.just(""))


def write(tmp_path, body, end=b"\n"):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,x" + end + body)
    return path


def records(chunk):
    if chunk.blocks is not None:
        return [(chunk.line_of(i), r) for i, r in enumerate(b"".join(chunk.blocks).split(b"\n")[:-1])]
    return [(line, r.replace(b"\r\n", b"\n")[:-1]) for line, r in zip(chunk.lines, chunk.records)]


def whole(path):
    """(line, record) of every record, read from the first row to the last."""
    return [record for chunk, _ in csvio.chunks(None, path, HEADER, "t.csv", 3, blocks=True) for record in records(chunk)]


class Loaders:
    """``threads`` loaders over one SharedRanges, moved one step at a time in the order given: a
    step reads a chunk of the loader's range (committing it into ``state``) or, with none, takes
    or cuts one. Records what was read and the committed cursor, as the import does."""

    def __init__(self, path, threads, chunk_rows, bytes_per_row):
        self.data_start, _ = csvio.check_file(path, HEADER, "t.csv")
        self.state = byteranges.first_cursor(self.data_start, path.stat().st_size)
        self.shared = byteranges.SharedRanges(path, self.state["ranges"], chunk_rows=chunk_rows,
                                              bytes_per_row=bytes_per_row, threads=threads)
        self.shared.COUNT_WAITS_FOR_CUT = 0  # one thread here: the count does not wait for a cut
        self.files = [open(path, "rb") for _ in range(threads)]
        self.ranges = [None] * threads
        self.rows = [0] * threads
        self.done = [False] * threads
        self.chunk_rows, self.seen, self.cuts = chunk_rows, [], 0

    def commit_cut(self, cut):
        self.state = self.shared.after(byteranges.with_cut, cut)(self.state)
        self.cuts += 1

    def step(self, thread):
        if self.done[thread]:
            return
        if self.ranges[thread] is None:
            index = self.shared.take()
            if index is None:
                index = self.shared.cut(self.commit_cut)
            if index is None:
                self.done[thread] = True
                return
            self.ranges[thread], self.rows[thread] = index, self.state["ranges"][index]["rows"]
            return
        index = self.ranges[thread]
        chunk = self.shared.read(index, self.files[thread], "t.csv")
        if chunk is None:
            self.ranges[thread] = None
            return
        self.seen += records(chunk)
        self.rows[thread] += chunk.rows
        cursor = {"offset": chunk.next_offset, "line": chunk.next_line, "rows": self.rows[thread]}
        self.state = self.shared.after(byteranges.with_range, index, cursor)(self.state)

    def close(self):
        for f in self.files:
            f.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(range_line, min_size=1, max_size=80), threads=st.integers(1, 4),
       chunk_rows=st.integers(1, 24), bytes_per_row=st.floats(0.1, 4), crlf=st.booleans(),
       last_newline=st.booleans(), turns=st.lists(st.integers(0, 3), max_size=300),
       quoted=st.one_of(st.none(), st.tuples(st.integers(0, 80), quoted_line)), count_at=st.integers(0, 100))
def test_however_the_threads_take_turns_every_record_is_read_once_on_its_line(
        tmp_path_factory, lines, threads, chunk_rows, bytes_per_row, crlf, last_newline, turns, quoted, count_at):
    """Plain and blank lines, and maybe one quoted field holding a line end (no range is cut
    where a quote comes before the middle)."""
    if quoted is not None:
        lines = [*lines[:quoted[0]], quoted[1], *lines[quoted[0]:]]
    end = b"\r\n" if crlf else b"\n"
    body = end.join(line.encode() for line in lines) + (end if last_newline else b"")
    if not body.strip():
        return
    path = write(tmp_path_factory.mktemp("ranges"), body, end)
    loaders = Loaders(path, threads, chunk_rows, bytes_per_row)
    try:
        for number, turn in enumerate([t % threads for t in turns] + [t for _ in range(2000) for t in range(threads)]):
            if number == count_at:
                loaders.shared.count(loaders.data_start)
            loaders.step(turn)
            assert_covers_the_rest(path, loaders.state)
            if all(loaders.done):
                break
        assert all(loaders.done)
    finally:
        loaders.close()
    event(f"cuts: {min(loaders.cuts, 3)}")
    assert sorted(loaders.seen) == whole(path)
    assert loaders.state["rows"] == sum(each["rows"] for each in loaders.state["ranges"]) == len(whole(path))
    lines_after_header = csvio.start_state(path, HEADER, "t.csv")["total"]
    assert loaders.shared.total in (None, lines_after_header)  # counted (if its turn came) as start_state counts
    assert loaders.state["total"] in (None, lines_after_header)  # … and committed with the next cursor
    assert all(each["offset"] >= each["end"] or not path.read_bytes()[each["offset"]:each["end"]].strip()
               for each in loaders.state["ranges"])


def assert_covers_the_rest(path, state):
    """The committed ranges, in file order, tile the data; each one's cursor is a line start on its line."""
    data = path.read_bytes()
    ranges = sorted(state["ranges"], key=lambda each: each["end"])
    starts = [data.index(b"\n") + 1] + [each["end"] for each in ranges[:-1]]
    assert ranges[-1]["end"] == len(data)
    for start, each in zip(starts, ranges):
        assert start <= each["offset"] <= each["end"]
        if each["offset"] < each["end"]:  # (a range read to its end may end the file without a newline)
            assert data[each["offset"] - 1:each["offset"]] == b"\n"
            assert each["line"] == 1 + data[:each["offset"]].count(b"\n")


def test_the_threads_share_a_range_in_halves_at_line_starts(tmp_path):
    path = write(tmp_path, b"".join(b"%d,xxxxxxxx\n" % i for i in range(1000)))
    loaders = Loaders(path, 2, 100, 13)
    loaders.step(0)  # thread 0 takes the only range
    loaders.step(1)  # thread 1 cuts it in two: the second half is its own
    first, second = loaders.state["ranges"]
    data = path.read_bytes()
    assert 0 <= (first["end"] - first["offset"]) - (second["end"] - second["offset"]) <= 2 * len(b"999,xxxxxxxx\n")
    assert first["end"] == second["offset"] and data[second["offset"] - 1:second["offset"]] == b"\n"
    assert second["line"] == data[:second["offset"]].count(b"\n") + 1 and second["rows"] == 0
    loaders.close()


@pytest.mark.parametrize("body, quoted", [
    (b"".join(b'%d,"x"\n' % i for i in range(100)), True),  # a quote: a field may hold a line end
    (b"".join(b"%d,x\n" % i for i in range(100)), False),
])
def test_a_range_is_not_cut_after_a_quote_nor_when_too_small(tmp_path, body, quoted):
    path = write(tmp_path, body)
    size = path.stat().st_size
    shared = byteranges.SharedRanges(path, [{"offset": 5, "line": 2, "end": size, "rows": 0}], threads=2,
                                     chunk_rows=8 if quoted else 400, bytes_per_row=size / 100)
    assert shared.cut(lambda cut: pytest.fail(f"cut {cut}")) is None


def test_the_chunks_get_smaller_as_the_end_nears_but_not_below_an_eighth(tmp_path):
    path = write(tmp_path, b"".join(b"%d,xxxxxxxx\n" % i for i in range(1000)))
    shared = byteranges.SharedRanges(path, [{"offset": 5, "line": 2, "end": path.stat().st_size, "rows": 0}],
                                     chunk_rows=80, bytes_per_row=13, threads=2)
    with open(path, "rb") as f:
        sizes = [chunk.rows for chunk in iter(lambda: shared.read(0, f, "t.csv"), None)]
    assert sum(sizes) == 1000
    assert sizes[:8] == [80] * 8  # while 4 chunks or more are left: whole chunks
    assert all(later <= earlier for earlier, later in zip(sizes, sizes[1:]))  # then smaller and smaller,
    assert sizes[-2] == 10 and sizes[-1] <= 10  # down to an eighth of a chunk
