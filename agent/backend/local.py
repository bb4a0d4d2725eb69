"""The local-directory backend: every POSIX detail of the repository on a filesystem.

Layout (all files 0600, directories 0700), as README documents it:
    config.json            the repository's configuration
    data/XX/PACKID         packs, fanned out by the first byte of their name (256 directories)
    index/ID               index files
    snapshots/ID.json      snapshot documents
    damage/ID              damage records (created when first needed)
    lock, lock.holder      the repository lock (flock(2)) and who holds it exclusively
    tmp/                   files being written; what a crash leaves here is removed by prune

Every object is written to tmp/, fsynced, renamed to its name and its directory fsynced: a crash at any
instant leaves the object complete or absent. Packs are read with pread(2) through cached descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

from agent.backend.base import Buffer, FileInfo, Handle, Kind, NotFound, Span, check_name, config_listing
from agent.durable import FileLock, fsync_dir, make_private_dirs, write_temp

_MAX_CACHED = 256  # open pack descriptors; each may hold a 16 MiB pack's disk space after its deletion
_DIRS = {Kind.DATA: "data", Kind.INDEX: "index", Kind.SNAPSHOT: "snapshots", Kind.DAMAGE: "damage",
         Kind.KEYS: "keys", Kind.PACK_KEYS: "packkeys"}
_SUFFIX = {Kind.SNAPSHOT: ".json"}


@dataclass
class _Open:
    """A cached descriptor; closed once it is retired and no read is using it."""

    fd: int
    users: int = 0
    retired: bool = False


class _Descriptors:
    """Read-only descriptors of packs, shared by threads. A descriptor is closed only when no read uses
    it (`users`), so releasing one while another thread reads through it is safe."""

    def __init__(self) -> None:
        self._open: Dict[str, _Open] = {}
        self._lock = threading.Lock()

    def pread(self, path_of: Callable[[], str], name: str, length: int, offset: int) -> bytes:
        with self._lock:
            entry = self._open.get(name)
            if entry is None and len(self._open) < _MAX_CACHED:
                entry = self._open[name] = _Open(os.open(path_of(), os.O_RDONLY | os.O_CLOEXEC))
            if entry is not None:
                entry.users += 1
        if entry is None:  # past the cache's size a read opens and closes its own
            own = os.open(path_of(), os.O_RDONLY | os.O_CLOEXEC)
            try:
                return _pread(own, length, offset)
            finally:
                os.close(own)
        try:
            return _pread(entry.fd, length, offset)
        finally:
            with self._lock:
                entry.users -= 1
                if entry.retired and not entry.users:
                    os.close(entry.fd)

    def release(self, name: Optional[str] = None) -> None:
        with self._lock:
            names = list(self._open) if name is None else [name]
            for key in names:
                entry = self._open.pop(key, None)
                if entry is not None:
                    entry.retired = True
                    if not entry.users:
                        os.close(entry.fd)

    def __len__(self) -> int:
        return len(self._open)


def _pread(fd: int, length: int, offset: int) -> bytes:
    if length < 0:
        length = os.fstat(fd).st_size - offset
    return os.pread(fd, max(length, 0), offset)


class LocalBackend:
    """A repository in a local directory (see the module docstring for the layout)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.location = self.path
        self._tmp = os.path.join(self.path, "tmp")
        self._packs = _Descriptors()

    def _path(self, handle: Handle) -> str:
        if handle.kind is Kind.CONFIG:
            return os.path.join(self.path, "config.json")
        check_name(handle)
        name = handle.name
        if handle.kind is Kind.DATA:
            return os.path.join(self.path, "data", name[:2], name)
        return os.path.join(self.path, _DIRS[handle.kind], name + _SUFFIX.get(handle.kind, ""))

    def describe(self, handle: Handle) -> str:
        return self._path(handle)

    def create(self) -> None:
        # Directories first (the caller writes config.json last): a crash midway leaves no config, and
        # the next open simply finishes the job.
        for name in ("", "index", "snapshots", "tmp", "data"):
            make_private_dirs(os.path.join(self.path, name))
        data = os.path.join(self.path, "data")
        for prefix in range(256):
            sub = os.path.join(data, f"{prefix:02x}")
            if not os.path.isdir(sub):
                os.mkdir(sub, 0o700)
        fsync_dir(data)

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        path = self._path(handle)
        try:
            tmp = write_temp(self._tmp, pieces, prefix=f"{handle.kind.value}-")
        except OSError as exc:
            if exc.filename is None:  # a failed write or fsync names no file (a full disk): name the object
                raise OSError(exc.errno, exc.strerror, path) from exc
            raise
        try:
            try:
                os.rename(tmp, path)
            except FileNotFoundError:  # a kind added after this repository was made (damage/)
                make_private_dirs(os.path.dirname(path))
                os.rename(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsync_dir(os.path.dirname(path))
        if handle.kind is not Kind.DATA:  # packs never did this: their temp names are harmless leftovers
            fsync_dir(self._tmp)

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        try:
            if handle.kind is Kind.DATA:  # the hot path of restore: no path is built for a cached pack
                return self._packs.pread(lambda: self._path(handle), handle.name, length, offset)
            with open(self._path(handle), "rb") as source:
                source.seek(offset)
                return source.read() if length < 0 else source.read(length)
        except FileNotFoundError:
            raise NotFound(f"{self._path(handle)}: no such object") from None

    def stat(self, handle: Handle) -> FileInfo:
        try:
            return FileInfo(handle.name, os.stat(self._path(handle)).st_size)
        except FileNotFoundError:
            raise NotFound(f"{self._path(handle)}: no such object") from None

    def list(self, kind: Kind) -> List[FileInfo]:
        if kind is Kind.CONFIG:
            return config_listing(self.stat)
        directory = os.path.join(self.path, _DIRS[kind])
        if kind is Kind.DATA:
            found = []
            for prefix in _listdir(directory):
                if len(prefix) == 2:
                    found.extend(self._entries(os.path.join(directory, prefix), ""))
        else:
            found = self._entries(directory, _SUFFIX.get(kind, ""))
        return sorted(found, key=lambda info: info.name)

    @staticmethod
    def _entries(directory: str, suffix: str) -> List[FileInfo]:
        found = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.name.endswith(suffix):
                        continue
                    if not entry.is_file(follow_symlinks=False):  # a stray directory or link: not an object
                        continue
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed while listed
                        continue
                    found.append(FileInfo(entry.name[:len(entry.name) - len(suffix)], size))
        except FileNotFoundError:
            pass
        return found

    def read_ahead(self, spans: Sequence[Span]) -> ContextManager[None]:
        return contextlib.nullcontext()  # a load costs no round trip here: nothing to fetch ahead

    def remove(self, handle: Handle) -> None:
        path = self._path(handle)
        if handle.kind is Kind.DATA:
            self._packs.release(handle.name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise NotFound(f"{path}: no such object") from None
        fsync_dir(os.path.dirname(path))

    def lock(self, exclusive: bool, purpose: str) -> FileLock:
        return FileLock(os.path.join(self.path, "lock"), exclusive, purpose, label="the repository lock")

    def remove_leftovers(self) -> int:
        removed = 0
        for name in _listdir(self._tmp):
            path = os.path.join(self._tmp, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _unlink_quietly(path)
            removed += 1
        return removed

    def release(self, kind: Optional[Kind] = None) -> None:
        if kind is None or kind is Kind.DATA:
            self._packs.release()

    def cached_descriptors(self) -> int:
        """How many pack descriptors are open (tests and the daemon's idle check)."""
        return len(self._packs)

    def close(self) -> None:
        self._packs.release()


def _listdir(directory: str) -> List[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
