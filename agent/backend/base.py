"""The storage backend interface: what a repository needs from the place its objects live.

As narrow as restic's `internal/backend.Backend` (from which the shape is borrowed): whole objects of a
kind saved once under a name, loaded (whole or a byte range), stat'ed, listed, removed, plus the
repository lock prune needs. A backend knows nothing of packs, blobs or snapshots; the repository
(`agent.store`) knows nothing of paths, descriptors or requests.

Every implementation passes the one conformance suite, tests/unit/test_backend.py.
"""

from __future__ import annotations

import enum
import sys
import threading
from typing import Callable, ContextManager, List, NamedTuple, Optional, Protocol, Sequence, Union

from agent.durable import LockTimeout

Buffer = Union[bytes, bytearray, memoryview]


class Kind(enum.Enum):
    """What an object is; a backend may store each kind in its own place (the local one: a directory)."""

    CONFIG = "config"      # one object, written last when the repository is created
    DATA = "data"          # packs, named by the SHA-256 of their content
    INDEX = "index"        # index files, named by the SHA-256 of their content
    SNAPSHOT = "snapshots"  # snapshot documents, named by the SHA-256 of their content
    DAMAGE = "damage"      # damage records written by `verify --read-data` (see agent.store.damage)
    KEYS = "keys"          # encrypted repositories: the node key, wrapped for the recipients (agent.crypt)
    PACK_KEYS = "packkeys"  # encrypted repositories: packs' data keys, wrapped for the recipients


CONFIG_NAME = "config"


class Handle(NamedTuple):
    """One object: its kind and its name (lowercase hex for every content-named kind). A NamedTuple:
    one is made per blob read, and a frozen dataclass costs several times more to make."""

    kind: Kind
    name: str


class Span(NamedTuple):
    """Bytes [offset, end) of an object, for a read-ahead; end -1: to the object's end."""

    handle: Handle
    offset: int = 0
    end: int = -1


class FileInfo(NamedTuple):
    """A listed object: its name and size in bytes."""

    name: str
    size: int


class BackendError(Exception):
    """A backend operation failed; the message names the object by its storage name."""


class NotFound(BackendError):
    """The object does not exist (a missing pack, a snapshot removed by prune)."""


def check_name(handle: Handle) -> None:
    """Refuse a name that could escape its kind's place or hide (a path separator, a leading dot)."""
    name = handle.name
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise BackendError(f"{name!r}: not a valid object name")


def config_listing(stat: Callable[[Handle], FileInfo]) -> List[FileInfo]:
    """`list(Kind.CONFIG)` of a backend whose `stat` raises NotFound for a missing object: the config or
    nothing."""
    try:
        return [stat(Handle(Kind.CONFIG, CONFIG_NAME))]
    except NotFound:
        return []


def _print_wait(message: str) -> None:
    print(message, file=sys.stderr)


class RepositoryLock(Protocol):
    """The repository lock: shared by backups, restores and verify; exclusive for prune.

    A holder that dies must never keep others out for long (the local backend: flock(2), released by
    the kernel; an object store: lock objects with a refresh time, or a time margin, issue 12)."""

    def acquire(self, timeout: Optional[float] = None, on_wait: Callable[[str], None] = _print_wait,
                stop: Optional[threading.Event] = None) -> None:
        """Wait for the lock; `on_wait` hears once who holds it; raises LockTimeout after `timeout`
        seconds or when `stop` is set."""

    def release(self) -> None:
        """Let go (idempotent)."""

    def __enter__(self) -> RepositoryLock: ...

    def __exit__(self, *exc: object) -> None: ...


__all__ = ["Backend", "BackendError", "Buffer", "CONFIG_NAME", "FileInfo", "Handle", "Kind", "LockTimeout", "Wrapper",
           "NotFound", "RepositoryLock"]


class Backend(Protocol):
    """Where a repository's objects live. Objects are written once: saving a name that exists is
    allowed only with the same content (every name but the config's is a content hash), and no reader
    ever sees a partly written object. Methods raise NotFound for a missing object, BackendError (or
    OSError from the local filesystem: disk full) for the rest."""

    location: str

    def create(self) -> None:
        """Make the empty container (idempotent); the repository then saves its config last."""

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        """Store the concatenation of `pieces` durably under `handle`, all or nothing."""

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        """The object's bytes from `offset`, `length` of them (-1: to the end); fewer if it is shorter."""

    def stat(self, handle: Handle) -> FileInfo:
        """The object's size."""

    def list(self, kind: Kind) -> List[FileInfo]:
        """Every object of `kind`, sorted by name."""

    def remove(self, handle: Handle) -> None:
        """Delete the object (and let go of anything cached for it)."""

    def read_ahead(self, spans: Sequence[Span]) -> ContextManager[None]:
        """A hint, for the length of the context: these parts of objects will be loaded next, in this
        order (a restore's runs of blobs; a pack may come again after others). A remote backend fetches
        a few of them ahead of the loads, within bounded memory; loads give the same bytes and raise the
        same errors with or without it."""

    def lock(self, exclusive: bool, purpose: str) -> RepositoryLock:
        """The repository lock, not yet acquired; `purpose` is shown to whoever waits for it."""

    def remove_leftovers(self) -> int:
        """Delete what crashed writers left behind (temp files); returns how many. Only under the
        exclusive lock: a running writer's temp files are leftovers too, to this method."""

    def release(self, kind: Optional[Kind] = None) -> None:
        """Let go of cached resources (open descriptors) for objects of `kind` (None: all); the next
        use reopens them. Objects another process removed stop taking space once released."""

    def describe(self, handle: Handle) -> str:
        """The object's storage name for messages (a path, a URL), never holding a secret."""

    def close(self) -> None:
        """Release everything; the backend may be used again afterwards (it reopens on demand)."""


class Wrapper:
    """A backend around another one that hands every call on unchanged: wrappers (the files cache, the
    fault injector) subclass it and override only the methods they change."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location
        self.parallel_saves: int = getattr(inner, "parallel_saves", 1)

    def create(self) -> None:
        self.inner.create()

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        self.inner.save(handle, pieces)

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        return self.inner.load(handle, length, offset)

    def stat(self, handle: Handle) -> FileInfo:
        return self.inner.stat(handle)

    def list(self, kind: Kind) -> List[FileInfo]:
        return self.inner.list(kind)

    def remove(self, handle: Handle) -> None:
        self.inner.remove(handle)

    def read_ahead(self, spans: Sequence[Span]) -> ContextManager[None]:
        return self.inner.read_ahead(spans)

    def lock(self, exclusive: bool, purpose: str) -> RepositoryLock:
        return self.inner.lock(exclusive, purpose)

    def remove_leftovers(self) -> int:
        return self.inner.remove_leftovers()

    def release(self, kind: Optional[Kind] = None) -> None:
        self.inner.release(kind)

    def describe(self, handle: Handle) -> str:
        return self.inner.describe(handle)

    def close(self) -> None:
        self.inner.close()
