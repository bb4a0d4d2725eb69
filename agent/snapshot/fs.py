"""Back up a directory tree: find what it holds (agent.snapshot.walk: a full walk, or only what the
watcher saw change), store new content (agent.snapshot.reader), then write the manifest last and sync
the files cache (agent.snapshot.commit).

Unchanged files (same size, mtime, ctime, inode as in the files cache) are not read. A file whose stat
changed but whose content did not (same seeded xxh3-128) reuses its chunks. If nothing that matters
changed (paths, types, modes, owners, contents, link targets, hard links, extended attributes), no
snapshot is written at all.

A change-triggered run starts from the previous snapshot's entries and re-examines only the paths the
watcher named, so a one-file change in a 100k-file tree neither walks nor stats the whole tree. It walks
the whole tree instead when the job's path is a symlink (the events may describe the directory it
pointed to before), when the rules changed, and when hard links are involved.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

from agent.progress import Progress
from agent.snapshot.cache import FilesCache
from agent.snapshot.changes import ChangeSet
from agent.snapshot.commit import Previous, RunNames, TreeResult, commit
from agent.snapshot.ignore import IgnoreRules
from agent.snapshot.reader import Aborted, FileReader
from agent.snapshot.records import TreeRecords
from agent.snapshot.walk import NeedsFullWalk, TreeWalk
from agent.store import Repository
from agent.store.tree import read_tree
from agent.store.writer import BlobWriter

__all__ = ["Aborted", "TreeResult", "backup_tree"]


def backup_tree(repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache, *, job: str,
                job_type: str, host: str, trigger: str, now: str, changes: Optional[ChangeSet] = None,
                stop: Optional[threading.Event] = None, progress: Optional[Progress] = None) -> TreeResult:
    """Back up the tree at `root` (a directory, or a symlink to one: followed once, at the top) as one
    snapshot of `job`; `cache` is the job's files cache, updated and saved. Raises Aborted when `stop` is
    set, OSError when `root` cannot be opened (NotADirectoryError: it is not a directory). `progress` is
    told the entries listed and the bytes read."""
    stop = stop or threading.Event()
    names = RunNames(job, job_type, host, trigger, now)
    hopeful = cache.repo_id == repo.id and bool(cache.snapshot)
    if changes is not None and not changes.full and hopeful and not os.path.islink(root):
        trusted = _trusted(repo, cache)
        previous = Previous(cache, trusted, trusted and cache.rules == rules.digest)
        if previous.rules_unchanged:
            reader = FileReader(repo, cache, cache.seed, stop)
            run = TreeWalk(root, rules, TreeRecords(cache, cache.seed), reader, cache, True, stop, progress)
            try:
                run.apply_changes(list(read_tree(repo, repo.load_snapshot(cache.snapshot).tree)), changes)
                return commit(repo, root, rules, run.tree, reader, previous, cache, names, run.errors,
                              run.warnings, run.incremental, stop)
            except NeedsFullWalk:  # what it stored so far is kept
                return _walked(repo, root, rules, cache, previous, names, stop, progress, reader.writer)
        return _walked(repo, root, rules, cache, previous, names, stop, progress)
    if not hopeful:
        return _walked(repo, root, rules, cache, Previous(cache, False, False), names, stop, progress)
    # The walk goes on while the repository is asked whether the cache's snapshot still exists (a round
    # trip on object storage, as long as walking a small tree): walked again, without the cache, if not.
    with ThreadPoolExecutor(1, thread_name_prefix="trust-check") as pool:
        asked = pool.submit(_trusted, repo, cache)
        hoped = Previous(cache, True, cache.rules == rules.digest)
        try:
            run, reader = _walk(repo, root, rules, cache, hoped, stop, progress)
        except BaseException:
            asked.cancel()
            raise
        trusted = asked.result()
    if trusted:
        return commit(repo, root, rules, run.tree, reader, hoped, cache, names, run.errors, run.warnings,
                      run.incremental, stop)
    return _walked(repo, root, rules, cache, Previous(cache, False, False), names, stop, progress, reader.writer)


def _trusted(repo: Repository, cache: FilesCache) -> bool:
    """Whether what `cache` knows may be used: the snapshot it was built from still exists (prune never
    deletes the blobs of a live snapshot) and holds no blob recorded as damaged."""
    if not repo.has_snapshot(cache.snapshot):
        return False
    damaged = repo.unhealed()
    return not (damaged and (cache.references(damaged) or repo.tree_unhealed(cache.snapshot, damaged)))


def _walk(repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache, previous: Previous,
          stop: threading.Event, progress: Optional[Progress],
          writer: Optional[BlobWriter] = None) -> Tuple[TreeWalk, FileReader]:
    """A full walk, using what the cache knows if `previous` trusts it; `writer`: the blob writer of a
    walk done before, with what it stored (carried on, never dropped with blobs in an open pack)."""
    cached = cache if previous.trusted else FilesCache(cache.path, seed=cache.seed)
    reader = FileReader(repo, cached, cache.seed, stop)
    reader.writer = writer
    run = TreeWalk(root, rules, TreeRecords(cached, cache.seed), reader, cached, previous.rules_unchanged, stop,
                   progress)
    run.walk()
    return run, reader


def _walked(repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache, previous: Previous,
            names: RunNames, stop: threading.Event, progress: Optional[Progress],
            writer: Optional[BlobWriter] = None) -> TreeResult:
    """A full walk (see _walk), committed."""
    run, reader = _walk(repo, root, rules, cache, previous, stop, progress, writer)
    return commit(repo, root, rules, run.tree, reader, previous, cache, names, run.errors, run.warnings,
                  run.incremental, stop)
