"""Prune: forget snapshots beyond each job's retention, then delete the data no snapshot needs.

Order matters for crash safety: manifests are removed first, then the packs holding still-needed blobs
next to garbage are rewritten and a complete new index is written, and only then are old index files and
packs deleted, and last the data keys (encrypted repositories) that no remaining blob names. A crash
between any two steps leaves a repository that verifies. The exclusive repository lock keeps backups out
while this runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Set, Tuple

from agent.config import Retention
from agent.store import DamagedSnapshot, Repository, RepositoryError, Snapshot
from agent.store.index import BlobLocation
from agent.store.pack import TARGET_SIZE
from agent.store.tree import referenced_chunks
from agent.text import plural

_REPACK_IF_UNUSED = 0.2
Blobs = List[Tuple[bytes, BlobLocation]]


def _local(snapshot: Snapshot) -> time.struct_time:
    stamp = datetime.fromisoformat(snapshot.time.replace("Z", "+00:00")).timestamp()
    return time.localtime(stamp)


def select_kept(snapshots: List[Snapshot], policy: Retention) -> Set[str]:
    """Ids to keep: the newest keep_last, and the newest of each of the last N days, weeks and months
    (local time), like restic's `forget --keep-*`."""
    newest_first = sorted(snapshots, key=lambda snap: (snap.time, snap.id), reverse=True)
    keep = {snap.id for snap in newest_first[: policy.keep_last]}
    buckets = (
        (policy.keep_daily, lambda t: time.strftime("%Y-%m-%d", t)),
        (policy.keep_weekly, lambda t: time.strftime("%G-%V", t)),
        (policy.keep_monthly, lambda t: time.strftime("%Y-%m", t)),
    )
    for count, bucket_of in buckets:
        seen: List[str] = []
        for snap in newest_first:
            if len(seen) >= count:
                break
            bucket = bucket_of(_local(snap))
            if bucket not in seen:
                seen.append(bucket)
                keep.add(snap.id)
    return keep


@dataclass
class PruneResult:
    removed: List[Snapshot] = field(default_factory=list)
    kept: List[Snapshot] = field(default_factory=list)
    unknown_jobs: List[str] = field(default_factory=list)
    damaged: List[str] = field(default_factory=list)  # unreadable snapshot documents, kept and named
    packs_deleted: int = 0
    packs_rewritten: int = 0
    bytes_freed: int = 0
    index_replaced: List[str] = field(default_factory=list)  # damaged index files the new index replaced
    keys_deleted: int = 0  # encrypted repositories: data key objects no remaining blob names


def prune_repository(repo: Repository, policies: Dict[str, Retention], dry_run: bool = False,
                     hosts: Optional[Set[str]] = None) -> PruneResult:
    """Apply `policies` (job name -> retention) to the snapshots of the hosts `hosts` (None: of every
    host), then delete the data no remaining snapshot needs. Snapshots of a job without a policy, or of
    another host, are kept."""
    result = PruneResult()
    readable, damaged = repo.all_snapshots()  # one view: a document failing in a second listing goes unseen
    _refuse_unserved(damaged)
    result.damaged = [document.reason for document in damaged]
    # retention counts each host's snapshots of a job apart (restic groups by host too): in a repository
    # shared by a fleet, a busy host must never push another host's snapshots of the same job out
    groups: Dict[Tuple[str, str], List[Snapshot]] = {}
    for snap in readable:
        groups.setdefault((snap.job, snap.host), []).append(snap)
    for (job, host), snaps in sorted(groups.items()):
        if hosts is not None and host not in hosts:
            result.kept.extend(snaps)  # another host's: its own retention applies, where it prunes
            continue
        policy: Optional[Retention] = policies.get(job)
        if policy is None:
            if job not in result.unknown_jobs:
                result.unknown_jobs.append(job)  # never delete what the configuration does not describe
            result.kept.extend(snaps)
            continue
        keep = select_kept(snaps, policy)
        for snap in snaps:
            (result.kept if snap.id in keep else result.removed).append(snap)
    if dry_run:
        return result
    for snap in result.removed:
        repo.delete_snapshot(snap.id)
    _collect_garbage(repo, result)
    return result


