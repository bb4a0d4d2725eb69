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
from typing import Optional

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

__all__ = ["Aborted", "TreeResult", "backup_tree"]


def backup_tree(repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache, *, job: str,
                job_type: str, host: str, trigger: str, now: str, changes: Optional[ChangeSet] = None,
                stop: Optional[threading.Event] = None, progress: Optional[Progress] = None) -> TreeResult:
    """Back up the tree at `root` (a directory, or a symlink to one: followed once, at the top) as one
    snapshot of `job`; `cache` is the job's files cache, updated and saved. Raises Aborted when `stop` is
    set, OSError when `root` cannot be opened (NotADirectoryError: it is not a directory). `progress` is
    told the entries listed and the bytes read."""
    stop = stop or threading.Event()
    trusted = cache.repo_id == repo.id and bool(cache.snapshot) and repo.has_snapshot(cache.snapshot)
    damaged = repo.unhealed() if trusted else frozenset()
    if damaged and (cache.references(damaged) or repo.tree_unhealed(cache.snapshot, damaged)):
        trusted = False  # read everything once: the damaged blobs get stored again
    # what the cache knows is only used while it describes a snapshot that still exists
    cached = cache if trusted else FilesCache(cache.path, seed=cache.seed)
    previous = Previous(cache, trusted, trusted and cache.rules == rules.digest)
    reader = FileReader(repo, cached, cache.seed, stop)
    run: Optional[TreeWalk] = None
    if changes is not None and not changes.full and previous.rules_unchanged and not os.path.islink(root):
        run = TreeWalk(root, rules, TreeRecords(cached, cache.seed), reader, cached, True, stop, progress)
        try:
            run.apply_changes(list(read_tree(repo, repo.load_snapshot(cache.snapshot).tree)), changes)
        except NeedsFullWalk:
            run = None
    if run is None:
        run = TreeWalk(root, rules, TreeRecords(cached, cache.seed), reader, cached, previous.rules_unchanged, stop,
                       progress)
        run.walk()
    return commit(repo, root, rules, run.tree, reader, previous, cache, RunNames(job, job_type, host, trigger, now),
                  run.errors, run.warnings, run.incremental, stop)
