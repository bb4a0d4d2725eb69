"""The dump stream a mysql drill feeds to its throwaway server (agent.drill.dumps): what it counts, and
the tail in which the drill looks for the dump's trailer, wherever the chunks cut it."""

from __future__ import annotations

import pytest

from agent.drill.dumps import _Stream
from agent.dumps.mysql import TRAILER
from agent.store.manifest import Entry


def _entry(repo, pieces, size=None) -> Entry:
    writer = repo.writer()
    ids = tuple(writer.save(piece)[0] for piece in pieces)
    writer.flush()
    total = sum(map(len, pieces))
    return Entry("db.sql", "file", 0o600, 0, 0, 0, total if size is None else size, ids)


@pytest.mark.parametrize("cuts", [
    (100_000, -10),         # the trailer split between the last two chunks
    (100_000, -40, -3),     # ... over three, the last chunk a few bytes
    (-300,),                # the whole trailer in a last chunk longer than the tail
    (),                     # one chunk
])
def test_the_tail_holds_the_last_bytes_however_the_chunks_cut_them(repo, cuts):
    dump = b"INSERT INTO t VALUES " + b"(1),(2)," * 20_000 + b"(3);\n" + TRAILER + b" on 2026-11-30 21:00:00\n"
    points = sorted(cut % len(dump) for cut in cuts)
    pieces = [dump[start:end] for start, end in zip([0, *points], [*points, len(dump)])]
    stream = _Stream(repo, _entry(repo, pieces))
    assert b"".join(stream) == dump
    assert stream.tail == dump[-_Stream.TAIL:] and TRAILER in stream.tail
    assert stream.length == len(dump) and stream.length_problem() is None


def test_a_dump_cut_before_its_trailer_and_a_wrong_length_are_seen(repo):
    stream = _Stream(repo, _entry(repo, [b"CREATE TABLE t (id INT);\n" * 100, b"INSERT INTO t VALUES (1);\n"],
                                  size=5000))
    assert b"".join(stream).endswith(b"(1);\n")
    assert TRAILER not in stream.tail and len(stream.tail) == _Stream.TAIL
    assert stream.length_problem() == f"the dump restores {stream.length} bytes, the manifest says 5000"
