"""Gitignore-style exclusion rules of a job, shared by the snapshot walk and the watcher.

One set of rules decides both what is never stored and which events never trigger a backup, so a busy
catalina.out can neither enter a snapshot nor start one. The rules live with the walk, which they define;
the watcher (agent.watch) depends on them, never the other way round.
"""

from __future__ import annotations

from typing import Sequence

import pathspec
import xxhash


class IgnoreRules:
    """`keep_excluded_dirs`: an excluded directory is still recorded, empty (its mode, owner and xattrs;
    never its contents), so that a restored Tomcat has the logs/, temp/ and work/ it needs to start.
    Off for rules that only select what to back up (riak's paths walked from /)."""

    def __init__(self, patterns: Sequence[str], keep_excluded_dirs: bool = True) -> None:
        self.patterns = tuple(patterns)
        self.keep_excluded_dirs = keep_excluded_dirs
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns) if self.patterns else None
        # Lets the files cache know whether its record of "included last time" still holds.
        self.digest = xxhash.xxh3_64_hexdigest(("\0".join(self.patterns) + f"\0{keep_excluded_dirs}").encode())

    def excludes(self, relpath: str, is_dir: bool) -> bool:
        """Whether `relpath` (relative to the job's path, '/'-separated) is excluded."""
        if self._spec is None or not relpath or relpath == ".":
            return False
        return self._spec.match_file(relpath + "/" if is_dir else relpath)

    def excludes_any_parent(self, relpath: str) -> bool:
        """Whether `relpath` or one of its parent directories is excluded (for single events)."""
        parts = relpath.split("/")
        return any(self.excludes("/".join(parts[:depth]), True) for depth in range(1, len(parts)))
