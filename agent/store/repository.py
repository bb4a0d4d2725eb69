"""The repository: content-addressed, deduplicated, compressed blobs in packs, plus snapshot manifests.

Layout (all files 0600, directories 0700):
    config.json            format version, repository id, chunker parameters; written last at creation
    data/XX/PACKID         pack files (see pack.py)
    index/INDEXID          where each blob lives (see index.py)
    snapshots/SNAPID.json  manifests, written after the packs and index they need: a crash leaves either
                           no manifest or a complete snapshot
    lock                   flock(2) lock; tmp/ holds half-written files that prune removes

Blob ids are SHA-256 of the raw content: files under /services and database rows can be influenced by
users, so identity must resist crafted collisions. xxhash is used only where a collision is harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from agent.durable import FileLock, atomic_write, fsync_dir, make_private_dirs
from agent.store.chunker import STREAM_CHUNKER, Chunker, ChunkerParams
from agent.store.index import KIND_DATA, BlobLocation, Index
from agent.store.pack import TARGET_SIZE, Compressor, PackWriter, decode_blob

FORMAT_VERSION = 1
_INDEX_EVERY_PACKS = 32


class RepositoryError(Exception):
    pass


class DamagedBlobError(RepositoryError):
    def __init__(self, blob_id: bytes, reason: str) -> None:
        super().__init__(f"blob {blob_id.hex()}: {reason}")
        self.blob_id = blob_id


@dataclass(frozen=True)
class Snapshot:
    """A manifest: what one run stored. `tree` lists the blobs of its entry stream (see snapshot/tree.py)."""

    job: str
    type: str
    host: str
    time: str
    trigger: str
    tree: Tuple[str, ...]
    files: int
    bytes: int
    fingerprint: str
    source: Tuple[str, ...] = ()
    partial: bool = False
    id: str = field(default="", compare=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("id")
        data["tree"] = list(self.tree)
        data["source"] = list(self.source)
        return data

    @classmethod
    def from_json(cls, snapshot_id: str, data: dict) -> Snapshot:
        return cls(job=data["job"], type=data["type"], host=data["host"], time=data["time"],
                   trigger=data["trigger"], tree=tuple(data["tree"]), files=int(data["files"]),
                   bytes=int(data["bytes"]), fingerprint=data["fingerprint"],
                   source=tuple(data.get("source", ())), partial=bool(data.get("partial", False)),
                   id=snapshot_id)


@dataclass(frozen=True)
class PreparedBlob:
    """A blob hashed and compressed off the writer's thread (`BlobWriter.prepare`); `stored` is None when the
    repository already had it."""

    blob_id: bytes
    stored: Optional[bytes]
    flags: int
    length: int


_compressors = threading.local()  # zstd compressor objects must not be shared between threads


class _Sealer:
    """Writes one finished pack durably on a thread; `result` joins it and re-raises its error (disk full)."""

    def __init__(self, pack: PackWriter) -> None:
        self._locations: List[Tuple[bytes, BlobLocation]] = []
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(pack,), name="pack-sealer", daemon=True)
        self._thread.start()

    def _run(self, pack: PackWriter) -> None:
        try:
            self._locations = pack.finish()
        except BaseException as exc:  # handed to the writer's thread in result()
            self._error = exc

    def result(self) -> List[Tuple[bytes, BlobLocation]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._locations


class BlobWriter:
    """Adds blobs to the repository; nothing is visible to readers before `flush`."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        repo.index.refresh()  # another process may have added blobs since this repository was opened
        self._pack = PackWriter(repo.data_dir, repo.tmp_dir)
        self._pending: List[Tuple[bytes, BlobLocation]] = []
        self._in_pack: Dict[bytes, int] = {}
        self._packs_since_index = 0
        self._sealing: Optional[_Sealer] = None
        self._compressor = Compressor()
        self.new_bytes = 0
        self.stored_bytes = 0
        self.new_blobs = 0

    def save(self, data: bytes | memoryview, kind: int = KIND_DATA) -> Tuple[bytes, bool]:
        """Store `data` unless the repository has it; returns (blob id, whether it was new)."""
        blob_id = hashlib.sha256(data).digest()
        if blob_id in self._in_pack or blob_id in self.repo.index:
            return blob_id, False
        stored, flags = self._compressor.compress(data)
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
        blob_id = hashlib.sha256(data).digest()
        if blob_id in self.repo.index:
            return PreparedBlob(blob_id, None, 0, len(data))
        compressor = getattr(_compressors, "compressor", None)
        if compressor is None:
            compressor = _compressors.compressor = Compressor()
        stored, flags = compressor.compress(data, probe)
        return PreparedBlob(blob_id, bytes(stored), flags, len(data))

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
        into the next one. At most one pack is being sealed; the index lists a pack only once it is durable
        (`_write_index` waits), so the crash-safety order (packs, then index, then manifest) is unchanged."""
        if not len(self._pack):
            return
        self._wait_sealed()
        self._sealing = _Sealer(self._pack)
        self._pack = PackWriter(self.repo.data_dir, self.repo.tmp_dir)
        self._packs_since_index += 1
        if self._packs_since_index >= _INDEX_EVERY_PACKS:
            self._write_index()

    def _wait_sealed(self) -> None:
        if self._sealing is not None:
            sealing, self._sealing = self._sealing, None
            self._pending.extend(sealing.result())

    def _write_index(self) -> None:
        self._wait_sealed()
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


class Repository:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.data_dir = os.path.join(self.path, "data")
        self.index_dir = os.path.join(self.path, "index")
        self.snapshot_dir = os.path.join(self.path, "snapshots")
        self.tmp_dir = os.path.join(self.path, "tmp")
        self.config: dict = {}
        self.index = Index(self.index_dir, self.tmp_dir)
        self._chunker: Optional[Chunker] = None
        self._stream_chunker: Optional[Chunker] = None
        self._pack_fds: Dict[bytes, int] = {}
        self._fd_lock = threading.Lock()

    # --- creation and opening -----------------------------------------------------------------------

    @property
    def config_path(self) -> str:
        return os.path.join(self.path, "config.json")

    def exists(self) -> bool:
        return os.path.exists(self.config_path)

    @classmethod
    def open(cls, path: str, create: bool = False) -> Repository:
        repo = cls(path)
        if not repo.exists():
            if not create:
                raise RepositoryError(f"{repo.path}: no repository here (run a backup to create one)")
            repo._create()
        with open(repo.config_path, encoding="utf-8") as handle:
            repo.config = json.load(handle)
        version = repo.config.get("format")
        if version != FORMAT_VERSION:
            raise RepositoryError(f"{repo.path}: repository format {version} is not supported by this "
                                  f"version (it reads format {FORMAT_VERSION})")
        return repo

    def _create(self) -> None:
        # Directories first, config.json last: a crash midway leaves no config, and the next open
        # simply finishes the job.
        for directory in (self.path, self.index_dir, self.snapshot_dir, self.tmp_dir, self.data_dir):
            make_private_dirs(directory)
        for prefix in range(256):
            sub = os.path.join(self.data_dir, f"{prefix:02x}")
            if not os.path.isdir(sub):
                os.mkdir(sub, 0o700)
        fsync_dir(self.data_dir)
        config = {"format": FORMAT_VERSION, "id": secrets.token_hex(16), "hash": "sha256",
                  "compression": "zstd", "chunker": ChunkerParams().to_json(),
                  "stream_chunker": STREAM_CHUNKER.to_json()}
        atomic_write(self.config_path, json.dumps(config, indent=2).encode(), self.tmp_dir)

    @property
    def id(self) -> str:
        return str(self.config["id"])

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(ChunkerParams(**self.config["chunker"]))
        return self._chunker

    @property
    def stream_chunker(self) -> Chunker:
        """Dump streams are cut finer than files (README, "Scattered updates"); a repository made before
        this setting existed cuts them like files."""
        if self._stream_chunker is None:
            params = self.config.get("stream_chunker") or self.config["chunker"]
            self._stream_chunker = Chunker(ChunkerParams(**params))
        return self._stream_chunker

    def lock(self, exclusive: bool, purpose: str) -> FileLock:
        return FileLock(os.path.join(self.path, "lock"), exclusive, purpose, label="the repository lock")

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    # --- blobs --------------------------------------------------------------------------------------

    def pack_path(self, pack_id: bytes) -> str:
        name = pack_id.hex()
        return os.path.join(self.data_dir, name[:2], name)

    def list_packs(self) -> Iterator[bytes]:
        for prefix in sorted(os.listdir(self.data_dir)):
            sub = os.path.join(self.data_dir, prefix)
            if os.path.isdir(sub):
                for name in sorted(os.listdir(sub)):
                    if len(name) == 64:
                        yield bytes.fromhex(name)

    def _pread(self, pack_id: bytes, length: int, offset: int) -> bytes:
        """Read from a pack through a cached descriptor. Cached descriptors are never closed while the
        repository is in use (another thread may be reading through one); past the cache's size a
        read opens and closes its own."""
        with self._fd_lock:
            fd = self._pack_fds.get(pack_id)
            if fd is None and len(self._pack_fds) < 256:
                fd = self._pack_fds[pack_id] = os.open(self.pack_path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
        if fd is not None:
            return os.pread(fd, length, offset)
        own = os.open(self.pack_path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(own, length, offset)
        finally:
            os.close(own)

    def read_blob(self, blob_id: bytes) -> bytes:
        """The blob's content, checked against its id: damage is an error, never silently restored."""
        loc = self.index.get(blob_id)
        if loc is None:
            raise DamagedBlobError(blob_id, "missing from the index")
        try:
            stored = self._pread(loc.pack, loc.length, loc.offset)
        except FileNotFoundError:
            raise DamagedBlobError(blob_id, f"pack {loc.pack.hex()} is missing") from None
        if len(stored) != loc.length:
            raise DamagedBlobError(blob_id, f"pack {loc.pack.hex()} is truncated")
        try:
            data = decode_blob(stored, loc.flags, loc.raw_length)
        except Exception as exc:  # zstd raises its own error type for corrupt frames
            raise DamagedBlobError(blob_id, f"cannot be decompressed ({exc})") from None
        if hashlib.sha256(data).digest() != blob_id:
            raise DamagedBlobError(blob_id, "content does not match its id")
        return data

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._pack_fds.values():
                os.close(fd)
            self._pack_fds.clear()

    # --- snapshots ----------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> Snapshot:
        data = json.dumps(snapshot.to_json(), sort_keys=True, indent=1).encode()
        snapshot_id = hashlib.sha256(data).hexdigest()
        atomic_write(os.path.join(self.snapshot_dir, snapshot_id + ".json"), data, self.tmp_dir)
        return Snapshot.from_json(snapshot_id, snapshot.to_json())

    def has_snapshot(self, snapshot_id: str) -> bool:
        return os.path.exists(os.path.join(self.snapshot_dir, snapshot_id + ".json"))

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        with open(os.path.join(self.snapshot_dir, snapshot_id + ".json"), encoding="utf-8") as handle:
            return Snapshot.from_json(snapshot_id, json.load(handle))

    def snapshots(self, job: Optional[str] = None) -> List[Snapshot]:
        """Snapshots oldest first."""
        result = []
        for name in os.listdir(self.snapshot_dir):
            if name.endswith(".json") and not name.startswith("."):
                snapshot = self.load_snapshot(name[:-5])
                if job is None or snapshot.job == job:
                    result.append(snapshot)
        result.sort(key=lambda snap: (snap.time, snap.id))
        return result

    def delete_snapshot(self, snapshot_id: str) -> None:
        os.unlink(os.path.join(self.snapshot_dir, snapshot_id + ".json"))
        fsync_dir(self.snapshot_dir)

    def find_snapshot(self, ref: str) -> Snapshot:
        """An id, a unique id prefix, or JOB:latest."""
        if ref.endswith(":latest"):
            job = ref[: -len(":latest")]
            found = self.snapshots(job)
            if not found:
                raise RepositoryError(f"no snapshot of job {job!r}")
            return found[-1]
        matches = [name[:-5] for name in os.listdir(self.snapshot_dir)
                   if name.endswith(".json") and name.startswith(ref) and ref]
        if not matches:
            raise RepositoryError(f"no snapshot {ref!r}")
        if len(matches) > 1:
            raise RepositoryError(f"snapshot prefix {ref!r} is ambiguous ({len(matches)} snapshots match)")
        return self.load_snapshot(matches[0])
