"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. A pack that no
index names (a crash between pack and index) is invisible and is removed by prune.

Copies of blobs that `verify --read-data` found damaged (damage records, see damage.py) are left out of
every lookup: a damaged blob is never deduplicated against, so the next backup that reads its content
stores a good copy, which lookups then find.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import threading
from typing import Dict, FrozenSet, Iterable, Iterator, KeysView, List, NamedTuple, Optional, Set, Tuple

from agent.backend.base import Backend, Handle, Kind
from agent.store.damage import decode_damage

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

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._damaged: Dict[bytes, FrozenSet[bytes]] = {}  # blob id -> packs holding a damaged copy
        self._damage_files: Set[str] = set()
        self.unreadable: Dict[str, str] = {}  # index file name -> why it could not be loaded
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
        """Names of the index files loaded."""
        return sorted(self._loaded)

    @property
    def damage_files(self) -> List[str]:
        """Names of the damage records loaded."""
        return sorted(self._damage_files)

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
                self._skip_damaged(self._damaged)
            return self._blobs

    def _skip_damaged(self, blob_ids: Iterable[bytes]) -> None:
        """Point the dict at a good copy of each damaged blob, or drop the blob."""
        blobs = self._blobs
        if blobs is None:
            return
        for blob_id in blob_ids:
            row = self._good_row(blob_id)
            if row is None:
                blobs.pop(blob_id, None)
            else:
                blobs[blob_id] = row

    def _good_row(self, blob_id: bytes) -> Optional[int]:
        """The last row naming `blob_id` in a pack not recorded as holding a damaged copy."""
        bad = self._damaged.get(blob_id, frozenset())
        size = _ENTRY.size
        for first, body, packs in reversed(self._segments):
            at = body.rfind(blob_id)
            while at != -1:
                if not at % size:
                    (local,) = struct.unpack_from("<I", body, at + 32)
                    if packs[local] not in bad:
                        return first + at // size
                at = body.rfind(blob_id, 0, at)
        return None

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
        if blob_id in self._damaged:
            return self._good_row(blob_id)
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
            self._damaged, self._damage_files = {}, set()
            self._scans_left = _SCANS_BEFORE_DICT

    def damaged(self) -> Dict[bytes, FrozenSet[bytes]]:
        """Blob id -> the packs holding a copy recorded as damaged."""
        with self._lock:
            if not self._listed:
                self.refresh()
            return dict(self._damaged)

    def unhealed(self) -> FrozenSet[bytes]:
        """Ids of blobs recorded as damaged that have no good copy yet."""
        return frozenset(blob_id for blob_id in self.damaged() if blob_id not in self)

    @property
    def loaded(self) -> bool:
        return self._listed

    def reload(self) -> None:
        self.drop()
        self.refresh()

    def _add_file(self, name: str, data: bytes) -> None:
        if not data.startswith(MAGIC):
            raise ValueError(f"{self.backend.describe(Handle(Kind.INDEX, name))}: not an index file")
        (count,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        packs = [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)]
        body = data[start + 32 * count:]
        size = _ENTRY.size
        if len(body) % size:
            raise ValueError(f"{self.backend.describe(Handle(Kind.INDEX, name))}: truncated index file")
        rows = len(body) // size
        if self._blobs is not None:
            self._blobs.update(zip([body[i:i + 32] for i in range(0, len(body), size)],
                                   range(self._rows, self._rows + rows)))
        self._segments.append((self._rows, body, packs))
        self._bases.append(self._rows)
        self._rows += rows
        self._loaded.add(name)
        if self._damaged and self._blobs is not None:
            self._skip_damaged(self._damaged)

    def refresh(self) -> bool:
        """Load index files and damage records written since the last look (by this or another
        process); start over if some disappeared (prune consolidated them): returns whether it did."""
        with self._lock:
            names = {info.name for info in self.backend.list(Kind.INDEX)}
            damage = {info.name for info in self.backend.list(Kind.DAMAGE)}
            reset = not (self._loaded <= names and self._damage_files <= damage)
            if reset:
                self.drop()
            self._listed = True
            new_damage = sorted(damage - self._damage_files)
            if new_damage:
                found: Dict[bytes, Set[bytes]] = {key: set(packs) for key, packs in self._damaged.items()}
                for name in new_damage:
                    try:
                        pairs = decode_damage(self.backend.load(Handle(Kind.DAMAGE, name)))
                    except ValueError:  # a damaged record of damage: verify names it; backups go on
                        continue
                    for blob_id, pack in pairs:
                        found.setdefault(blob_id, set()).add(pack)
                self._damaged = {key: frozenset(packs) for key, packs in found.items()}
                self._damage_files |= set(new_damage)
                self._skip_damaged(self._damaged)
            self.unreadable = {}
            for name in sorted(names - self._loaded):
                try:
                    self._add_file(name, self.backend.load(Handle(Kind.INDEX, name)))
                except (ValueError, struct.error) as exc:
                    # one bad index file must not stop every backup: its blobs look absent (a backup
                    # stores them again), verify names it and prune refuses to delete anything
                    self.unreadable[name] = str(exc)
            return reset

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
        self.backend.save(Handle(Kind.INDEX, name), [data])
        with self._lock:
            if self._listed and name not in self._loaded:
                self._add_file(name, data)
        return name
