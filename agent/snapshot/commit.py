"""End a tree backup: write the manifest and the snapshot (or find that nothing changed), then bring the
files cache in line with what was committed.

The cache is saved only after the manifest is durable: it must never name blobs that no snapshot holds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.snapshot.cache import FilesCache, owner_of
from agent.snapshot.ignore import IgnoreRules
from agent.snapshot.reader import Aborted, FileReader, StoreFailed
from agent.snapshot.records import TreeRecords
from agent.store import Repository, Snapshot
from agent.store.diff import ManifestDiff, diff_manifests
from agent.store.tree import read_encoded, write_encoded


@dataclass(frozen=True)
class TreeResult:
    """What a tree backup did; the runner turns it into a RunReport."""

    snapshot: Optional[Snapshot]
    changed: bool
    files: int
    bytes: int
    new_bytes: int
    errors: Tuple[str, ...]
    warnings: Tuple[str, ...]
    incremental: bool = False
    changes: Optional[ManifestDiff] = None  # change-triggered runs: since the job's previous snapshot


@dataclass(frozen=True)
class RunNames:
    """How the snapshot is labelled."""

    job: str
    job_type: str
    host: str
    trigger: str
    now: str


@dataclass(frozen=True)
class Previous:
    """The files cache as the run found it: `trusted` if the snapshot it was built from still exists."""

    cache: FilesCache
    trusted: bool
    rules_unchanged: bool


def commit(repo: Repository, root: str, rules: IgnoreRules, tree: TreeRecords, reader: FileReader,
           previous: Previous, cache: FilesCache, names: RunNames, errors: List[str], warnings: List[str],
           incremental: bool, stop) -> TreeResult:
    """Write the snapshot unless nothing that matters changed, then sync `cache` (the object the runner
    loaded, saved to its path). Raises Aborted if `stop` is set before anything is committed."""
    if stop.is_set():
        raise Aborted()
    cached = tree.cache
    kept_bytes, kept_pieces = cached.totals(tree.kept.values())
    hardlinks = tree.hardlinks()
    fingerprint = tree.fingerprint(kept_pieces, hardlinks)
    files = [record for record in tree.records.values() if record.kind == "file"]
    file_count = len(files) + len(tree.kept)
    total_bytes = sum(record.size for record in files) + kept_bytes
    partial = bool(errors)
    unchanged = previous.trusted and fingerprint == previous.cache.fingerprint and not partial
    snapshot: Snapshot
    changes: Optional[ManifestDiff] = None
    manifest = None
    same = None
    if not (unchanged or partial or not previous.trusted):
        # the listing's round trip while the manifest is built (needed unless it finds a snapshot alike)
        with ThreadPoolExecutor(1, thread_name_prefix="snapshot-listing") as pool:
            alike = pool.submit(_latest_alike, repo, names, fingerprint)
            manifest = tree.manifest(hardlinks)
            same = alike.result()
    if unchanged:
        snapshot = repo.load_snapshot(previous.cache.snapshot)
    elif same is not None:
        snapshot, unchanged = same, True
    else:
        if reader.writer is None:
            reader.writer = repo.writer()
        if manifest is None:
            manifest = tree.manifest(hardlinks)
        try:
            blobs = write_encoded(reader.writer, manifest)
            reader.writer.flush()
        except OSError as exc:  # the last packs could not be stored (a full disk): no snapshot
            raise StoreFailed(exc, total_bytes, reader.writer.new_bytes) from exc
        if names.trigger == "change" and previous.trusted:
            changes = diff_manifests(read_encoded(repo, repo.load_snapshot(previous.cache.snapshot).tree), manifest)
        try:
            snapshot = repo.save_snapshot(Snapshot(
                job=names.job, type=names.job_type, host=names.host, time=names.now, trigger=names.trigger,
                tree=blobs, files=file_count, bytes=total_bytes, fingerprint=fingerprint, source=(root,),
                partial=partial, changes=changes.counts() if changes is not None else None))
        except OSError as exc:
            raise StoreFailed(exc, total_bytes, reader.writer.new_bytes) from exc
    new_bytes = reader.writer.new_bytes if reader.writer else 0
    others = tree.others()
    # Rewriting an identical cache is skipped: that is most runs.
    if tree.dirty or not unchanged or file_count != len(cached) or others != cached.others \
            or not previous.rules_unchanged or snapshot.id != cached.snapshot:
        cache.repo_id, cache.snapshot, cache.fingerprint = repo.id, snapshot.id, fingerprint
        cache.rules, cache.seed = rules.digest, tree.seed
        sync_cache(cache, tree, file_count, others)
        try:
            cache.save()
        except OSError as exc:  # the snapshot is committed: the report must still name it
            errors.append(f"cannot save the files cache {cache.path}: {exc.strerror}")
    return TreeResult(snapshot, not unchanged, file_count, total_bytes, new_bytes, tuple(errors), tuple(warnings),
                      incremental, changes)


def _latest_alike(repo: Repository, names: RunNames, fingerprint: str) -> Optional[Snapshot]:
    """The job's latest snapshot if it holds this very tree though the files cache names an older one: the
    run that committed it could not save the cache (state_dir full). Without this, the next run would
    write the same snapshot again. Only this host's: another host sharing the repository may hold the same
    tree, and its snapshot is not this host's backup."""
    latest = repo.snapshots(names.job, names.host)[-1:]
    return latest[0] if latest and latest[0].fingerprint == fingerprint and not latest[0].partial else None


def sync_cache(cache: FilesCache, tree: TreeRecords, file_count: int, others: set) -> None:
    """Make `cache` describe the files of `tree`: patched in place when they are the same files as in the
    cache the run started from (a few changed in a large tree), rebuilt otherwise."""
    cached = tree.cache
    examined = [(rel, (record.key, record.digest, record.extra, record.piece,
                       owner_of(record.mode, record.uid, record.gid), record.xattrs))
                for rel, record in tree.records.items() if record.kind == "file"]
    numbers = [cached.lookup(rel) for rel, _ in examined]
    updates: Dict[int, tuple] = {number: update for number, (_, update) in zip(numbers, examined)
                                 if number is not None}
    if not (cached is cache and file_count == len(cached) and None not in numbers and cache.patch(updates)):
        cache.replace([(rel, *update) for rel, update in examined] +
                      [(rel, cached.key(number), cached.digest(number), cached.chunks(number), cached.piece(number),
                        cached.owner(number), cached.xattrs(number)) for rel, number in tree.kept.items()],
                      others)
    cache.others = others
