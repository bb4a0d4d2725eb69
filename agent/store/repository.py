"""The repository: content-addressed, deduplicated, compressed blobs in packs, plus snapshot documents,
all stored as objects of a backend (agent.backend), which alone knows where and how bytes are kept.

Objects: the config (format version, repository id, chunker parameters; saved last at creation), packs
(pack.py), index files (index.py), snapshot documents (saved after the packs and index they need: a crash
leaves either no document or a complete snapshot) and damage records (damage.py). Operations above the
repository (agent.checker, agent.pruner, agent.restorer) use only the methods of `Repository`.

Blob ids are SHA-256 of the raw content: files under /services and database rows can be influenced by
users, so identity must resist crafted collisions. xxhash is used only where a collision is harmless.
An encrypted repository (agent.crypt, README "Encryption") keys its blob ids and seals every object;
`self.cipher` is then set and the backend is a SealedBackend.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, List, Optional, Set, Tuple

from agent.backend import CONFIG_NAME, Backend, BackendError, Handle, Kind, NotFound, RepositoryLock, Span, open_backend
from agent.store.chunker import Chunker, ChunkerParams
from agent.store.damage import encode_damage
from agent.store.index import KIND_TREE, BlobLocation, Index, kind_of
from agent.store.pack import PackWriter, data_key_names, decode_blob, read_trailer_range
from agent.store.snapshots import (
    ConfigMissing,
    DamagedSnapshot,
    RepositoryError,
    Snapshot,
    SnapshotStore,
    SnapshotUnreadable,
    load_config,
    new_config,
)
from agent.store.writer import BlobWriter, PreparedBlob, Sealers

if TYPE_CHECKING:
    from agent.crypt import EncryptionSettings
    from agent.crypt.seal import RepositoryCipher

UNDAMAGED_S = 60.0  # how long an empty listing of damage records is believed (Repository.unhealed)


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


class KeyUnusable(RepositoryError):
    """An encrypted repository this node cannot open: no node key, a node key of another repository, a
    missing, malformed or wrong identity. The message names the file (never its content)."""


class DamagedBlobError(RepositoryError):
    def __init__(self, blob_id: bytes, reason: str) -> None:
        super().__init__(f"blob {blob_id.hex()}: {reason}")
        self.blob_id = blob_id
        self.reason = reason


class DataKeyLost(DamagedBlobError):
    """An encrypted blob's data key object is missing: the blob cannot be opened, but its stored bytes
    may be intact (the key may come back from a copy), so it is never recorded as damaged."""


class _Lock:
    """The backend's lock, telling the repository when it was acquired (see Repository.lock)."""

    def __init__(self, lock: RepositoryLock, repo: Repository) -> None:
        self._lock, self._repo = lock, repo

    def acquire(self, *args: Any, **kwargs: Any) -> None:
        self._lock.acquire(*args, **kwargs)
        if self._repo.holds_index:
            self._repo.refresh()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> _Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Repository:
    """A repository on a backend. `Repository(location)` only names it; `Repository.open` reads (or
    creates) it. Thread-safe for readers and for writers of different jobs (daemon lanes)."""

    def __init__(self, location: str | Backend) -> None:
        self.backend: Backend = open_backend(location) if isinstance(location, str) else location
        self.location = self.backend.location
        self.config: dict = {}
        self.index = Index(self.backend, self.pack_blobs)
        self._snapshots = SnapshotStore(self.backend)
        self._chunker: Optional[Chunker] = None
        self._stream_chunker: Optional[Chunker] = None
        self._undamaged_until = 0.0  # time.monotonic() until which no damage record is assumed
        self._sealers = Sealers()  # see settle
        self.cipher: Optional[RepositoryCipher] = None

    # --- creation and opening -----------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether anything of a repository is here: its config, or (a config lost) its objects."""
        return bool(self.backend.list(Kind.CONFIG)) or bool(self._held_objects())

    def _create(self, create: bool, encryption: Optional[EncryptionSettings]) -> None:
        """Make the repository where its config is missing: RepositoryError if it must not (`create` is
        false, or objects are there already)."""
        held = self._held_objects()
        if held:  # never give data a new id and chunker: the old blobs would be lost to it
            where = self.backend.describe(Handle(Kind.CONFIG, CONFIG_NAME))
            raise RepositoryError(f"{where}: missing, but the repository holds {', '.join(held)}; "
                                  f"restore the config from a copy (it is not re-created over data)")
        if not create:
            raise RepositoryError(f"{self.location}: no repository here (run a backup to create one)")
        self.backend.create()
        name, data = new_config()
        if encryption is not None and encryption.enabled:
            from agent.crypt.opening import create_encrypted

            try:
                data = create_encrypted(self.backend, data, encryption)
            except ValueError as exc:  # the node key file cannot be made
                raise KeyUnusable(str(exc)) from None
        self.backend.save(Handle(Kind.CONFIG, name), [data])

    def _held_objects(self) -> List[str]:
        """What the repository holds besides its config ("2 snapshots", ...); empty for an empty place."""
        held = []
        for kind, noun in ((Kind.SNAPSHOT, "snapshot"), (Kind.INDEX, "index file"), (Kind.DATA, "pack")):
            count = len(self.backend.list(kind))
            if count:
                held.append(f"{count} {noun}{'' if count == 1 else 's'}")
        return held

    @classmethod
    def open(cls, location: str | Backend, create: bool = False,
             encryption: Optional[EncryptionSettings] = None) -> Repository:
        """Raises RepositoryError (naming the object) for a missing, unreadable, foreign or tampered config,
        or an encrypted repository this node has no key for. `encryption`: the configured settings (a new
        repository is created encrypted when they name recipients)."""
        repo = cls(location)
        try:  # one request where the config exists (a listing, then a load, cost two)
            repo.config = load_config(repo.backend)
        except ConfigMissing:
            repo._create(create, encryption)
            repo.config = load_config(repo.backend)
        if "encryption" in repo.config or (encryption is not None and encryption.enabled):
            from agent.crypt.keys import KeyFileError
            from agent.crypt.opening import attach

            try:
                repo.cipher, repo.backend = attach(repo.backend, repo.config, encryption, writing=create)
            except KeyFileError as exc:
                raise KeyUnusable(str(exc)) from None
            except ValueError as exc:  # a config.json that does not authenticate
                raise RepositoryError(str(exc)) from None
            repo.index = Index(repo.backend, repo.pack_blobs)  # index files and snapshot documents are sealed
            repo._snapshots = SnapshotStore(repo.backend)
        return repo

    @property
    def blob_hasher(self) -> Callable[[bytes | memoryview], bytes]:
        """The function `hash_blob` is, for a writer to hold once rather than look up for every blob."""
        return _sha256 if self.cipher is None else self.cipher.blob_id

    def hash_blob(self, data: bytes | memoryview) -> bytes:
        """A blob's id: SHA-256 of the content, or in an encrypted repository the keyed id (agent.crypt)."""
        return self.blob_hasher(data)

    @property
    def id(self) -> str:
        return str(self.config["id"])

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(ChunkerParams(**self.config["chunker"]), self._chunker_seed)
        return self._chunker

    @property
    def stream_chunker(self) -> Chunker:
        """Dump streams are cut finer than files (README, "Scattered updates"); a repository made before
        this setting existed cuts them like files."""
        if self._stream_chunker is None:
            params = self.config.get("stream_chunker") or self.config["chunker"]
            self._stream_chunker = Chunker(ChunkerParams(**params), self._chunker_seed)
        return self._stream_chunker

    @property
    def _chunker_seed(self) -> int:
        """FastCDC's gear table: the default, or a secret one per encrypted repository."""
        return 0 if self.cipher is None else self.cipher.node.chunker_seed

    def lock(self, exclusive: bool, purpose: str) -> RepositoryLock:
        """Backups, restores and verify share it; prune takes it exclusively. Once it is acquired, a
        repository that holds its index looks whether a prune replaced the index meanwhile (then it
        lets go of its open packs): a daemon whose runs need no writer frees deleted packs too."""
        return _Lock(self.backend.lock(exclusive, purpose), self)

    def writer(self) -> BlobWriter:
        return BlobWriter(self, self._sealers)

    def settle(self) -> None:
        """Wait until no writer of this repository is sealing a pack. A run that failed leaves its writer
        behind with packs still being written on their threads: the clean-up after it (or anything else
        that weighs what the run left) must see them landed, or it misses them. Packs that other runs
        start meanwhile are not waited for."""
        self._sealers.wait()

    def pack_writer(self) -> PackWriter:
        """A pack of already stored blobs (prune copies live blobs with it); the caller indexes it."""
        return PackWriter(self.backend, self.cipher)

    # --- blobs --------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """See index files written since the last look; if prune (here or elsewhere) replaced the index,
        let go of open packs too: they may be deleted, and an open one keeps its disk space."""
        if self.index.refresh():
            self.backend.release(Kind.DATA)

    def read_ahead(self, blob_ids: Iterable[bytes]) -> ContextManager[None]:
        """For the length of the context, the blobs `blob_ids` will be read in this order (a restore's
        files): the backend may fetch them ahead. Named are the runs of reads of a pack (consecutive reads
        of one pack, again when it is read again after others) with the bytes they cover, only for packs
        read for two blobs or more: a single blob is cheaper to fetch by itself."""
        return self._read_packs_ahead(self.index.get(blob_id) for blob_id in blob_ids)

    def _read_packs_ahead(self, locations: Iterable[Optional[BlobLocation]]) -> ContextManager[None]:
        counts: Dict[bytes, int] = {}
        runs: List[List] = []  # [pack, first byte, end]
        for loc in locations:
            if loc is not None:
                counts[loc.pack] = counts.get(loc.pack, 0) + 1
                if runs and runs[-1][0] == loc.pack:
                    runs[-1][1] = min(runs[-1][1], loc.offset)
                    runs[-1][2] = max(runs[-1][2], loc.offset + loc.length)
                else:
                    runs.append([loc.pack, loc.offset, loc.offset + loc.length])
        return self.backend.read_ahead([Span(Handle(Kind.DATA, pack.hex()), start, end)
                                        for pack, start, end in runs if counts[pack] > 1])

    def read_order(self, blob_id: bytes) -> Tuple[bytes, int]:
        """Where the blob is stored, as a sort key (pack id, offset in bytes); (b"", 0) for a blob the
        index does not know. Blobs read in this order read each pack once, front to back."""
        loc = self.index.get(blob_id)
        return (b"", 0) if loc is None else (loc.pack, loc.offset)

    def read_blob(self, blob_id: bytes) -> bytes:
        """The blob's content, checked against its id: damage is an error, never silently restored.
        Raises DamagedBlobError (naming blob and pack) for a missing, short, corrupt or wrong blob."""
        loc = self.index.get(blob_id)
        if loc is None:
            bad = self.index.damaged().get(blob_id)
            if bad:
                raise DamagedBlobError(blob_id, f"content in pack {min(bad).hex()} does not match its id "
                                                "(found by verify; no backup has stored it again yet)")
            raise DamagedBlobError(blob_id, "missing from the index")
        pack = Handle(Kind.DATA, loc.pack.hex())
        try:
            stored = self.backend.load(pack, loc.length, loc.offset)
        except NotFound:
            raise DamagedBlobError(blob_id, f"pack {pack.name} is missing") from None
        if len(stored) != loc.length:
            raise DamagedBlobError(blob_id, f"pack {pack.name} is truncated")
        if self.cipher is not None:
            stored = self._open_sealed(blob_id, stored, loc, pack)
        try:
            data = decode_blob(stored, loc.flags, loc.raw_length)
        except Exception as exc:  # zstd raises its own error type for corrupt frames
            raise DamagedBlobError(blob_id, f"cannot be decompressed from pack {pack.name} ({exc})") from None
        if self.hash_blob(data) != blob_id:
            raise DamagedBlobError(blob_id, f"content in pack {pack.name} does not match its id")
        return data

    def _open_sealed(self, blob_id: bytes, stored: bytes | memoryview, loc: BlobLocation, pack: Handle) -> bytes:
        """Decrypt and authenticate a stored blob: damage is a DamagedBlobError naming the pack; a missing
        or wrong identity a RepositoryError saying so."""
        assert self.cipher is not None
        try:
            return self.cipher.open_blob(blob_id, stored, kind_of(loc.flags) == KIND_TREE, pack)
        except (BackendError, ValueError) as exc:  # imported only on failure: this runs once per blob read
            from agent.crypt.seal import AuthenticationError, DataKeyMissing

            if isinstance(exc, DataKeyMissing):
                raise DataKeyLost(blob_id, str(exc)) from None
            if isinstance(exc, AuthenticationError):
                raise DamagedBlobError(blob_id, str(exc)) from None
            raise RepositoryError(str(exc)) from None  # IdentityRequired, KeyFileError (a wrong identity)

    def blob_intact(self, blob_id: bytes, stored: bytes | memoryview, loc: BlobLocation) -> Optional[bool]:
        """Whether a stored blob decodes to content matching its id; None when this node cannot tell
        (a data blob of an encrypted repository without an identity: its pack's hash vouches for it)."""
        try:
            if self.cipher is not None:
                if kind_of(loc.flags) != KIND_TREE and self.cipher.identity_file is None:
                    return None
                stored = self._open_sealed(blob_id, stored, loc, Handle(Kind.DATA, loc.pack.hex()))
            return self.hash_blob(decode_blob(stored, loc.flags, loc.raw_length)) == blob_id
        except DataKeyLost:
            raise
        except DamagedBlobError:
            return False
        except RepositoryError:
            raise
        except Exception:  # a corrupt zstd frame is damage, not a crash of verify
            return False

    def check_keys(self) -> List[str]:
        """Problems of an encrypted repository's wrapped keys, each naming the object (none: unencrypted)."""
        if self.cipher is None:
            return []
        from agent.crypt.bootstrap import check_key_objects

        return check_key_objects(self.cipher.backend, self.cipher.node)

    def missing_data_keys(self, named: Set[str]) -> List[str]:
        """Of the data key objects `named` (by blobs), those not stored, each named as a problem: their
        blobs cannot be opened (an identity's holder finds out only at restore otherwise)."""
        if self.cipher is None or not named:
            return []
        stored = {info.name for info in self.backend.list(Kind.PACK_KEYS)}
        return [f"{self.backend.describe(Handle(Kind.PACK_KEYS, name))}: missing (blobs name it as their data key)"
                for name in sorted(named - stored)]

    def remove_unused_data_keys(self, live: List[Tuple[bytes, BlobLocation]]) -> int:
        """Remove an encrypted repository's data key objects that no blob of `live` names (all the blobs the
        index prune just wrote holds, every other pack deleted): those of deleted packs, and orphans of a
        failed backup or a killed prune. Returns how many; none when a blob's head cannot be read. Only
        under the exclusive lock."""
        if self.cipher is None:
            return 0
        with self._read_packs_ahead(loc for _, loc in live):
            named = data_key_names(self.backend, live)
        unused = [] if named is None else [info.name for info in self.backend.list(Kind.PACK_KEYS)
                                           if info.name not in named]
        for name in unused:
            self.backend.remove(Handle(Kind.PACK_KEYS, name))
        return len(unused)

    def packs(self) -> Dict[bytes, int]:
        """Every stored pack (indexed or not): id -> size in bytes."""
        return {bytes.fromhex(info.name): info.size for info in self.backend.list(Kind.DATA)
                if len(info.name) == 64}

    def load_pack(self, pack_id: bytes) -> Optional[bytes]:
        """A whole pack's bytes, None if it is missing."""
        try:
            return self.backend.load(Handle(Kind.DATA, pack_id.hex()))
        except NotFound:
            return None

    def pack_blobs(self, pack_id: bytes, size: int) -> List[Tuple[bytes, BlobLocation]]:
        """The blobs a pack of `size` bytes lists in its own trailer (read by range, not whole): where its
        blobs are when no index names it. Raises ValueError naming the pack if it is malformed (or,
        encrypted, its trailer does not authenticate), NotFound if it is missing."""
        handle = Handle(Kind.DATA, pack_id.hex())
        with self.backend.read_ahead([]):  # two or three small ranges: never the whole pack
            entries = read_trailer_range(lambda offset, length: self.backend.load(handle, length, offset), size,
                                         self.cipher)
        if entries is None:
            raise ValueError("malformed, or its blob list does not authenticate")
        return [(blob_id, BlobLocation(pack_id, offset, length, raw, flags))
                for blob_id, flags, offset, length, raw in entries]

    def describe_pack(self, pack_id: bytes) -> str:
        return self.backend.describe(Handle(Kind.DATA, pack_id.hex()))

    def remove_pack(self, pack_id: bytes) -> None:
        self.backend.remove(Handle(Kind.DATA, pack_id.hex()))

    def index_problems(self) -> List[str]:
        """Damaged index files (and unreadable pack trailers) of the loaded index, each message naming the
        object and what was done instead (see agent.store.index); empty if the index is not loaded."""
        return self.index.problems() if self.index.loaded else []

    def replace_index(self, entries: List[Tuple[bytes, BlobLocation]]) -> None:
        """Write `entries` as the complete index, then remove every other index file and the damage
        records (the new index names no damaged copy). Only under the exclusive lock."""
        old_files = self.index.files + sorted(self.index.unreadable)  # prune read the packs of those
        old_damage = self.index.damage_files
        new_name = self.index.write(entries)
        for name in old_files:
            if name != new_name:
                self.backend.remove(Handle(Kind.INDEX, name))
        for name in old_damage:
            self.backend.remove(Handle(Kind.DAMAGE, name))
        self.index.reload()

    def record_damage(self, pairs: List[Tuple[bytes, bytes]]) -> Optional[str]:
        """Record (blob id, pack id) copies as damaged: lookups skip them from now on, so the next backup
        that reads their content stores it again. Returns the record's name (None: nothing to record)."""
        if not pairs:
            return None
        name, data = encode_damage(pairs)
        self.backend.save(Handle(Kind.DAMAGE, name), [data])
        self._undamaged_until = 0.0
        self.refresh()
        return name

    def unhealed(self) -> frozenset:
        """Ids of blobs recorded as damaged that have no good copy yet (empty: nothing to heal). While
        nothing is recorded this costs one listing per UNDAMAGED_S (a no-change backup does not load the
        index; the jobs of one `backup --all` share the listing): damage that verify records meanwhile is
        healed by the next run after that."""
        if not self.index.loaded:
            now = time.monotonic()
            if now < self._undamaged_until:
                return frozenset()
            if not self.backend.list(Kind.DAMAGE):
                self._undamaged_until = now + UNDAMAGED_S
                return frozenset()
        return self.index.unhealed()

    def tree_unhealed(self, snapshot_id: str, damaged: frozenset) -> bool:
        """Whether the snapshot's file list is stored in one of the `damaged` blobs."""
        try:
            tree = self.load_snapshot(snapshot_id).tree
        except RepositoryError:
            return True
        return any(bytes.fromhex(blob) in damaged for blob in tree)

    def remove_leftovers(self) -> int:
        """Delete what crashed writers left (temp files); only under the exclusive lock."""
        return self.backend.remove_leftovers()

    @property
    def holds_index(self) -> bool:
        return self.index.loaded

    def release(self) -> None:
        """Let go of the loaded index and open packs (both are reloaded on next use): an idle agent need
        not hold them."""
        self.index.drop()
        self.backend.release()

    def close(self) -> None:
        self.backend.close()

    # --- snapshots ----------------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> Snapshot:
        return self._snapshots.save(snapshot)

    def has_snapshot(self, snapshot_id: str) -> bool:
        return self._snapshots.exists(snapshot_id)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """Raises RepositoryError naming the document if it is missing or damaged."""
        return self._snapshots.load(snapshot_id)

    def snapshots(self, job: Optional[str] = None, host: Optional[str] = None) -> List[Snapshot]:
        """Readable snapshots (of `job`, made by `host`; None: every one), oldest first; damaged documents
        are left out (see damaged_snapshots)."""
        return self._snapshots.list(job, host)[0]

    def damaged_snapshots(self) -> List[DamagedSnapshot]:
        """Snapshot documents that cannot be read, each with its storage name and why."""
        return self._snapshots.list(None)[1]

    def all_snapshots(self) -> Tuple[List[Snapshot], List[DamagedSnapshot]]:
        """(every readable snapshot oldest first, the documents that cannot be read), from one listing: a
        caller that acts on the whole (prune) must see both halves of the same view, since a document
        may fail in one listing and not in the next."""
        return self._snapshots.list(None)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._snapshots.delete(snapshot_id)

    def history(self, job: str, host: Optional[str] = None) -> List[Snapshot]:
        """The job's readable snapshots made by `host` (None: by any host sharing the repository), oldest
        first as far as this host can tell: those dated ahead of its clock by more than
        snapshots.FUTURE_MARGIN_S (made while a clock was wrong) come before the rest, so that one wrong
        clock cannot pin JOB:latest."""
        return self._snapshots.history(job, host)

    def histories(self, host: Optional[str]) -> Tuple[Dict[str, List[Snapshot]], List[DamagedSnapshot]]:
        """({job: `history(job, host)`} for every job with a readable snapshot, the damaged documents),
        from one listing of the snapshot documents."""
        return self._snapshots.histories(host)

    def find_snapshot(self, ref: str) -> Snapshot:
        """An id, a unique id prefix, or JOB:latest (see SnapshotStore.latest)."""
        return self._snapshots.find(ref)


__all__ = ["BackendError", "BlobWriter", "DamagedBlobError", "DamagedSnapshot", "KeyUnusable", "PreparedBlob",
           "Repository",
           "RepositoryError", "Snapshot", "SnapshotUnreadable"]
