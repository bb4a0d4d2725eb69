"""Pack files: many compressed blobs in one file, so that 100k small files do not mean 100k fsyncs.

Layout: MAGIC, the stored blobs back to back, then a trailer listing them (id, flags, offset, lengths),
its entry count and TRAILER_MAGIC. The index is the fast path; the trailer lets a damaged index be
rebuilt from the packs alone. A pack's name is the SHA-256 of its content.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from typing import List, Optional, Tuple

import zstandard

from agent.store.fsutil import FILE_MODE, fsync_dir
from agent.store.index import FLAG_ZSTD, BlobLocation

MAGIC = b"BAPK\x01"
TRAILER_MAGIC = b"BAPT"
_TRAILER_ENTRY = struct.Struct("<32sBIII")
TARGET_SIZE = 16 * 1024 * 1024
_SAMPLE = 64 * 1024


class Compressor:
    """zstd, skipped for data that does not compress (jars, archives) so those cost no CPU twice."""

    def __init__(self, level: int = 3) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._probe = zstandard.ZstdCompressor(level=1)

    def compress(self, data: bytes | memoryview) -> Tuple[bytes | memoryview, int]:
        if len(data) > 2 * _SAMPLE and len(self._probe.compress(data[:_SAMPLE])) > 0.95 * _SAMPLE:
            return data, 0
        packed = self._zstd.compress(data)
        if len(packed) >= 0.97 * len(data):
            return data, 0
        return packed, FLAG_ZSTD


_decompressor = zstandard.ZstdDecompressor()


def decode_blob(stored: bytes, flags: int, raw_length: int) -> bytes:
    if flags & FLAG_ZSTD:
        return _decompressor.decompress(stored, max_output_size=raw_length)
    return stored


class PackWriter:
    """Accumulates blobs for one pack and writes it durably when full or flushed."""

    def __init__(self, data_dir: str, tmp_dir: str) -> None:
        self.data_dir = data_dir
        self.tmp_dir = tmp_dir
        self._parts: List[bytes | memoryview] = [MAGIC]
        self._size = len(MAGIC)
        self._entries: List[Tuple[bytes, int, int, int, int]] = []

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, blob_id: bytes, stored: bytes | memoryview, raw_length: int, flags: int) -> None:
        self._entries.append((blob_id, flags, self._size, len(stored), raw_length))
        self._parts.append(bytes(stored))
        self._size += len(stored)

    def finish(self) -> List[Tuple[bytes, BlobLocation]]:
        """Write the pack (temp, fsync, rename, fsync dir); returns its blobs' locations."""
        trailer = b"".join(_TRAILER_ENTRY.pack(*entry) for entry in self._entries)
        self._parts.append(trailer + struct.pack("<I", len(self._entries)) + TRAILER_MAGIC)
        hasher = hashlib.sha256()
        tmp = os.path.join(self.tmp_dir, f"pack-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            for part in self._parts:
                hasher.update(part)
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        pack_id = hasher.digest()
        target_dir = os.path.join(self.data_dir, pack_id.hex()[:2])
        os.rename(tmp, os.path.join(target_dir, pack_id.hex()))
        fsync_dir(target_dir)
        return [(blob_id, BlobLocation(pack_id, offset, length, raw, flags))
                for blob_id, flags, offset, length, raw in self._entries]


def read_trailer(data: bytes) -> Optional[List[Tuple[bytes, int, int, int, int]]]:
    """The blob list of a whole pack's bytes, or None if the pack is malformed."""
    if not data.startswith(MAGIC) or not data.endswith(TRAILER_MAGIC) or len(data) < len(MAGIC) + 8:
        return None
    (count,) = struct.unpack_from("<I", data, len(data) - 8)
    start = len(data) - 8 - count * _TRAILER_ENTRY.size
    if start < len(MAGIC):
        return None
    return list(_TRAILER_ENTRY.iter_unpack(data[start:len(data) - 8]))
