"""The repository lock: one writer at a time, readers share.

flock(2) is released by the kernel when its holder dies, so a lock left by a killed process is stale by
construction and never blocks anyone; the holder's pid and command are written beside it for messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

from agent.store.fsutil import FILE_MODE


class LockTimeout(Exception):
    pass


class RepositoryLock:
    def __init__(self, path: str, exclusive: bool, purpose: str, label: str = "the repository lock") -> None:
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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(f"waiting for {self.label} held by {self._holder()}")
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        os.close(fd)
                        raise LockTimeout(f"{self.label} is held by {self._holder()}") from None
                    # flock has no timed wait; polling keeps the wait interruptible by `stop`
                    if (stop or threading.Event()).wait(0.1):
                        os.close(fd)
                        raise LockTimeout("stopped while waiting for the repository lock") from None
        self._fd = fd
        if self.exclusive:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            holder = os.open(self.path + ".holder", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(holder, "w", encoding="utf-8") as handle:
                json.dump(info, handle)

    def release(self) -> None:
        if self._fd is not None:
            if self.exclusive:
                try:
                    os.unlink(self.path + ".holder")
                except FileNotFoundError:
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RepositoryLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
