"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. An index file is
named by the SHA-256 of its content, checked when it is loaded: one that is empty, truncated, altered or
malformed (or, encrypted, does not authenticate) is set aside, named in `unreadable`. Every pack that no
intact index file names (its index file was damaged or lost, a crash came between pack and index, or
another writer has not written its index yet) is then indexed in memory from the pack's own blob list
(its trailer, agent.store.pack), so backups, restores and verify keep finding its blobs; prune writes
them into the index it writes, and removes the damaged files (restic's `repair index` rebuilds the same
way, from pack headers, but only when asked).

Copies of blobs that `verify --read-data` found damaged (damage records, see damage.py) are left out of
every lookup: a damaged blob is never deduplicated against, so the next backup that reads its content
stores a good copy, which lookups then find.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, KeysView, List, NamedTuple, Optional, Set, Tuple

from agent.backend.base import Backend, BackendError, FileInfo, Handle, Kind, NotFound
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


PackReader = Callable[[bytes, int], List[Tuple[bytes, "BlobLocation"]]]


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

    def __init__(self, backend: Backend, read_pack: Optional[PackReader] = None) -> None:
        """`read_pack(pack id, size in bytes)`: the blobs a pack's own trailer lists, raising ValueError
        for a malformed pack (Repository.pack_blobs); without it (tests of the index alone), packs no
        index file names stay invisible."""
        self.backend = backend
        self._read_pack = read_pack
        self._damaged: Dict[bytes, FrozenSet[bytes]] = {}  # blob id -> packs holding a damaged copy
        self._damage_files: Set[str] = set()
        self.unreadable: Dict[str, str] = {}  # index file name -> why it could not be loaded
        self.rebuilt: Set[bytes] = set()  # packs no intact index file names, indexed from their trailers
        self.unlisted: Dict[bytes, str] = {}  # such packs whose trailer cannot be read -> why
        self._named: Set[bytes] = set()  # packs some loaded segment names
        self._packs_listed = False
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
            self._named, self.rebuilt, self.unlisted, self._packs_listed = set(), set(), {}, False
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
        """Load one index file; raises ValueError naming it if it is not intact."""
        where = self.backend.describe(Handle(Kind.INDEX, name))
        if not data:
            raise ValueError(f"{where}: empty index file")
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
            raise ValueError(f"{where}: not an index file")
        (count,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if start + 32 * count > len(data) or (len(data) - start - 32 * count) % _ENTRY.size:
            raise ValueError(f"{where}: truncated index file")
        if hashlib.sha256(data).hexdigest() != name:  # a flipped byte: a wrong location or a wrong id
            raise ValueError(f"{where}: content does not match its name (damaged)")
        self._add_segment(data[start + 32 * count:], [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)])
        self._loaded.add(name)

    def _add_segment(self, body: bytes, packs: List[bytes]) -> None:
        size = _ENTRY.size
        rows = len(body) // size
        if self._blobs is not None:
            self._blobs.update(zip([body[i:i + 32] for i in range(0, len(body), size)],
                                   range(self._rows, self._rows + rows)))
        self._segments.append((self._rows, body, packs))
        self._bases.append(self._rows)
        self._rows += rows
        self._named.update(packs)
        if self._damaged and self._blobs is not None:
            self._skip_damaged(self._damaged)

    def _index_unnamed_packs(self, packs: Optional[List[FileInfo]] = None) -> None:
        """Index, from their own trailers, the packs no loaded segment names (see the module docstring);
        `packs`: the listing of data objects when it was just made."""
        if self._read_pack is None:
            return
        self._packs_listed = True
        for info in self.backend.list(Kind.DATA) if packs is None else packs:
            try:
                pack = bytes.fromhex(info.name)
            except ValueError:  # not a pack's name: nothing of the repository's
                continue
            if len(pack) != 32 or pack in self._named or pack in self.unlisted:
                continue
            try:
                entries = self._read_pack(pack, info.size)
            except NotFound:  # removed since it was listed
                continue
            except (ValueError, BackendError, OSError) as exc:
                self.unlisted[pack] = str(exc)
                continue
            self.rebuilt.add(pack)
            # a copy an intact file names stays the one found: the other is garbage, weighed as such by prune
            self._add_segment(b"".join(_ENTRY.pack(blob_id, 0, loc.offset, loc.length, loc.raw_length, loc.flags)
                                       for blob_id, loc in entries if self._row(blob_id) is None), [pack])

    def refresh(self) -> bool:
        """Load index files and damage records written since the last look (by this or another
        process); start over if some disappeared (prune consolidated them): returns whether it did."""
        with self._lock:
            # packs are listed on a first load and when a file turns out unreadable, not on every look
            look_at_packs = not self._packs_listed
            listed = _listings(self.backend, (Kind.INDEX, Kind.DAMAGE) + ((Kind.DATA,) if look_at_packs else ()))
            names = {info.name for info in listed[Kind.INDEX]}
            damage = {info.name for info in listed[Kind.DAMAGE]}
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
            unreadable = {}
            for name in sorted(names - self._loaded):
                try:
                    self._add_file(name, self.backend.load(Handle(Kind.INDEX, name)))
                except NotFound:  # removed since it was listed: the next look starts over
                    continue
                except (ValueError, BackendError, OSError) as exc:
                    # one bad index file must not stop every backup: its packs are indexed from their
                    # own trailers below, verify names it and prune replaces it
                    unreadable[name] = str(exc)
            newly_unreadable = set(unreadable) - set(self.unreadable)
            self.unreadable = unreadable
            if look_at_packs or newly_unreadable:
                self._index_unnamed_packs(listed.get(Kind.DATA))
            return reset

    def problems(self) -> List[str]:
        """What is wrong with the loaded index, one message per damaged index file or pack trailer, each
        naming the object (empty: nothing, or not loaded)."""
        with self._lock:
            found = [f"{reason}; the packs no intact index file names were indexed from their own blob "
                     "lists instead, and `prune` rewrites the index" for _, reason in sorted(self.unreadable.items())]
            found.extend(f"{self.backend.describe(Handle(Kind.DATA, pack.hex()))}: named by no index file, and "
                         f"its own blob list cannot be read ({reason})"
                         for pack, reason in sorted(self.unlisted.items()))
            return found

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


def _listings(backend: Backend, kinds: Tuple[Kind, ...]) -> Dict[Kind, List[FileInfo]]:
    """The listings of `kinds`, asked for at once: on object storage each is a round trip."""
    with ThreadPoolExecutor(len(kinds), thread_name_prefix="index-listing") as pool:
        asked = {kind: pool.submit(backend.list, kind) for kind in kinds}
        return {kind: answer.result() for kind, answer in asked.items()}
