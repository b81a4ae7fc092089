"""The CSV reader: the block fast path and the record reader must see the same records."""

import io

import pytest
from hypothesis import given, settings, strategies as st

from operations.contrib.demo import csvio

plain_line = st.from_regex(r"[0-9a-z,. @-]{1,30}", fullmatch=True)
quoted_line = st.builds(lambda a, b: f'{a},"{b}\nwith a newline, and a comma"', plain_line, plain_line)
line = st.one_of(plain_line, plain_line, quoted_line, st.just(""))


def read_all(data, chunk_rows, blocks):
    """(line, record) pairs and the chunk boundaries, reading ``data`` chunk by chunk."""
    f, line, seen, offsets = io.BytesIO(data), 2, [], []
    while True:
        chunk = csvio.read_chunk(f, line, chunk_rows, "t.csv", blocks=blocks)
        if not chunk.rows:
            return seen, offsets
        assert chunk.rows <= chunk_rows
        if chunk.blocks is not None:
            records = [r + b"\n" for r in b"".join(chunk.blocks).split(b"\n")[:-1]]
        else:
            records = [r.replace(b"\r\n", b"\n") for r in chunk.records]
        seen += [(chunk.line_of(i), record) for i, record in enumerate(records)]
        offsets.append(chunk.next_offset)
        line = chunk.next_line


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(line, min_size=1, max_size=40), crlf=st.booleans(), final_newline=st.booleans(),
       chunk_rows=st.integers(1, 7), block=st.integers(8, 64))
def test_blocks_and_records_read_the_same_records(lines, crlf, final_newline, chunk_rows, block):
    with pytest.MonkeyPatch.context() as patch:  # tiny blocks: every boundary case
        patch.setattr(csvio, "BLOCK_BYTES", block)
        check_same_records(lines, crlf, final_newline, chunk_rows)


def check_same_records(lines, crlf, final_newline, chunk_rows):
    ending = "\r\n" if crlf else "\n"
    text = ending.join(lines) + (ending if final_newline else "")
    data = text.encode()
    by_records, _ = read_all(data, chunk_rows, blocks=False)
    by_blocks, offsets = read_all(data, chunk_rows, blocks=True)
    assert by_blocks == by_records
    if by_records:
        assert data[offsets[-1]:].strip() == b""  # nothing but blank lines after the last chunk


def test_a_plain_file_is_read_in_blocks_with_exact_line_numbers():
    data = b"".join(b"%d,x\n" % i for i in range(10))
    f = io.BytesIO(data)
    chunk = csvio.read_chunk(f, 2, 4, "t.csv", blocks=True)
    assert chunk.blocks is not None and chunk.rows == 4 and chunk.next_line == 6
    assert chunk.line_of(3) == 5 and f.tell() == chunk.next_offset == len(b"0,x\n1,x\n2,x\n3,x\n")


@pytest.mark.parametrize("data", [b'1,"a\nb"\n2,c\n', b"1,a\n\n2,b\n", b"1,a\r2,b\n"])
def test_anything_but_plain_records_goes_to_the_record_reader(data):
    chunk = csvio.read_chunk(io.BytesIO(data), 2, 10, "t.csv", blocks=True)
    assert chunk.blocks is None and chunk.records is not None


def write_file(tmp_path, body):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,x\n" + body)
    return path


def all_chunks(path, chunk_rows, **options):
    return [(chunk.first_line if chunk.blocks is not None else chunk.lines, chunk.rows, chunk.payload, state)
            for chunk, state in csvio.chunks(None, path, ("id", "x"), "t.csv", chunk_rows, blocks=True, **options)]


@pytest.mark.parametrize("chunk_rows", [1, 3, 10, 100])
def test_prefetch_reads_the_same_chunks_and_cursors(tmp_path, chunk_rows):
    path = write_file(tmp_path, b"".join(b"%d,x\n" % i for i in range(25)) + b'25,"a\nb"\n26,y')

    def prepare(chunk):
        return chunk.rows * 10

    plain = all_chunks(path, chunk_rows, prepare=prepare)
    assert all_chunks(path, chunk_rows, prepare=prepare, prefetch=True) == plain
    assert plain[-1][3]["rows"] == 27
    assert [payload for _, _, payload, _ in plain] == [rows * 10 for _, rows, _, _ in plain]


def test_prefetch_raises_a_bad_line_at_the_same_chunk(tmp_path):
    path = write_file(tmp_path, b"1,a\n2,b\n3,c\n4," + b"N" * csvio.MAX_LINE_BYTES + b"\n5,e\n")
    seen = []
    with pytest.raises(csvio.CsvFileError, match="line 5: the line is longer"):
        for chunk, state in csvio.chunks(None, path, ("id", "x"), "t.csv", 2, blocks=True, prefetch=True):
            seen.append(state["rows"])
    assert seen == [2]  # the chunk before the bad line came first, whole


def test_closing_a_prefetching_reader_stops_its_thread(tmp_path):
    import threading
    from contextlib import closing

    path = write_file(tmp_path, b"".join(b"%d,x\n" % i for i in range(100)))
    with closing(csvio.chunks(None, path, ("id", "x"), "t.csv", 10, blocks=True, prefetch=True)) as reader:
        next(reader)
        assert any(thread.name == "csv-reader" for thread in threading.enumerate())
    assert not any(thread.name == "csv-reader" for thread in threading.enumerate())


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=60), data=st.data())
def test_nth_newline_finds_the_same_newline_as_counting_one_by_one(lengths, data):
    raw = b"".join(b"x" * length + b"\n" for length in lengths)
    n = data.draw(st.integers(1, len(lengths)))
    end = -1
    for _ in range(n):
        end = raw.index(b"\n", end + 1)
    assert csvio.nth_newline(raw, n, len(lengths)) == end
