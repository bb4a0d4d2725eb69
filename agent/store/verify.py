"""Verify a repository: every snapshot's tree and data blobs are indexed and their packs present; with
read_data, every pack is re-hashed and every blob decompressed and checked against its id. Damage is
named per object, with the snapshots and files it affects."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

from agent.store.index import BlobLocation
from agent.store.pack import decode_blob
from agent.store.repository import Repository
from agent.store.tree import read_tree, referenced_chunks


@dataclass
class VerifyResult:
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    damaged: Dict[str, str] = field(default_factory=dict)  # blob hex -> reason
    affected: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))  # blob hex -> where
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def _check_pack(path: str, pack: bytes, blobs: List[Tuple[bytes, BlobLocation]]
                ) -> Tuple[Dict[str, str], List[str]]:
    """Damaged blobs and problems of one pack, read whole (runs in a worker process)."""
    damaged: Dict[str, str] = {}
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {blob_id.hex(): f"its pack {pack.hex()} is missing" for blob_id, _ in blobs}, []
    problems = []
    if hashlib.sha256(data).digest() != pack:
        problems.append(f"pack {pack.hex()}: content does not match its name (damaged)")
    view = memoryview(data)
    for blob_id, loc in blobs:
        stored = view[loc.offset: loc.offset + loc.length]
        try:
            ok = len(stored) == loc.length and \
                hashlib.sha256(decode_blob(stored, loc.flags, loc.raw_length)).digest() == blob_id
        except Exception:  # a corrupt zstd frame is damage, not a crash of verify
            ok = False
        if not ok:
            damaged[blob_id.hex()] = f"content in pack {pack.hex()} does not match its id"
    return damaged, problems


def _check_structure(repo: Repository, pack: bytes, blobs: List[Tuple[bytes, BlobLocation]],
                     result: VerifyResult) -> None:
    try:
        size = os.stat(repo.pack_path(pack)).st_size
    except FileNotFoundError:
        size = -1
    for blob_id, loc in blobs:
        if size < 0:
            result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is missing"
        elif loc.offset + loc.length > size:
            result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is truncated"


def verify_repository(repo: Repository, read_data: bool = False) -> VerifyResult:
    result = VerifyResult()
    try:
        repo.index.reload()
    except (OSError, ValueError) as exc:
        result.problems.append(f"index: {exc}")
        return result
    by_pack: Dict[bytes, List[Tuple[bytes, BlobLocation]]] = defaultdict(list)
    for blob_id, loc in repo.index.items():
        by_pack[loc.pack].append((blob_id, loc))
    result.packs = len(by_pack)
    result.blobs = len(repo.index)
    pool = None
    futures = []
    if read_data:
        # 100k small blobs are mostly per-blob interpreter work: one process per core, not threads;
        # the file lists below are read meanwhile
        workers = max(1, min(4, os.cpu_count() or 1))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
        futures = [pool.submit(_check_pack, repo.pack_path(pack), pack, blobs) for pack, blobs in by_pack.items()]
    else:
        for pack, blobs in by_pack.items():
            _check_structure(repo, pack, blobs, result)

    references: List[Tuple[str, object, Set[bytes]]] = []
    ids_by_tree: Dict[Tuple[str, ...], Set[bytes]] = {}
    for snapshot in repo.snapshots():
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

    if pool is not None:
        for future in futures:
            damaged, problems = future.result()
            result.damaged.update(damaged)
            result.problems.extend(problems)
        pool.shutdown()

    # each distinct chunk id is looked up once, however many snapshots share it, in C set operations
    damaged_ids = {bytes.fromhex(key) for key in result.damaged}
    referenced_ids: Set[bytes] = set().union(*ids_by_tree.values())
    unusable = (referenced_ids - repo.index.ids()) | (referenced_ids & damaged_ids)
    for where, snapshot, referenced in references:
        tree_damage = [blob for blob in snapshot.tree  # type: ignore[attr-defined]
                       if blob in result.damaged or bytes.fromhex(blob) not in repo.index]
        if tree_damage:
            for blob in tree_damage:
                result.damaged.setdefault(blob, "tree blob missing from the index")
                result.affected[blob].append(f"{where}: its file list")
            continue
        missing = referenced & unusable
        if not missing:
            continue
        for blob in missing:
            result.damaged.setdefault(blob.hex(), "missing from the index")
        for entry in read_tree(repo, snapshot.tree):  # type: ignore[attr-defined]
            for chunk in entry.chunks:
                if chunk in missing:
                    result.affected[chunk.hex()].append(f"{where}: {entry.path}")
    return result
