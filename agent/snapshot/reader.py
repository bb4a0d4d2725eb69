"""Read one entry of a tree relative to an open directory: a file's content (chunked, stored, hashed), a
symlink's target, anyone's extended attributes. Everything is opened by name relative to a directory
descriptor, so no path is ever longer than one name (PATH_MAX does not limit the tree's depth).

The tree may change while it is read. A file is opened without following symlinks and without blocking
(a FIFO swapped in for it must not hang the run); an entry found to be of another type than listed
raises `TypeChanged` so the walk re-examines it as what it is now; a file that changes while it is read
is read again, and on the last attempt stored as read: up to the size it had when opened (what restic
and tar keep of a file that is being appended to), with a warning.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import Callable, List, NamedTuple, Optional

import xxhash

from agent.snapshot.cache import FilesCache
from agent.store import BlobWriter, Repository
from agent.store.manifest import Xattrs

# Files up to this size are read whole: one read, one xxhash, no streaming machinery.
_WHOLE_FILE = 2 * 1024 * 1024
ATTEMPTS = 3
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# errors of a getxattr/listxattr that mean "nothing to record here", not a failure
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM, errno.EACCES, errno.ENOENT,
              errno.E2BIG}


class Aborted(Exception):
    """The agent is stopping: the run ends without a snapshot (what was written is unreferenced)."""


class StoreFailed(Exception):
    """The repository refused a write the run needed (its disk is full): the run cannot go on, and no
    source file is to blame. `cause` says why; `size` bytes had been read and `new_bytes` of them stored as
    new data by then, for the run's report and its clean-up (what was stored is no snapshot's)."""

    def __init__(self, cause: OSError, size: int, new_bytes: int) -> None:
        super().__init__(str(cause))
        self.cause, self.size, self.new_bytes = cause, size, new_bytes


class TypeChanged(Exception):
    """The entry is no longer what the listing said (replaced by another type since)."""


class FileRead(NamedTuple):
    """A file as stored: `opened` is its stat when opened; `size` the bytes read (the content stored);
    `settled` whether it was unchanged while read (only then may its stat be trusted next time)."""

    opened: os.stat_result
    size: int
    digest: bytes
    chunks: bytes
    xattrs: Xattrs
    settled: bool


class _Bounded:
    """At most `limit` bytes of a descriptor, for the streaming chunker: a file appended to faster than it
    is read must not keep the run reading forever."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.left = fd, limit

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer)
        got = os.readv(self.fd, [view[:min(len(view), self.left)]])
        self.left -= got
        return got


def xattrs_of(fd: int) -> Xattrs:
    """The extended attributes of an open file or directory, sorted by name."""
    return _xattrs(fd)


def xattrs_at(dir_fd: int, name: str) -> Xattrs:
    """The extended attributes of `name` in an open directory, without following a symlink (listxattr
    has no dir_fd form; /proc/self/fd/N/NAME resolves to the directory, then NAME itself)."""
    return _xattrs(f"/proc/self/fd/{dir_fd}/{name}")


def _xattrs(target) -> Xattrs:
    follow = isinstance(target, int)  # a descriptor: nothing to follow (and os refuses False with one)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return ()
        raise
    if not names:
        return ()
    found = []
    for name in sorted(names):
        try:
            found.append((name, os.getxattr(target, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:  # removed since the listing: simply not recorded
                raise
    return tuple(found)


class FileReader:
    """Reads files into the repository; `cache` gives the chunks of content already stored."""

    def __init__(self, repo: Repository, cache: FilesCache, seed: int, stop: threading.Event) -> None:
        self.repo, self.cache, self.seed, self.stop = repo, cache, seed, stop
        self.writer: Optional[BlobWriter] = None
        self.bytes_read = 0  # of the files read whole, for the report of a run the repository fails

    def read(self, dir_fd: int, name: str, number: Optional[int], warn: Callable[[str], None], rel: str) -> FileRead:
        """Read `name` (a regular file when listed). Raises TypeChanged, FileNotFoundError (it vanished),
        OSError (unreadable), Aborted, StoreFailed (the repository could not store it)."""
        for attempt in range(ATTEMPTS):
            fd = _open_file(dir_fd, name)
            try:
                result = self._read_open(fd, number)
            finally:
                os.close(fd)
            self.bytes_read += result.size
            if result.settled:
                return result
            if attempt == ATTEMPTS - 1:
                warn(f"{rel}: changed while being read ({ATTEMPTS} attempts); stored as read: "
                     f"{result.size} bytes (its size when opened: {result.opened.st_size})")
        return result

    def _read_open(self, fd: int, number: Optional[int]) -> FileRead:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise TypeChanged()  # replaced by something else between the listing and the open
        xattrs = xattrs_of(fd)
        if before.st_size <= _WHOLE_FILE:
            data = _read_upto(fd, before.st_size)
            digest = xxhash.xxh3_128_digest(data, self.seed)
            if number is not None and self.cache.digest(number) == digest:
                chunks = self.cache.chunks(number)
            else:
                chunks = b"".join(self._save(piece) for piece in self.repo.chunker.split(data))
            size = len(data)
        else:
            hasher = xxhash.xxh3_128(seed=self.seed)
            ids: List[bytes] = []
            size = 0
            for piece in self.repo.chunker.split_stream(_Bounded(fd, before.st_size)):
                if self.stop.is_set():
                    raise Aborted()
                hasher.update(piece)
                size += len(piece)
                ids.append(self._save(piece))
            digest, chunks = hasher.digest(), b"".join(ids)
        after = os.fstat(fd)
        settled = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == \
            (before.st_size, before.st_mtime_ns, before.st_ctime_ns) and size == before.st_size
        return FileRead(after if settled else before, size, digest, chunks, xattrs, settled)

    def _save(self, piece: memoryview | bytes) -> bytes:
        if self.writer is None:
            self.writer = self.repo.writer()
        try:
            blob_id, _ = self.writer.save(piece)
        except OSError as exc:  # not the file's fault: the walk must not take it for an unreadable file
            raise StoreFailed(exc, self.bytes_read, self.writer.new_bytes) from exc
        return blob_id


def _open_file(dir_fd: int, name: str) -> int:
    try:
        try:
            return os.open(name, _FILE_FLAGS | getattr(os, "O_NOATIME", 0), dir_fd=dir_fd)
        except PermissionError:
            return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # O_NOATIME needs ownership; fall back
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # became a symlink, or a socket, since the listing
            raise TypeChanged() from None
        raise


def _read_upto(fd: int, size: int) -> bytes:
    """At most `size` bytes: what the file held when opened, or less if it shrank meanwhile."""
    parts = []
    left = size
    while left > 0:
        block = os.read(fd, left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def read_link(dir_fd: int, name: str) -> bytes:
    """A symlink's target (raises OSError EINVAL if `name` is not a symlink any more)."""
    return os.fsencode(os.readlink(name, dir_fd=dir_fd))
