"""Writing blobs into a repository: `BlobWriter` fills packs (pack.py), seals finished ones on threads
of their own (as many at once as the backend says it takes: `parallel_saves`) and writes an index file
every _INDEX_EVERY_PACKS packs and at the end, so a crash loses at most the packs not yet indexed (prune
collects them; the index rebuilds their entries meanwhile)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Protocol, Set, Tuple

from agent.backend import Backend
from agent.store.index import KIND_DATA, KIND_TREE, BlobLocation, Index
from agent.store.pack import TARGET_SIZE, Compressor, PackWriter

if TYPE_CHECKING:
    from agent.crypt.seal import RepositoryCipher

_INDEX_EVERY_PACKS = 32


class Target(Protocol):
    """What a BlobWriter needs of the repository it writes into (agent.store.repository.Repository)."""

    backend: Backend
    index: Index
    cipher: Optional[RepositoryCipher]

    @property
    def blob_hasher(self) -> Callable[[bytes | memoryview], bytes]: ...

    def refresh(self) -> None: ...

    def pack_writer(self) -> PackWriter: ...


@dataclass(frozen=True)
class PreparedBlob:
    """A blob hashed and compressed off the writer's thread (`BlobWriter.prepare`); `stored` is None when the
    repository already had it."""

    blob_id: bytes
    stored: Optional[bytes]
    flags: int
    length: int


_compressors = threading.local()  # zstd compressor objects must not be shared between threads


class Sealers:
    """The packs being sealed on their threads by the writers of one repository: a failed run's writer is
    dropped with its packs still being written, and Repository.settle must still find them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Set[_Sealer] = set()

    def add(self, sealer: _Sealer) -> None:
        with self._lock:
            self._running.add(sealer)

    def discard(self, sealer: _Sealer) -> None:
        with self._lock:
            self._running.discard(sealer)

    def wait(self) -> None:
        """Wait for the packs being sealed now (not for those started meanwhile: another run's)."""
        with self._lock:
            running = list(self._running)
        for sealer in running:
            sealer.join()


