"""An in-memory backend: the conformance suite's reference and a fast repository for unit tests.

Objects live in a dict; the lock is a readers-writer lock within this process. Nothing survives the
process, so it is never offered to users.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from agent.backend.base import Buffer, FileInfo, Handle, Kind, LockTimeout, NotFound, Span, _print_wait, check_name


class _SharedLock:
    """State of the in-process readers-writer lock behind MemLock."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.readers = 0
        self.writer = False
        self.purpose = ""


class MemLock:
    """The repository lock of a MemBackend (same contract as the local flock one)."""

    def __init__(self, shared: _SharedLock, exclusive: bool, purpose: str) -> None:
        self._shared, self.exclusive, self.purpose = shared, exclusive, purpose
        self._held = False

    def _free(self) -> bool:
        return not self._shared.writer and (not self.exclusive or not self._shared.readers)

    def acquire(self, timeout: Optional[float] = None, on_wait: Callable[[str], None] = _print_wait,
                stop: Optional[threading.Event] = None) -> None:
        shared = self._shared
        deadline = None if timeout is None else time.monotonic() + timeout
        with shared.condition:
            if not self._free():
                on_wait(f"waiting for the repository lock held by this process ({shared.purpose})")
            while not self._free():
                if stop is not None and stop.is_set():
                    raise LockTimeout("stopped while waiting for the repository lock")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LockTimeout(f"the repository lock is held by this process ({shared.purpose})")
                shared.condition.wait(0.1 if left is None else min(left, 0.1))
            if self.exclusive:
                shared.writer = True
            else:
                shared.readers += 1
            shared.purpose = self.purpose
            self._held = True

    def release(self) -> None:
        with self._shared.condition:
            if not self._held:
                return
            if self.exclusive:
                self._shared.writer = False
            else:
                self._shared.readers -= 1
            self._held = False
            self._shared.condition.notify_all()

    def __enter__(self) -> MemLock:
        if not self._held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemBackend:
    """Objects in a dict keyed by (kind, name)."""

    def __init__(self, location: str = "mem:") -> None:
        self.location = location
        self._objects: Dict[Tuple[Kind, str], bytes] = {}
        self._guard = threading.Lock()
        self._lock = _SharedLock()

    def describe(self, handle: Handle) -> str:
        return f"{self.location}{handle.kind.value}/{handle.name}"

    def create(self) -> None:
        pass

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        check_name(handle)
        data = b"".join(bytes(piece) for piece in pieces)
        with self._guard:
            self._objects[(handle.kind, handle.name)] = data

    def _get(self, handle: Handle) -> bytes:
        with self._guard:
            data = self._objects.get((handle.kind, handle.name))
        if data is None:
            raise NotFound(f"{self.describe(handle)}: no such object")
        return data

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        data = self._get(handle)
        return data[offset:] if length < 0 else data[offset:offset + length]

    def stat(self, handle: Handle) -> FileInfo:
        return FileInfo(handle.name, len(self._get(handle)))

    def list(self, kind: Kind) -> List[FileInfo]:
        with self._guard:
            found = [FileInfo(name, len(data)) for (each, name), data in self._objects.items() if each is kind]
        return sorted(found, key=lambda info: info.name)

    def read_ahead(self, spans: Sequence[Span]) -> ContextManager[None]:
        return contextlib.nullcontext()  # a load costs no round trip here: nothing to fetch ahead

    def remove(self, handle: Handle) -> None:
        with self._guard:
            if self._objects.pop((handle.kind, handle.name), None) is None:
                raise NotFound(f"{self.describe(handle)}: no such object")

    def lock(self, exclusive: bool, purpose: str) -> MemLock:
        return MemLock(self._lock, exclusive, purpose)

    def remove_leftovers(self) -> int:
        return 0  # a save is all or nothing: nothing is ever left over

    def release(self, kind: Optional[Kind] = None) -> None:
        pass

    def close(self) -> None:
        pass
