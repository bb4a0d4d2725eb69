"""The tree backup run in-process against a real repository and a real tree, for tests that make a race
certain by wrapping a system call, or that hand the walk a change set as the watcher would."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from agent.snapshot.cache import FilesCache
from agent.snapshot.changes import ChangeSet
from agent.snapshot.fs import TreeResult, backup_tree
from agent.snapshot.ignore import IgnoreRules
from agent.store import Repository
from agent.store.manifest import Entry
from agent.store.tree import read_tree


class Runner:
    """Backs up trees into one repository, with a files cache kept between runs (one job)."""

    def __init__(self, base) -> None:
        self.repo = Repository.open(str(base / "repo"), create=True)
        self.cache_path = str(base / "state" / "job.files")
        self.runs = 0

    def backup(self, root: str, changes: Optional[ChangeSet] = None, exclude=(), trigger: str = "manual"
               ) -> Tuple[TreeResult, Dict[str, Entry]]:
        """The run's result and its snapshot's entries by path."""
        self.runs += 1
        result = backup_tree(self.repo, root, IgnoreRules(exclude), FilesCache.load(self.cache_path), job="svc",
                             job_type="fs", host="h", trigger=trigger,
                             now=f"2026-11-30T10:{self.runs // 60:02d}:{self.runs % 60:02d}.000000Z", changes=changes)
        entries = {entry.path: entry for entry in read_tree(self.repo, result.snapshot.tree)} if result.snapshot else {}
        return result, entries

    def content(self, entry: Entry) -> bytes:
        return b"".join(self.repo.read_blob(chunk) for chunk in entry.chunks)

    def close(self) -> None:
        self.repo.close()
