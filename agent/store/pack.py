"""Pack files: many compressed blobs in one file, so that 100k small files do not mean 100k fsyncs.

Layout: MAGIC, the stored blobs back to back, then a trailer listing them (id, flags, offset, lengths),
its entry count and TRAILER_MAGIC. The index is the fast path; the trailer lets a damaged index be
rebuilt from the packs alone (agent.store.index re-indexes, in memory, every pack no intact index file
names). A pack's name is the SHA-256 of its content.

A pack of an encrypted repository begins with SEALED_MAGIC; its blobs are sealed by the writer
(agent.crypt.seal) and its trailer is sealed under the metadata key, followed by the sealed trailer's
length (not the entry count) and TRAILER_MAGIC, so blob lengths and ids are not readable in storage.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Set, Tuple

import zstandard

from agent.backend.base import Backend, BackendError, Handle, Kind
from agent.store.index import FLAG_ZSTD, KIND_TREE, BlobLocation, kind_of

if TYPE_CHECKING:
    from agent.crypt.seal import RepositoryCipher

MAGIC = b"BAPK\x01"
SEALED_MAGIC = b"BAPK\x02"
_TRAILER_AAD = b"pack trailer"
TRAILER_MAGIC = b"BAPT"
_TRAILER_ENTRY = struct.Struct("<32sBIII")
TARGET_SIZE = 16 * 1024 * 1024
_SAMPLE = 64 * 1024
KEY_REF = 32  # a sealed data blob begins with the name of its data key (agent.crypt.seal)


class Compressor:
    """zstd, skipped for data that does not compress (jars, archives) so those cost no CPU twice."""

    def __init__(self, level: int = 3) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._probe = zstandard.ZstdCompressor(level=1)

    def compress(self, data: bytes | memoryview, probe: bool = True) -> Tuple[bytes | memoryview, int]:
        """probe=False: the caller knows the data compresses (database dumps are text); saves the probe."""
        if probe and len(data) > 2 * _SAMPLE and len(self._probe.compress(data[:_SAMPLE])) > 0.95 * _SAMPLE:
            return data, 0
        packed = self._zstd.compress(data)
        if len(packed) >= 0.97 * len(data):
            return data, 0
        return packed, FLAG_ZSTD


_local = threading.local()  # zstd (de)compressor objects must not be shared between threads


def decode_blob(stored: bytes | memoryview, flags: int, raw_length: int) -> bytes | memoryview:
    if flags & FLAG_ZSTD:
        decompressor = getattr(_local, "decompressor", None)
        if decompressor is None:
            decompressor = _local.decompressor = zstandard.ZstdDecompressor()
        return decompressor.decompress(stored, max_output_size=raw_length)
    return stored


class PackWriter:
    """Accumulates blobs for one pack and writes it durably when full or flushed."""

    def __init__(self, backend: Backend, cipher: Optional[RepositoryCipher] = None) -> None:
        self.backend = backend
        self._cipher = cipher  # an encrypted repository's: the trailer is sealed (blobs come sealed)
        # One growing buffer, not a list of blobs: zstd's output objects keep their worst-case allocation,
        # so holding them would cost ~2.5x the pack size in memory.
        self._buffer = bytearray(MAGIC if cipher is None else SEALED_MAGIC)
        self._trailer = bytearray()  # the blob list, packed as it grows: 1 object, not 5 per blob
        self._count = 0
        self._key_refs: Set[bytes] = set()  # encrypted: the data keys its blobs name (agent.crypt.seal)

    @property
    def size(self) -> int:
        return len(self._buffer)

    def __len__(self) -> int:
        return self._count

    def add(self, blob_id: bytes, stored: bytes | memoryview, raw_length: int, flags: int) -> None:
        self._trailer += _TRAILER_ENTRY.pack(blob_id, flags, len(self._buffer), len(stored), raw_length)
        self._count += 1
        self._buffer += stored
        if self._cipher is not None and kind_of(flags) != KIND_TREE:
            self._key_refs.add(bytes(stored[:KEY_REF]))

    def finish(self) -> List[Tuple[bytes, BlobLocation]]:
        """Save the pack durably through the backend; returns its blobs' locations."""
        if self._cipher is None:
            self._buffer += self._trailer
            self._buffer += struct.pack("<I", self._count) + TRAILER_MAGIC
        else:
            sealed = self._cipher.seal_meta(bytes(self._trailer), _TRAILER_AAD)
            self._buffer += sealed
            self._buffer += struct.pack("<I", len(sealed)) + TRAILER_MAGIC
            self._cipher.wait_keys_saved(self._key_refs)  # no pack names a key that is not stored
        pack_id = hashlib.sha256(self._buffer).digest()
        self.backend.save(Handle(Kind.DATA, pack_id.hex()), [self._buffer])
        return [(blob_id, BlobLocation(pack_id, offset, length, raw, flags))
                for blob_id, flags, offset, length, raw in _TRAILER_ENTRY.iter_unpack(self._trailer)]


