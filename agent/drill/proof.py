"""What a drill found: the value every kind of proof returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from agent.report.model import TableRows


@dataclass(frozen=True)
class Proof:
    """The outcome of proving one snapshot. `errors` empty: proven. `files`/`bytes`: what was restored
    and checked (a dump: one file, its length); `tables`: a mysql dump's tables with their exact row
    counts, as loaded (None for other types)."""

    errors: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = ()
    files: int = 0
    bytes: int = 0
    tables: Optional[Tuple[TableRows, ...]] = None

    @property
    def ok(self) -> bool:
        return not self.errors
