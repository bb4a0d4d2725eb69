"""A local cache of a remote backend's immutable small objects: index files, snapshot documents and
damage records, so that a backup that changed nothing does not download them again (restic keeps the
same cache, `internal/cache`).

Those objects are written once under names that are never reused, so a cached copy stays right. Each cache
file ends with the SHA-256 of its content, checked on every use: a damaged cache file is simply fetched
again (the digest is of what was stored: in an encrypted repository names are keyed, not content hashes).
Deleting the cache costs time, never correctness. Listing always asks the backend: the cache never
decides what exists, and cached objects no longer listed (prune replaced the index) are dropped then.
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Optional, Sequence

from agent.backend.base import Backend, Buffer, FileInfo, Handle, Kind, Wrapper
from agent.durable import atomic_write, make_private_dirs

CACHED_KINDS = (Kind.INDEX, Kind.SNAPSHOT, Kind.DAMAGE)


class CachedBackend(Wrapper):
    """Wraps `inner`; whole loads of CACHED_KINDS go through files under `directory`."""

    def __init__(self, inner: Backend, directory: str) -> None:
        super().__init__(inner)
        self.directory = directory
        self.hits = 0  # loads answered from the cache (tests)

    def _path(self, handle: Handle) -> Optional[str]:
        if handle.kind not in CACHED_KINDS or not handle.name or "/" in handle.name or handle.name[0] == ".":
            return None
        return os.path.join(self.directory, handle.kind.value, handle.name)

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        path = self._path(handle) if length < 0 and offset == 0 else None
        if path is None:
            return self.inner.load(handle, length, offset)
        try:
            with open(path, "rb") as source:
                kept = source.read()
            data, digest = kept[:-32], kept[-32:]
            if len(kept) >= 32 and hashlib.sha256(data).digest() == digest:
                self.hits += 1
                return data
        except OSError:
            pass
        data = self.inner.load(handle)
        self._keep(path, data)
        return data

    @staticmethod
    def _keep(path: str, data: bytes) -> None:
        try:
            make_private_dirs(os.path.dirname(path))
            atomic_write(path, data + hashlib.sha256(data).digest(), durable=False)
        except OSError:  # a full or read-only state_dir costs requests, not the run
            pass

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        self.inner.save(handle, pieces)
        path = self._path(handle)
        if path is not None:  # what this host wrote, it need not download (its own new snapshot)
            self._keep(path, b"".join(bytes(piece) for piece in pieces))

    def list(self, kind: Kind) -> List[FileInfo]:
        found = self.inner.list(kind)
        if kind in CACHED_KINDS:
            self._forget_all_but(kind, {info.name for info in found})
        return found

    def _forget_all_but(self, kind: Kind, names: set) -> None:
        directory = os.path.join(self.directory, kind.value)
        try:
            cached = os.listdir(directory)
        except OSError:
            return
        for name in cached:
            if name not in names:
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass

    def remove(self, handle: Handle) -> None:
        self.inner.remove(handle)
        path = self._path(handle)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
