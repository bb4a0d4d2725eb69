"""Verify a repository: every snapshot's tree and data blobs are indexed and their packs present; with
read_data, every pack is re-hashed and every blob decompressed and checked against its id. Damage is
named per object, with the snapshots and files it affects, and recorded in the repository (a damage
record) so that no backup deduplicates against a damaged copy and the next backup that reads the
content stores it again. Snapshot documents that cannot be read are named too; the rest is checked."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from agent.backend import BackendError
from agent.progress import Progress
from agent.store import Repository, RepositoryError
from agent.store.index import KIND_TREE, BlobLocation, kind_of
from agent.store.pack import KEY_REF
from agent.store.repository import DataKeyLost
from agent.store.tree import read_tree, referenced_chunks

Blobs = List[Tuple[bytes, BlobLocation]]


@dataclass
class VerifyResult:
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    damaged: Dict[str, str] = field(default_factory=dict)  # blob hex -> reason
    affected: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))  # blob hex -> where
    problems: List[str] = field(default_factory=list)
    recorded: int = 0  # damaged copies recorded in this run (the next backups store them again)
    damage_record: Optional[str] = None  # the damage record's name, if one was written

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


_REPO: Optional[Repository] = None  # the repository a forked worker reads (set before the pool forks)


def _check_pack(pack: bytes, blobs: Blobs) -> Tuple[Dict[str, str], List[str], List[Tuple[bytes, bytes]], Set[str]]:
    """Damaged blobs, problems, damaged (blob, pack) copies and (encrypted) the data key objects its blobs
    name, of one pack read whole (runs in a worker process)."""
    assert _REPO is not None
    try:
        data = _REPO.load_pack(pack)
    except BackendError as exc:  # the server's error, not the pack's: never recorded as damage
        return {}, [f"pack {pack.hex()} cannot be read: {exc} (not recorded as damage: verify again "
                    "once the storage answers)"], [], set()
    except OSError as exc:  # an I/O error: every blob of the pack is unusable
        return ({blob_id.hex(): f"its pack {pack.hex()} cannot be read ({exc})" for blob_id, _ in blobs},
                [], [(blob_id, pack) for blob_id, _ in blobs], set())
    if data is None:
        return ({blob_id.hex(): f"its pack {pack.hex()} is missing" for blob_id, _ in blobs}, [],
                [(blob_id, pack) for blob_id, _ in blobs], set())
    damaged: Dict[str, str] = {}
    pairs = []
    problems = []
    if hashlib.sha256(data).digest() != pack:
        problems.append(f"pack {pack.hex()}: content does not match its name (damaged)")
    view = memoryview(data)
    pack_ok = not problems
    keys: Set[str] = set()  # a sealed data blob starts with the name of its data key (agent.crypt.seal)
    for blob_id, loc in blobs:
        stored = view[loc.offset: loc.offset + loc.length]
        if _REPO.cipher is not None and kind_of(loc.flags) != KIND_TREE and len(stored) >= KEY_REF:
            keys.add(bytes(stored[:KEY_REF]).hex())
        # None: a data blob of an encrypted repository checked without an identity; the pack's hash
        # (its name, in the authenticated index) vouches for every byte of it
        try:
            intact = _REPO.blob_intact(blob_id, stored, loc) if len(stored) == loc.length else False
        except DataKeyLost as exc:  # not damage of the blob: never recorded, so a key put back heals it
            if exc.reason not in problems:
                problems.append(exc.reason)
            continue
        if not (intact or (intact is None and pack_ok)):
            damaged[blob_id.hex()] = f"content in pack {pack.hex()} does not match its id"
            pairs.append((blob_id, pack))
    return damaged, problems, pairs, keys


def _check_structure(sizes: Dict[bytes, int], pack: bytes, blobs: Blobs, result: VerifyResult,
                     pairs: List[Tuple[bytes, bytes]]) -> None:
    """Without reading data: the pack is stored and long enough for every blob the index puts in it."""
    size = sizes.get(pack, -1)
    for blob_id, loc in blobs:
        if size < 0:
            result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is missing"
        elif loc.offset + loc.length > size:
            result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is truncated"
        else:
            continue
        pairs.append((blob_id, pack))


def _check_packs(repo: Repository, by_pack: Dict[bytes, Blobs], read_data: bool, result: VerifyResult,
                 pairs: List[Tuple[bytes, bytes]], progress: Optional[Progress] = None):
    """Structure now, or (read_data) a pool re-hashing packs meanwhile: returns a function that waits
    for the pool's results."""
    global _REPO
    if not read_data:
        sizes = repo.packs()
        for pack, blobs in by_pack.items():
            _check_structure(sizes, pack, blobs, result, pairs)
        return lambda: None
    # 100k small blobs are mostly per-blob interpreter work: one process per core, not threads; the
    # file lists are read meanwhile
    _REPO = repo
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    futures = [pool.submit(_check_pack, pack, blobs) for pack, blobs in by_pack.items()]
    if progress is not None:  # packs as the files, their blobs' stored bytes as the bytes
        stored = [sum(loc.length for _, loc in blobs) for blobs in by_pack.values()]
        progress.expect(len(stored), sum(stored))
        for future, size in zip(futures, stored):
            future.add_done_callback(lambda _, size=size: progress.advance(files=1, bytes=size))

    def collect() -> None:
        try:
            named: Set[str] = set()
            for future in futures:
                damaged, problems, found, keys = future.result()
                result.damaged.update(damaged)
                result.problems.extend(problems)
                pairs.extend(found)
                named |= keys
            result.problems.extend(repo.missing_data_keys(named))
        finally:
            pool.shutdown()
    return collect