def _refuse_unserved(damaged: List[DamagedSnapshot]) -> None:
    """Raises RepositoryError if a snapshot document was not served by the storage: it may be any job's
    and still need its data, so nothing may be forgotten or deleted on a view without it. (A document
    that was read and found damaged is kept and named, its data no longer known to be needed.)"""
    unserved = [document for document in damaged if document.unserved]
    if unserved:
        more = f" (and {plural(len(unserved) - 1, 'more document')})" if len(unserved) > 1 else ""
        raise RepositoryError(f"{unserved[0].reason}{more}: what it needs is unknown, so nothing was pruned "
                              "(no snapshot forgotten, no data deleted); prune again once the storage serves it")


def _used_blobs(repo: Repository, kept: List[Snapshot]) -> Set[bytes]:
    """Every blob a kept snapshot needs; raises RepositoryError (before anything is deleted) if a file
    list cannot be read: what it needs is then unknown."""
    used: Set[bytes] = set()
    for snap in kept:
        used.update(bytes.fromhex(blob) for blob in snap.tree)
        try:
            used.update(referenced_chunks(repo, snap.tree))
        except (RepositoryError, ValueError) as exc:
            raise RepositoryError(f"snapshot {snap.id[:12]} ({snap.job} {snap.time}): file list unreadable "
                                  f"({exc}); no data was deleted (run verify)") from None
    return used


def _blobs_by_pack(repo: Repository) -> Dict[bytes, Blobs]:
    """The index's blobs by pack. The index holds the packs no readable index file names too (an index
    file damaged or lost, a crash between pack and index), read from their own blob lists (pack
    trailers), so the new index names again those a snapshot needs."""
    by_pack: Dict[bytes, Blobs] = {}
    for blob_id, loc in repo.index.items():
        by_pack.setdefault(loc.pack, []).append((blob_id, loc))
    return by_pack


def _collect_garbage(repo: Repository, result: PruneResult) -> None:
    repo.index.reload()
    used = _used_blobs(repo, result.kept)
    by_pack = _blobs_by_pack(repo)
    # a pack whose blob list cannot be read may hold what a snapshot misses: kept then, never guessed at
    unknown = set(repo.index.unlisted) if used - repo.index.ids() else set()
    # a pack holding a copy found damaged is rewritten without it, whatever else it holds
    damaged_packs = {pack for packs in repo.index.damaged().values() for pack in packs}
    new_index: Blobs = []
    writer = repo.pack_writer()
    for pack, blobs in by_pack.items():
        live = [(blob_id, loc) for blob_id, loc in blobs if blob_id in used]
        dead_bytes = sum(loc.length for blob_id, loc in blobs if blob_id not in used)
        total = sum(loc.length for _, loc in blobs)
        if not live:
            continue  # deleted below: no new index names it
        if dead_bytes > _REPACK_IF_UNUSED * total or pack in damaged_packs:
            data = repo.load_pack(pack)
            if data is None:  # gone already: its blobs are lost whatever prune does; verify names them
                continue
            for blob_id, loc in live:
                writer.add(blob_id, data[loc.offset: loc.offset + loc.length], loc.raw_length, loc.flags)
                if writer.size >= TARGET_SIZE:
                    new_index.extend(writer.finish())
                    writer = repo.pack_writer()
            result.packs_rewritten += 1
        else:
            new_index.extend(live)
    if len(writer):
        new_index.extend(writer.finish())
    result.index_replaced = sorted(repo.index.unreadable)
    repo.replace_index(new_index)
    indexed = {loc.pack for _, loc in new_index}
    for pack, size in repo.packs().items():
        if pack not in indexed and pack not in unknown:  # obsolete, or orphaned by a crash before its index
            repo.remove_pack(pack)
            result.bytes_freed += size
            result.packs_deleted += 1
    if not unknown:  # the blobs of a pack whose blob list cannot be read may name any key: all are kept
        result.keys_deleted = repo.remove_unused_data_keys(new_index)  # last: a crash before leaves orphans
    repo.remove_leftovers()
