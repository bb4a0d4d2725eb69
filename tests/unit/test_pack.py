"""Packs (agent.store.pack): what a pack holds, its name, its trailer, compression."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import List, Optional, Tuple

from agent.backend import Handle, Kind
from agent.backend.mem import MemBackend
from agent.store.index import FLAG_ZSTD
from agent.store.pack import (
    MAGIC,
    SEALED_MAGIC,
    TRAILER_MAGIC,
    Compressor,
    PackWriter,
    decode_blob,
    read_trailer,
    read_trailer_range,
)


def test_a_pack_is_named_by_its_content_and_lists_its_blobs():
    backend = MemBackend()
    writer = PackWriter(backend)
    compressor = Compressor()
    blobs = [b"<Server/>" * 2000, os.urandom(3000), b""]
    for blob in blobs:
        stored, flags = compressor.compress(blob)
        writer.add(hashlib.sha256(blob).digest(), stored, len(blob), flags)
    assert len(writer) == 3
    locations = writer.finish()
    [info] = backend.list(Kind.DATA)
    data = backend.load(Handle(Kind.DATA, info.name))
    assert data.startswith(MAGIC) and hashlib.sha256(data).hexdigest() == info.name
    assert [blob_id for blob_id, _ in locations] == [hashlib.sha256(blob).digest() for blob in blobs]
    for (_, loc), blob in zip(locations, blobs):
        assert loc.pack.hex() == info.name and loc.raw_length == len(blob)
        assert bytes(decode_blob(data[loc.offset:loc.offset + loc.length], loc.flags, loc.raw_length)) == blob
    trailer = read_trailer(data)
    assert [(entry[0], entry[2], entry[3], entry[4]) for entry in trailer] == \
        [(blob_id, loc.offset, loc.length, loc.raw_length) for blob_id, loc in locations]


def test_compressible_data_is_compressed_and_the_rest_stored_raw():
    compressor = Compressor()
    text = b"INSERT INTO t VALUES (1, 'abc');\n" * 10000
    stored, flags = compressor.compress(text)
    assert flags == FLAG_ZSTD and len(stored) < len(text) / 20
    noise = os.urandom(300_000)
    stored, flags = compressor.compress(noise)
    assert flags == 0 and stored == noise
    stored, flags = compressor.compress(noise, probe=False)  # no probe: zstd tried, still not worth it
    assert flags == 0


def test_malformed_packs_have_no_trailer():
    assert read_trailer(b"") is None
    assert read_trailer(b"not a pack at all") is None
    assert read_trailer(MAGIC + b"\x00" * 4 + b"BAPT") is not None  # an empty pack is well formed
    assert read_trailer(MAGIC + b"\xff\xff\x00\x00BAPT") is None  # claims more entries than it holds
    assert read_trailer(MAGIC + b"\xff\xff\xff\xffBAPT") is None  # an unsigned count, not -1
    assert read_trailer(b"XXXXX" + b"\x00" * 4 + b"BAPT") is None  # not a pack's magic
    assert read_trailer(MAGIC + b"\x00" * 8) is None  # no trailer magic
    assert read_trailer(MAGIC + b"BAPT") is None  # too short to hold a count


def _pack(body: bytes, entries: List[Tuple[bytes, int, int, int, int]]) -> bytes:
    """A pack written by hand: MAGIC, `body`, a trailer of (id, flags, offset, stored, raw) entries."""
    trailer = b"".join(struct.pack("<32sBIII", *entry) for entry in entries)
    return MAGIC + body + trailer + struct.pack("<I", len(entries)) + TRAILER_MAGIC


def test_a_trailer_naming_bytes_outside_the_packs_body_is_refused():
    body = b"x" * 10
    ok = [(b"a" * 32, 0, 5, 4, 4), (b"b" * 32, 0, 9, 6, 6)]  # the last blob ends where the trailer starts
    assert read_trailer(_pack(body, ok)) == ok
    assert read_trailer(_pack(body, [(b"a" * 32, 0, 4, 2, 2)])) is None  # inside the magic
    assert read_trailer(_pack(body, [(b"a" * 32, 0, 9, 7, 7)])) is None  # into the trailer
    assert read_trailer(_pack(body, [(b"a" * 32, 0, 5, 10, 10)])) is not None
    assert read_trailer(_pack(b"", [])) == []
    assert read_trailer(MAGIC[:-1] + b"\x00" * 4 + TRAILER_MAGIC) is None  # one byte short of a pack
    count_only = MAGIC + struct.pack("<I", 1) + TRAILER_MAGIC  # one entry claimed, none there
    assert read_trailer(count_only) is None
    assert read_trailer(SEALED_MAGIC + b"\x00" * 40 + struct.pack("<I", 40) + TRAILER_MAGIC) is None  # no key


class _Loads:
    """`load(offset, length)` over a pack's bytes that keeps what was asked, and cuts short the read
    starting at `short_at` (if given) by one byte."""

    def __init__(self, data: bytes, short_at: Optional[int] = None) -> None:
        self.data, self.short_at = data, short_at
        self.reads: List[Tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        cut = 1 if self.short_at in (offset, -1) else 0
        return self.data[offset:offset + length - cut]


def test_a_trailer_is_read_from_the_packs_ends_and_a_long_one_in_a_second_read():
    body = os.urandom(300_000)
    few = [(bytes([n]) * 32, 0, 5 + n * 1000, 1000, 1000) for n in range(3)]
    many = [(n.to_bytes(32, "big"), 1, 5 + n * 100, 100, 120) for n in range(2000)]  # a 90 KB trailer
    for entries in (few, many):
        data = _pack(body, entries)
        load = _Loads(data)
        assert read_trailer_range(load, len(data)) == entries
        assert sum(length for _, length in load.reads) < len(data) / 2  # never the whole pack
        assert read_trailer_range(_Loads(data, short_at=-1), len(data)) is None  # every read short
    trailer_at = len(data) - 8 - 45 * len(many)
    assert read_trailer_range(_Loads(data, short_at=trailer_at), len(data)) is None  # the trailer's own read
    assert (trailer_at, len(data) - trailer_at) in load.reads
