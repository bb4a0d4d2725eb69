"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. A pack that no
index names (a crash between pack and index) is invisible and is removed by prune.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Dict, Iterable, Iterator, List, NamedTuple, Set, Tuple

from agent.store.fsutil import atomic_write

MAGIC = b"BAIX\x01"
_ENTRY = struct.Struct("<32sIIIIB")  # blob id, pack number, offset, stored length, raw length, flags

FLAG_ZSTD = 0x01
KIND_DATA = 0
KIND_TREE = 1


def kind_of(flags: int) -> int:
    return flags >> 4


class BlobLocation(NamedTuple):
    pack: bytes
    offset: int
    length: int
    raw_length: int
    flags: int


def encode_index(entries: Iterable[Tuple[bytes, BlobLocation]]) -> bytes:
    packs: Dict[bytes, int] = {}
    body: List[bytes] = []
    for blob_id, loc in entries:
        number = packs.setdefault(loc.pack, len(packs))
        body.append(_ENTRY.pack(blob_id, number, loc.offset, loc.length, loc.raw_length, loc.flags))
    return MAGIC + struct.pack("<I", len(packs)) + b"".join(packs) + b"".join(body)


def decode_index_fast(data: bytes) -> Tuple[List[bytes], List[BlobLocation]]:
    """Blob ids and locations of an index file, for dict(zip(...)): the per-entry work stays in C."""
    if not data.startswith(MAGIC):
        raise ValueError("not an index file")
    (count,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    packs = [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)]
    body = data[start + 32 * count:]
    if len(body) % _ENTRY.size:
        raise ValueError("truncated index file")
    rows = list(_ENTRY.iter_unpack(body))
    ids = [row[0] for row in rows]
    locations = [BlobLocation(packs[row[1]], row[2], row[3], row[4], row[5]) for row in rows]
    return ids, locations


def decode_index(data: bytes) -> Iterator[Tuple[bytes, BlobLocation]]:
    if not data.startswith(MAGIC):
        raise ValueError("not an index file")
    (count,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    packs = [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)]
    body = memoryview(data)[start + 32 * count:]
    if len(body) % _ENTRY.size:
        raise ValueError("truncated index file")
    for blob_id, number, offset, length, raw_length, flags in _ENTRY.iter_unpack(body):
        yield blob_id, BlobLocation(packs[number], offset, length, raw_length, flags)


class Index:
    """All index files of a repository, loaded on first use (a no-change backup never needs it)."""

    def __init__(self, directory: str, tmp_dir: str) -> None:
        self.directory = directory
        self.tmp_dir = tmp_dir
        self._blobs: Dict[bytes, BlobLocation] | None = None
        self._loaded: Set[str] = set()

    @property
    def files(self) -> List[str]:
        return sorted(self._loaded)

    @property
    def blobs(self) -> Dict[bytes, BlobLocation]:
        if self._blobs is None:
            self.refresh()
        assert self._blobs is not None
        return self._blobs

    def reload(self) -> None:
        self._blobs = None
        self._loaded = set()
        self.refresh()

    def refresh(self) -> None:
        """Load index files written since the last look (by this or another process); start over if
        some disappeared (prune consolidated them)."""
        names = {name for name in os.listdir(self.directory) if not name.startswith(".")}
        if self._blobs is None or not self._loaded <= names:
            self._blobs, self._loaded = {}, set()
        for name in sorted(names - self._loaded):
            with open(os.path.join(self.directory, name), "rb") as handle:
                ids, locations = decode_index_fast(handle.read())
            self._blobs.update(zip(ids, locations))
            self._loaded.add(name)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self.blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self.blobs.get(blob_id)

    def write(self, entries: List[Tuple[bytes, BlobLocation]]) -> str:
        """Persist a batch durably and make it visible to this process; returns the file name."""
        data = encode_index(entries)
        name = hashlib.sha256(data).hexdigest()
        atomic_write(os.path.join(self.directory, name), data, self.tmp_dir)
        if self._blobs is not None:
            self._blobs.update(entries)
            self._loaded.add(name)
        return name
