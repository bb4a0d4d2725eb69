"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. A pack that no
index names (a crash between pack and index) is invisible and is removed by prune.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Tuple

from agent.store.fsutil import atomic_write

MAGIC = b"BAIX\x01"
_ENTRY = struct.Struct("<32sIIIIB")  # blob id, pack number, offset, stored length, raw length, flags

FLAG_ZSTD = 0x01
KIND_DATA = 0
KIND_TREE = 1


def kind_of(flags: int) -> int:
    return flags >> 4


@dataclass(frozen=True)
class BlobLocation:
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
        self.files: List[str] = []

    @property
    def blobs(self) -> Dict[bytes, BlobLocation]:
        if self._blobs is None:
            self.reload()
        assert self._blobs is not None
        return self._blobs

    def reload(self) -> None:
        blobs: Dict[bytes, BlobLocation] = {}
        self.files = sorted(name for name in os.listdir(self.directory) if not name.startswith("."))
        for name in self.files:
            with open(os.path.join(self.directory, name), "rb") as handle:
                blobs.update(decode_index(handle.read()))
        self._blobs = blobs

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
            self.files.append(name)
        return name
