"""Verify a repository: every snapshot's tree and data blobs are indexed and their packs present; with
read_data, every pack is re-hashed and every blob decompressed and checked against its id. Damage is
named per object, with the snapshots and files it affects."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Set

from agent.store.index import BlobLocation
from agent.store.pack import decode_blob
from agent.store.repository import Repository
from agent.store.tree import read_tree


@dataclass
class VerifyResult:
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    damaged: Dict[str, str] = field(default_factory=dict)  # blob or pack hex -> reason
    affected: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))  # object -> where
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def _check_pack(repo: Repository, pack: bytes, blobs: List[tuple], result: VerifyResult) -> None:
    try:
        with open(repo.pack_path(pack), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        for blob_id, _ in blobs:
            result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is missing"
        return
    if hashlib.sha256(data).digest() != pack:
        result.problems.append(f"pack {pack.hex()}: content does not match its name (damaged)")
    for blob_id, loc in blobs:
        stored = data[loc.offset: loc.offset + loc.length]
        try:
            ok = len(stored) == loc.length and \
                hashlib.sha256(decode_blob(stored, loc.flags, loc.raw_length)).digest() == blob_id
        except Exception:  # a corrupt zstd frame is damage, not a crash of verify
            ok = False
        if not ok:
            result.damaged[blob_id.hex()] = f"content in pack {pack.hex()} does not match its id"
        result.blobs += 1


def verify_repository(repo: Repository, read_data: bool = False) -> VerifyResult:
    result = VerifyResult()
    try:
        repo.index.reload()
    except (OSError, ValueError) as exc:
        result.problems.append(f"index: {exc}")
        return result
    by_pack: Dict[bytes, List[tuple]] = defaultdict(list)
    for blob_id, loc in repo.index.blobs.items():
        by_pack[loc.pack].append((blob_id, loc))
    result.packs = len(by_pack)
    for pack, blobs in by_pack.items():
        if read_data:
            _check_pack(repo, pack, blobs, result)
            continue
        try:
            size = os.stat(repo.pack_path(pack)).st_size
        except FileNotFoundError:
            size = -1
        for blob_id, loc in blobs:
            loc: BlobLocation
            if size < 0:
                result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is missing"
            elif loc.offset + loc.length > size:
                result.damaged[blob_id.hex()] = f"its pack {pack.hex()} is truncated"
            result.blobs += 1

    referenced: Set[bytes] = set()
    for snapshot in repo.snapshots():
        result.snapshots += 1
        where = f"snapshot {snapshot.id[:12]} ({snapshot.job} {snapshot.time})"
        tree_damage = [blob for blob in snapshot.tree
                       if blob in result.damaged or bytes.fromhex(blob) not in repo.index]
        if tree_damage:
            for blob in tree_damage:
                result.damaged.setdefault(blob, "tree blob missing from the index")
                result.affected[blob].append(f"{where}: its file list")
            continue
        try:
            entries = list(read_tree(repo, snapshot.tree))
        except Exception as exc:
            result.problems.append(f"{where}: file list unreadable: {exc}")
            continue
        for entry in entries:
            for chunk in entry.chunks:
                referenced.add(chunk)
                key = chunk.hex()
                if key not in result.damaged and chunk not in repo.index:
                    result.damaged[key] = "missing from the index"
                if key in result.damaged:
                    result.affected[key].append(f"{where}: {entry.path}")
    return result
