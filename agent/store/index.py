"""The index: where each blob lives (pack, offset, stored length, raw length, flags).

Index files are append-only; each writer adds one file per batch of packs it wrote. A pack that no
index names (a crash between pack and index) is invisible and is removed by prune.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
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


_PACKED = struct.Struct("<IIIIB")  # global pack number, offset, stored length, raw length, flags


class Index:
    """All index files of a repository, loaded on first use (a no-change backup never needs it).

    In memory each blob costs its id and one 17-byte value (pack number into `_packs`, offset,
    lengths, flags): a long-running agent keeps the index of a 100k-blob repository in ~15 MB.
    """

    def __init__(self, directory: str, tmp_dir: str) -> None:
        self.directory = directory
        self.tmp_dir = tmp_dir
        self._blobs: Dict[bytes, bytes] | None = None
        self._packs: List[bytes] = []
        self._pack_numbers: Dict[bytes, int] = {}
        self._loaded: Set[str] = set()
        # runs of different jobs share one Repository (daemon lanes, `backup --all`)
        self._lock = threading.RLock()

    @property
    def files(self) -> List[str]:
        return sorted(self._loaded)

    def _table(self) -> Dict[bytes, bytes]:
        if self._blobs is None:
            self.refresh()
        assert self._blobs is not None
        return self._blobs

    def __len__(self) -> int:
        return len(self._table())

    def items(self) -> Iterator[Tuple[bytes, BlobLocation]]:
        packs = self._packs
        for blob_id, value in self._table().items():
            number, offset, length, raw_length, flags = _PACKED.unpack(value)
            yield blob_id, BlobLocation(packs[number], offset, length, raw_length, flags)

    @property
    def blobs(self) -> Dict[bytes, BlobLocation]:
        """Every blob's location, decoded (verify and prune walk them all)."""
        return dict(self.items())

    def drop(self) -> None:
        """Forget the loaded index (it is reloaded on next use): an idle agent need not hold it."""
        with self._lock:
            self._blobs, self._loaded, self._packs, self._pack_numbers = None, set(), [], {}

    @property
    def loaded(self) -> bool:
        return self._blobs is not None

    def reload(self) -> None:
        self._blobs = None
        self._loaded = set()
        self.refresh()

    def _pack_number(self, pack: bytes) -> int:
        number = self._pack_numbers.get(pack)
        if number is None:
            number = self._pack_numbers[pack] = len(self._packs)
            self._packs.append(pack)
        return number

    def _add(self, entries: Iterable[Tuple[bytes, int, int, int, int, int]], packs: List[bytes]) -> None:
        numbers = [self._pack_number(pack) for pack in packs]
        pack_value = _PACKED.pack
        assert self._blobs is not None
        self._blobs.update((blob_id, pack_value(numbers[local], offset, length, raw, flags))
                           for blob_id, local, offset, length, raw, flags in entries)

    def refresh(self) -> None:
        """Load index files written since the last look (by this or another process); start over if
        some disappeared (prune consolidated them)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        names = {name for name in os.listdir(self.directory) if not name.startswith(".")}
        if self._blobs is None or not self._loaded <= names:
            self._blobs, self._loaded, self._packs, self._pack_numbers = {}, set(), [], {}
        for name in sorted(names - self._loaded):
            with open(os.path.join(self.directory, name), "rb") as handle:
                data = handle.read()
            if not data.startswith(MAGIC):
                raise ValueError(f"index file {name} is not an index file")
            (count,) = struct.unpack_from("<I", data, len(MAGIC))
            start = len(MAGIC) + 4
            packs = [data[start + 32 * i: start + 32 * (i + 1)] for i in range(count)]
            body = memoryview(data)[start + 32 * count:]
            if len(body) % _ENTRY.size:
                raise ValueError(f"index file {name} is truncated")
            self._add(_ENTRY.iter_unpack(body), packs)
            self._loaded.add(name)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._table()

    def get(self, blob_id: bytes) -> BlobLocation | None:
        value = self._table().get(blob_id)
        if value is None:
            return None
        number, offset, length, raw_length, flags = _PACKED.unpack(value)
        return BlobLocation(self._packs[number], offset, length, raw_length, flags)

    def write(self, entries: List[Tuple[bytes, BlobLocation]]) -> str:
        """Persist a batch durably and make it visible to this process; returns the file name."""
        data = encode_index(entries)
        name = hashlib.sha256(data).hexdigest()
        atomic_write(os.path.join(self.directory, name), data, self.tmp_dir)
        with self._lock:
            if self._blobs is None:
                return name
            packs = sorted({loc.pack for _, loc in entries})
            local = {pack: number for number, pack in enumerate(packs)}
            self._add(((blob_id, local[loc.pack], loc.offset, loc.length, loc.raw_length, loc.flags)
                       for blob_id, loc in entries), packs)
            self._loaded.add(name)
            return name
