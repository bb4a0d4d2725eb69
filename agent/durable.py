"""Local durability helpers: atomic file writes and file locks, for the state dir, the spool, the caches,
the collector and the local repository backend.

Writes go to a temp name, are fsynced, renamed, and the directory fsynced: a crash at any instant leaves
either the old file or the complete new one, never a torn file. Everything is private (0600/0700).

Locks are flock(2): the kernel releases them when their holder dies, so a lock left by a killed process
is stale by construction and never blocks anyone; the holder's pid and purpose are written beside it
for messages. That note is only for messages: a lock is held whether or not it could be written (a full
state_dir), and a lock that fails to be taken leaves no descriptor open. A flock belongs to the open file
description, so a descriptor leaked by this process would block this very process's next acquire forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from typing import Callable, Iterable, Optional

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: str) -> None:
    """Create `path` and missing parents 0700; new directories are fsynced into their parents."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))


def remove_quietly(path: str, dir_fd: Optional[int] = None) -> None:
    """Remove a temp file on an error path. Removing it may fail in turn (it was renamed into place just
    before a KeyboardInterrupt, the filesystem turned read-only): that must not replace the error being
    handled, which says what went wrong; a temp file left is swept later (agent.leftovers)."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


def write_temp(directory: str, pieces: Iterable[bytes], prefix: str = ".tmp-", durable: bool = True,
               opened: Optional[Callable[[int], None]] = None) -> str:
    """Write `pieces` to a new private file in `directory` (fsynced if durable); the caller renames it
    into place. `opened` is called with its descriptor first (a restore locks its temp file). On any
    error the temp file is removed."""
    tmp = os.path.join(directory, f"{prefix}{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        if opened is not None:
            opened(fd)
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: str, data: bytes, tmp_dir: str | None = None, durable: bool = True) -> None:
    """Write `data` to `path` so that readers and crashes see the old or the new content, nothing between.

    durable=False skips the fsyncs, for state that is only an optimisation (caches, last-run records):
    after a power loss such a file may be old or empty, and its readers treat both as "start afresh".
    """
    directory = os.path.dirname(path)
    try:
        tmp = write_temp(tmp_dir or directory, [data], durable=durable)
    except OSError as exc:
        if exc.filename is None:  # a failed write names no file: name the one that could not be written
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if not durable:
        return
    fsync_dir(directory)
    if tmp_dir and tmp_dir != directory:
        fsync_dir(tmp_dir)


class LockTimeout(Exception):
    pass


class FileLock:
    def __init__(self, path: str, exclusive: bool, purpose: str, label: str = "the lock") -> None:
        self.path = path
        self.label = label
        self.exclusive = exclusive
        self.purpose = purpose
        self._fd: Optional[int] = None

    def _holder(self) -> str:
        try:
            with open(self.path + ".holder", encoding="utf-8") as handle:
                info = json.load(handle)
            return f"pid {info.get('pid')} on {info.get('host')} ({info.get('purpose')}, since {info.get('since')})"
        except (OSError, ValueError):
            return "another process"

    def acquire(self, timeout: Optional[float] = None,
                on_wait: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
                stop: Optional[threading.Event] = None) -> None:
        """Take the lock, waiting up to `timeout` seconds (None: for ever) or until `stop` is set.
        Raises LockTimeout (waited too long, or stopped) or OSError (the lock file cannot be opened)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            self._wait(fd, timeout, on_wait, stop)
        except BaseException:
            os.close(fd)  # closing drops a flock this descriptor may have got
            raise
        self._fd = fd
        if self.exclusive:
            self._write_holder()

    def _wait(self, fd: int, timeout: Optional[float], on_wait: Callable[[str], None],
              stop: Optional[threading.Event]) -> None:
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            on_wait(f"waiting for {self.label} held by {self._holder()}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise LockTimeout(f"{self.label} is held by {self._holder()}") from None
                # flock has no timed wait; polling keeps the wait interruptible by `stop`
                if (stop or threading.Event()).wait(0.1):
                    raise LockTimeout(f"stopped while waiting for {self.label}") from None

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": os.uname().nodename, "purpose": self.purpose,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            holder = os.open(self.path + ".holder", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             FILE_MODE)
            with os.fdopen(holder, "w", encoding="utf-8") as handle:
                json.dump(info, handle)
        except OSError:  # no room for the note (a full state_dir): waiters say "another process"
            try:
                os.unlink(self.path + ".holder")
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.exclusive:
                try:
                    os.unlink(self.path + ".holder")
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)  # releases the flock, whatever happened to the note

    def __enter__(self) -> FileLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
