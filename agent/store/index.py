"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. A pack that no
index names (a crash between pack and index) is invisible and is removed by prune.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
import threading
from typing import Dict, Iterable, Iterator, KeysView, List, NamedTuple, Set, Tuple

from agent.durable import atomic_write

MAGIC = b"BAIX\x01"
_ENTRY = struct.Struct("<32sIIIIB")  # blob id, pack number, offset, stored length, raw length, flags

FLAG_ZSTD = 0x01
KIND_DATA = 0
KIND_TREE = 1

# lookups answered by scanning the raw index before the dict is built (see Index)
_SCANS_BEFORE_DICT = 16


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
    """All index files of a repository, loaded on first use (a no-change backup never needs it).

    Loading keeps each index file's bytes as they are; a location is decoded only when asked for. The
    blob id -> row dict is built (C-level dict(zip(...)), a few tens of milliseconds for 100k blobs) only
    once more than a handful of ids were asked for: a backup that changed one file asks about a dozen
    ids, and scanning the raw bytes for each costs about 1/70 of building the dict.
    """

    def __init__(self, directory: str, tmp_dir: str) -> None:
        self.directory = directory
        self.tmp_dir = tmp_dir
        self._listed = False
        self._blobs: Dict[bytes, int] | None = None
        self._segments: List[Tuple[int, bytes, List[bytes]]] = []  # (first row, entries, pack ids)
        self._bases: List[int] = []
        self._rows = 0
        self._loaded: Set[str] = set()
        self._scans_left = _SCANS_BEFORE_DICT
        # runs of different jobs share one Repository (daemon lanes, `backup --all`)
        self._lock = threading.RLock()

    @property
    def files(self) -> List[str]:
        return sorted(self._loaded)

    def _table(self) -> Dict[bytes, int]:
        with self._lock:
            if not self._listed:
                self.refresh()
            if self._blobs is None:
                blobs: Dict[bytes, int] = {}
                for first, body, _ in self._segments:
                    blobs.update(zip([body[i:i + 32] for i in range(0, len(body), _ENTRY.size)],
                                     range(first, first + len(body) // _ENTRY.size)))
                self._blobs = blobs
            return self._blobs

    def _row(self, blob_id: bytes) -> int | None:
        blobs = self._blobs
        if blobs is None:
            with self._lock:
                if not self._listed:
                    self.refresh()
                if self._blobs is None and self._scans_left > 0:
                    self._scans_left -= 1
                    return self._scan(blob_id)
                blobs = self._table()
        return blobs.get(blob_id)

    def _scan(self, blob_id: bytes) -> int | None:
        size = _ENTRY.size
        for first, body, _ in reversed(self._segments):  # the dict's answer: the last file naming it
            at = body.find(blob_id)
            while at != -1 and at % size:  # matched across entry boundaries, not an id field
                at = body.find(blob_id, at + 1)
            if at != -1:
                return first + at // size
        return None

    def __len__(self) -> int:
        return len(self._table())

    def _location(self, row: int) -> BlobLocation:
        segment = self._segments[bisect.bisect_right(self._bases, row) - 1]
        _, local, offset, length, raw_length, flags = _ENTRY.unpack_from(segment[1], (row - segment[0]) * _ENTRY.size)
        return BlobLocation(segment[2][local], offset, length, raw_length, flags)

    def items(self) -> Iterator[Tuple[bytes, BlobLocation]]:
        for blob_id, row in list(self._table().items()):
            yield blob_id, self._location(row)

    @property
    def blobs(self) -> Dict[bytes, BlobLocation]:
        """Every blob's location, decoded (verify and prune walk them all)."""
        return dict(self.items())

    def drop(self) -> None:
        """Forget the loaded index (it is reloaded on next use): an idle agent need not hold it."""
        with self._lock:
            self._listed, self._blobs, self._loaded, self._segments, self._bases, self._rows = \
                False, None, set(), [], [], 0
            self._scans_left = _SCANS_BEFORE_DICT

    @property
    def loaded(self) -> bool:
        return self._listed

    def reload(self) -> None:
        self.drop()
        self.refresh()

    def _add_file(self, name: str, data: bytes) -> None:
        if not data.startswith(MAGIC):
            raise ValueError(f"index file {name} is not an index file")
        (count,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        packs = [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)]
        body = data[start + 32 * count:]
        size = _ENTRY.size
        if len(body) % size:
            raise ValueError(f"index file {name} is truncated")
        rows = len(body) // size
        if self._blobs is not None:
            self._blobs.update(zip([body[i:i + 32] for i in range(0, len(body), size)],
                                   range(self._rows, self._rows + rows)))
        self._segments.append((self._rows, body, packs))
        self._bases.append(self._rows)
        self._rows += rows
        self._loaded.add(name)

    def refresh(self) -> None:
        """Load index files written since the last look (by this or another process); start over if
        some disappeared (prune consolidated them)."""
        with self._lock:
            names = {name for name in os.listdir(self.directory) if not name.startswith(".")}
            if not self._loaded <= names:
                self.drop()
            self._listed = True
            for name in sorted(names - self._loaded):
                with open(os.path.join(self.directory, name), "rb") as handle:
                    self._add_file(name, handle.read())

    def __contains__(self, blob_id: bytes) -> bool:
        blobs = self._blobs
        if blobs is not None:
            return blob_id in blobs
        return self._row(blob_id) is not None

    def ids(self) -> KeysView[bytes]:
        """Every blob id, as a live view: set operations against it run in C."""
        return self._table().keys()

    def get(self, blob_id: bytes) -> BlobLocation | None:
        row = self._row(blob_id)
        return None if row is None else self._location(row)

    def write(self, entries: List[Tuple[bytes, BlobLocation]]) -> str:
        """Persist a batch durably and make it visible to this process; returns the file name."""
        data = encode_index(entries)
        name = hashlib.sha256(data).hexdigest()
        atomic_write(os.path.join(self.directory, name), data, self.tmp_dir)
        with self._lock:
            if self._listed and name not in self._loaded:
                self._add_file(name, data)
        return name
