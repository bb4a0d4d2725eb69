"""How a long operation (backup, restore, verify --read-data, drill) tells its caller how far it got,
without knowing who listens: a terminal bar, a log, or nobody. The operations take an optional `Progress`
and call it; agent/cli/progress.py draws it on a terminal."""

from __future__ import annotations

from typing import Optional, Protocol


class Progress(Protocol):
    """Counts of files (or packs, for verify) and bytes done. Called from the operation's threads; an
    implementation must be thread-safe and cheap (backup calls it once per directory and per file read)."""

    def expect(self, files: Optional[int], bytes: Optional[int]) -> None:
        """The totals, when the operation knows them up front (restore, verify): they give an ETA."""

    def advance(self, files: int = 0, bytes: int = 0) -> None:
        """`files` more done, `bytes` more read or written."""