_TAIL = 64 * 1024  # one read holds the trailer of a pack of up to ~1,500 blobs


def read_trailer_range(load: Callable[[int, int], bytes], size: int,
                       cipher: Optional[RepositoryCipher] = None) -> Optional[List[Tuple[bytes, int, int, int, int]]]:
    """The blob list (id, flags, offset, stored length, raw length) of a pack of `size` bytes, read
    through `load(offset, length)`: its first bytes and its tail (one more read for a long trailer), not
    the whole pack. None if the pack is malformed, lists a blob outside its body, or (sealed) does not
    authenticate or cannot be read without `cipher`."""
    if size < len(MAGIC) + 8:
        return None
    tail_at = max(0, size - _TAIL)
    tail = load(tail_at, size - tail_at)
    head = tail[:len(MAGIC)] if tail_at == 0 else load(0, len(MAGIC))
    if len(tail) != size - tail_at or not tail.endswith(TRAILER_MAGIC):
        return None
    sealed = head == SEALED_MAGIC
    if not sealed and head != MAGIC:
        return None
    (number,) = struct.unpack_from("<I", tail, len(tail) - 8)  # sealed: the trailer's length, else its entries
    start = size - 8 - (number if sealed else number * _TRAILER_ENTRY.size)
    if start < len(MAGIC):
        return None
    if start < tail_at:
        tail, tail_at = load(start, size - start), start
        if len(tail) != size - start:
            return None
    trailer = tail[start - tail_at:len(tail) - 8]
    if sealed:
        if cipher is None:
            return None
        try:
            trailer = cipher.open_meta(trailer, _TRAILER_AAD, "pack trailer")
        except ValueError:
            return None
        if len(trailer) % _TRAILER_ENTRY.size:
            return None
    entries = list(_TRAILER_ENTRY.iter_unpack(trailer))
    if any(offset < len(MAGIC) or offset + length > start for _, _, offset, length, _ in entries):
        return None
    return entries


def read_trailer(data: bytes,
                 cipher: Optional[RepositoryCipher] = None) -> Optional[List[Tuple[bytes, int, int, int, int]]]:
    """The blob list of a whole pack's bytes (see read_trailer_range)."""
    return read_trailer_range(lambda offset, length: data[offset:offset + length], len(data), cipher)


def data_key_names(backend: Backend, blobs: Iterable[Tuple[bytes, BlobLocation]]) -> Optional[Set[str]]:
    """The data keys (PACK_KEYS object names) that the sealed data blobs `blobs` name, read from the head
    of each stored blob (agent.crypt.seal); None when one cannot be read (a missing or short pack): which
    keys are unused cannot be told then."""
    names: Set[str] = set()
    for _, loc in blobs:
        if kind_of(loc.flags) == KIND_TREE:  # sealed under the metadata key: names no data key
            continue
        try:
            head = backend.load(Handle(Kind.DATA, loc.pack.hex()), KEY_REF, loc.offset)
        except BackendError:
            return None
        if len(head) != KEY_REF:
            return None
        names.add(head.hex())
    return names
