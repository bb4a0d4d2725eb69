"""Packs (agent.store.pack): what a pack holds, its name, its trailer, compression."""

from __future__ import annotations

import hashlib
import os

from agent.backend import Handle, Kind
from agent.backend.mem import MemBackend
from agent.store.index import FLAG_ZSTD
from agent.store.pack import MAGIC, Compressor, PackWriter, decode_blob, read_trailer


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