def verify_repository(repo: Repository, read_data: bool = False, record: bool = True,
                      progress: Optional[Progress] = None) -> VerifyResult:
    """Check `repo`; with `record`, damaged copies found are recorded (see the module docstring).
    With `read_data`, `progress` is told the packs and bytes to read, then each pack as it is done."""
    result = VerifyResult()
    try:
        repo.index.reload()
    except (OSError, ValueError, RepositoryError) as exc:
        result.problems.append(f"index: {exc}")
        return result
    result.problems.extend(f"index: {problem}" for problem in repo.index.problems())
    by_pack: Dict[bytes, Blobs] = defaultdict(list)
    for blob_id, loc in repo.index.items():
        by_pack[loc.pack].append((blob_id, loc))
    result.packs = len(by_pack)
    result.blobs = len(repo.index)
    pairs: List[Tuple[bytes, bytes]] = []
    collect = _check_packs(repo, by_pack, read_data, result, pairs, progress)

    readable, damaged = repo.all_snapshots()  # one listing: each document is fetched once
    result.problems.extend(document.reason for document in damaged)
    if read_data:
        result.problems.extend(repo.check_keys())
    references: List[Tuple[str, object, Set[bytes]]] = []
    ids_by_tree: Dict[Tuple[str, ...], Set[bytes]] = {}
    for snapshot in readable:
        result.snapshots += 1
        where = f"snapshot {snapshot.id[:12]} ({snapshot.job} {snapshot.time})"
        if snapshot.tree not in ids_by_tree:
            try:
                ids_by_tree[snapshot.tree] = referenced_chunks(repo, snapshot.tree)
            except Exception as exc:  # damaged tree blobs are named below; other trouble is reported here
                ids_by_tree[snapshot.tree] = set()
                if all(bytes.fromhex(blob) in repo.index for blob in snapshot.tree):
                    result.problems.append(f"{where}: file list unreadable: {exc}")
        references.append((where, snapshot, ids_by_tree[snapshot.tree]))
    collect()
    _hint_healed(repo, result)
    _name_affected(repo, result, references, ids_by_tree)
    if record and pairs:
        result.damage_record = repo.record_damage(pairs)
        result.recorded = len(set(pairs))
    return result


def _hint_healed(repo: Repository, result: VerifyResult) -> None:
    """A damaged pack whose damaged blobs a backup has stored again stays a problem (it is still in the
    repository) until prune drops it: say so, so that the operator knows what to do."""
    recorded: Dict[bytes, Set[bytes]] = defaultdict(set)  # pack -> blobs recorded damaged in it
    for blob_id, packs in repo.index.damaged().items():
        for pack in packs:
            recorded[pack].add(blob_id)
    healed = {pack.hex() for pack, blobs in recorded.items() if all(blob in repo.index for blob in blobs)}
    for number, problem in enumerate(result.problems):
        pack = problem[len("pack "):].split(":", 1)[0] if problem.startswith("pack ") else ""
        if pack in healed:
            result.problems[number] = (f"{problem}; the data found damaged in it has been stored again by a "
                                       "backup, and `prune` removes the damaged pack")


def _name_affected(repo: Repository, result: VerifyResult, references: List[Tuple[str, object, Set[bytes]]],
                   ids_by_tree: Dict[Tuple[str, ...], Set[bytes]]) -> None:
    """Name every unusable blob a snapshot references, with the snapshot and file."""
    recorded = repo.index.damaged()
    # each distinct chunk id is looked up once, however many snapshots share it, in C set operations
    damaged_ids = {bytes.fromhex(key) for key in result.damaged}
    referenced_ids: Set[bytes] = set().union(*ids_by_tree.values())
    unusable = (referenced_ids - repo.index.ids()) | (referenced_ids & damaged_ids)

    def reason(blob_id: bytes, otherwise: str) -> str:
        if blob_id in recorded:
            return "found damaged by an earlier verify; no backup has stored it again yet"
        return otherwise

    for where, snapshot, referenced in references:
        tree_damage = [blob for blob in snapshot.tree  # type: ignore[attr-defined]
                       if blob in result.damaged or bytes.fromhex(blob) not in repo.index]
        if tree_damage:
            for blob in tree_damage:
                result.damaged.setdefault(blob, reason(bytes.fromhex(blob), "tree blob missing from the index"))
                result.affected[blob].append(f"{where}: its file list")
            continue
        missing = referenced & unusable
        if not missing:
            continue
        for blob in missing:
            result.damaged.setdefault(blob.hex(), reason(blob, "missing from the index"))
        for entry in read_tree(repo, snapshot.tree):  # type: ignore[attr-defined]
            for chunk in entry.chunks:
                if chunk in missing:
                    result.affected[chunk.hex()].append(f"{where}: {entry.path}")