class _Sealer:
    """Writes one finished pack durably on a thread; `result` joins it and re-raises its error (disk full).
    `ended` notifies `done` when the thread is over, so a writer can wait for whichever of its packs ends
    first."""

    def __init__(self, pack: PackWriter, done: threading.Condition, registry: Optional[Sealers] = None) -> None:
        self._locations: List[Tuple[bytes, BlobLocation]] = []
        self._error: Optional[BaseException] = None
        self._done = done
        self._registry = registry
        self.ended = False
        self._thread = threading.Thread(target=self._run, args=(pack,), name="pack-sealer", daemon=True)
        if registry is not None:
            registry.add(self)
        self._thread.start()

    def _run(self, pack: PackWriter) -> None:
        try:
            self._locations = pack.finish()
        except BaseException as exc:  # handed to the writer's thread in result()
            self._error = exc
        finally:
            with self._done:
                self.ended = True
                self._done.notify_all()
            if self._registry is not None:
                self._registry.discard(self)

    def join(self) -> None:
        self._thread.join()

    def result(self) -> List[Tuple[bytes, BlobLocation]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._locations


class BlobWriter:
    """Adds blobs to the repository; nothing is visible to readers before `flush`."""

    def __init__(self, repo: Target, sealers: Optional[Sealers] = None) -> None:
        """`sealers`: the repository's registry of packs being sealed (see Sealers)."""
        self.repo = repo
        repo.refresh()  # another process may have added blobs since this repository was opened
        self._pack = repo.pack_writer()
        self._blob_id = repo.blob_hasher
        self._cipher = repo.cipher
        # the data key blobs are sealed with: a new one with every pack (blobs name theirs: see agent.crypt)
        self._data_key = self._cipher.data_key() if self._cipher is not None else None
        self._pending: List[Tuple[bytes, BlobLocation]] = []
        self._in_pack: Dict[bytes, int] = {}
        self._packs_since_index = 0
        # packs being saved at once: one locally (disk bandwidth), several on object storage, where one
        # PUT's round trips leave the link idle (the backend says: `parallel_saves`); memory stays bounded
        # by that many packs plus the one being filled
        self._sealing: List[_Sealer] = []
        self._sealed = threading.Condition()  # notified by each _Sealer as it ends
        self._sealers = sealers
        self._max_sealing = max(1, int(getattr(repo.backend, "parallel_saves", 1)))
        self._compressor = Compressor()
        self.new_bytes = 0
        self.stored_bytes = 0
        self.new_blobs = 0

    def save(self, data: bytes | memoryview, kind: int = KIND_DATA) -> Tuple[bytes, bool]:
        """Store `data` unless the repository has it; returns (blob id, whether it was new)."""
        blob_id = self._blob_id(data)
        if blob_id in self._in_pack or blob_id in self.repo.index:
            return blob_id, False
        stored, flags = self._compressor.compress(data)
        if self._cipher is not None:
            stored = self._seal(blob_id, stored, kind)
        self._pack.add(blob_id, stored, len(data), flags | (kind << 4))
        self._in_pack[blob_id] = 1
        self.new_blobs += 1
        self.new_bytes += len(data) if kind == KIND_DATA else 0
        self.stored_bytes += len(stored)
        if self._pack.size >= TARGET_SIZE:
            self._finish_pack()
        return blob_id, True

    def prepare(self, data: bytes, probe: bool = True) -> PreparedBlob:
        """The costly, thread-safe half of `save`: hash, look up, compress (hashlib and zstd release the
        GIL, so several threads keep several cores busy). `save_prepared` then adds it, in order."""
        blob_id = self._blob_id(data)
        if blob_id in self.repo.index:
            return PreparedBlob(blob_id, None, 0, len(data))
        compressor = getattr(_compressors, "compressor", None)
        if compressor is None:
            compressor = _compressors.compressor = Compressor()
        stored, flags = compressor.compress(data, probe)
        if self._cipher is not None:  # prepared blobs are data: sealed here, on the worker's thread
            return PreparedBlob(blob_id, self._seal(blob_id, stored, KIND_DATA), flags, len(data))
        return PreparedBlob(blob_id, bytes(stored), flags, len(data))

    def _seal(self, blob_id: bytes, stored: bytes | memoryview, kind: int) -> bytes:
        assert self._cipher is not None and self._data_key is not None
        if kind == KIND_TREE:
            return self._cipher.seal_tree(blob_id, stored)
        return self._data_key.seal(blob_id, stored)

    def save_prepared(self, blob: PreparedBlob, kind: int = KIND_DATA) -> bool:
        """Add a prepared blob unless it is already stored (or was added since it was prepared)."""
        if blob.stored is None or blob.blob_id in self._in_pack or blob.blob_id in self.repo.index:
            return False
        self._pack.add(blob.blob_id, blob.stored, blob.length, blob.flags | (kind << 4))
        self._in_pack[blob.blob_id] = 1
        self.new_blobs += 1
        self.new_bytes += blob.length if kind == KIND_DATA else 0
        self.stored_bytes += len(blob.stored)
        if self._pack.size >= TARGET_SIZE:
            self._finish_pack()
        return True

    def _finish_pack(self) -> None:
        """Seal the current pack on a thread of its own (write, fsync, rename: the slow part) while blobs go
        into the next one. At most `_max_sealing` packs are being sealed; the index lists a pack only once it
        is durable (`_write_index` waits), so the crash-safety order (packs, then index, then manifest) is
        unchanged."""
        if not len(self._pack):
            return
        self._collect(self._max_sealing - 1)
        self._sealing.append(_Sealer(self._pack, self._sealed, self._sealers))
        self._pack = self.repo.pack_writer()
        if self._cipher is not None:  # the finished pack's key is forgotten: this node cannot read it back
            self._data_key = self._cipher.data_key()
        self._packs_since_index += 1
        if self._packs_since_index >= _INDEX_EVERY_PACKS:
            self._write_index()

    def _collect(self, room: int) -> None:
        """Wait until at most `room` packs are still being sealed, taking the locations of those that
        ended. Whichever ends first frees its slot: waiting for the oldest instead would leave the other
        slots idle behind one slow (retried) upload."""
        with self._sealed:
            self._sealed.wait_for(lambda: sum(not sealer.ended for sealer in self._sealing) <= room)
        ended: List[_Sealer] = []
        running: List[_Sealer] = []
        for sealer in self._sealing:  # one look per sealer: one may end meanwhile
            (ended if sealer.ended else running).append(sealer)
        self._sealing = running
        for sealer in ended:
            self._pending.extend(sealer.result())

    def _write_index(self) -> None:
        self._collect(0)
        if self._pending:
            self.repo.index.write(self._pending)
            for blob_id, _ in self._pending:
                self._in_pack.pop(blob_id, None)
            self._pending = []
        self._packs_since_index = 0

    def flush(self) -> None:
        """Make every saved blob durable and indexed."""
        self._finish_pack()
        self._write_index()
