"""A change set: what the watcher saw change in one job's tree since its last backup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet


@dataclass(frozen=True)
class ChangeSet:
    """Paths are absolute. `paths` are re-examined one by one (a file written, a directory's own
    metadata); `trees` are directories to walk whole (created or moved in); `full` asks for a full scan
    (start-up, daily run, lost events)."""

    paths: FrozenSet[str] = frozenset()
    trees: FrozenSet[str] = frozenset()
    full: bool = False

    @classmethod
    def everything(cls) -> ChangeSet:
        return cls(full=True)

    def merge(self, other: ChangeSet) -> ChangeSet:
        return ChangeSet(self.paths | other.paths, self.trees | other.trees, self.full or other.full)

    def __bool__(self) -> bool:
        return bool(self.full or self.paths or self.trees)
