"""Wording shared by every human-readable output (the command, the daemon's log, the collector):
counts with the right plural."""

from __future__ import annotations

from typing import Optional


def plural(count: int, singular: str, many: Optional[str] = None) -> str:
    """`1 file`, `2 files`, `0 files`; `many` for irregular plurals (`plural(2, "entry", "entries")`)."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"
