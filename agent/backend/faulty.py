"""A fault-injecting wrapper around any backend, for tests of what a repository does when its storage
misbehaves: the Nth save fails (disk full) or is cut short (a torn write the storage did not report),
listing raises, an object is not served, every call is slow. With no fault set it passes everything
through unchanged, and as such it passes the conformance suite.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from agent.backend.base import Backend, BackendError, Buffer, FileInfo, Handle, Kind, Wrapper


@dataclass
class Faults:
    """What to break. Save numbers count from 1 over every save through the wrapper (of `kinds` only,
    when given)."""

    fail_save: Optional[int] = None       # this save raises OSError(ENOSPC) and stores nothing
    truncate_save: Optional[int] = None   # this save stores only the first half of its bytes
    fail_list: bool = False               # every list() raises BackendError
    fail_load: str = ""                   # every load of an object whose name starts with this raises
                                          # BackendError (storage that does not serve it: an HTTP 500)
    delay: float = 0.0                    # seconds every call waits first
    kinds: Optional[frozenset] = None     # the kinds whose saves are counted (None: all)


class FaultyBackend(Wrapper):
    """Wraps `inner`; `faults` may be changed while in use. `saves` counts the saves seen."""

    def __init__(self, inner: Backend, faults: Optional[Faults] = None) -> None:
        super().__init__(inner)
        self.parallel_saves = 1  # saves counted one at a time, in order
        self.faults = faults or Faults()
        self.saves = 0
        self._count_lock = threading.Lock()

    def _slow(self) -> None:
        if self.faults.delay:
            time.sleep(self.faults.delay)

    def create(self) -> None:
        self._slow()
        self.inner.create()

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        self._slow()
        faults = self.faults
        number = 0
        if faults.kinds is None or handle.kind in faults.kinds:
            with self._count_lock:
                self.saves += 1
                number = self.saves
        if number and number == faults.fail_save:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.inner.describe(handle))
        if number and number == faults.truncate_save:
            data = b"".join(bytes(piece) for piece in pieces)
            pieces = [data[:len(data) // 2]]
        self.inner.save(handle, pieces)

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        self._slow()
        if self.faults.fail_load and handle.name.startswith(self.faults.fail_load):
            raise BackendError(f"{self.inner.describe(handle)}: not served (injected fault)")
        return self.inner.load(handle, length, offset)

    def stat(self, handle: Handle) -> FileInfo:
        self._slow()
        return self.inner.stat(handle)

    def list(self, kind: Kind) -> List[FileInfo]:
        self._slow()
        if self.faults.fail_list:
            raise BackendError(f"{self.location}: listing {kind.value} failed (injected fault)")
        return self.inner.list(kind)

    def remove(self, handle: Handle) -> None:
        self._slow()
        self.inner.remove(handle)
