"""Progress on the terminal, on stderr, for backup, restore and verify --read-data: files, bytes, rate and
(when the operation knows its totals) ETA, drawn by tqdm. Only when stderr is a terminal and the output
is not --json; otherwise the operations get None and report nothing."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

from agent.progress import Progress
from agent.text import plural


class TerminalProgress:
    """A `Progress` drawn as one tqdm line on stderr: bytes as the bar (rate, ETA), files as a count."""

    def __init__(self, label: str, unit: str = "file", many: Optional[str] = None) -> None:
        from tqdm import tqdm

        self.unit, self.many = unit, many
        self.files = 0
        self.total_files: Optional[int] = None
        self.lock = threading.Lock()
        # SI units (MB = 10^6 B), as tqdm always scales the rate: with unit_divisor=1024 the amounts were
        # MiB and the rate MB, both labelled "MB"
        self.bar = tqdm(desc=label, file=sys.stderr, unit="B", unit_scale=True, unit_divisor=1000,
                        **_size(), leave=True, mininterval=0.2)

    def expect(self, files: Optional[int], bytes: Optional[int]) -> None:
        with self.lock:
            self.total_files = files
            if bytes is not None:
                self.bar.reset(total=bytes)
            self._show()

    def advance(self, files: int = 0, bytes: int = 0) -> None:
        with self.lock:
            self.files += files
            self._show()
            if bytes:
                self.bar.update(bytes)

    def _show(self) -> None:
        if self.total_files is None:
            shown = plural(self.files, self.unit, self.many)
        else:
            shown = f"{self.files}/{plural(self.total_files, self.unit, self.many)}"
        self.bar.set_postfix_str(shown, refresh=False)

    def close(self) -> None:
        with self.lock:
            self.bar.close()


def _size() -> Dict[str, int]:
    """tqdm's `ncols` and `nrows` from stderr's terminal. A terminal that reports no size (a fresh
    pseudo-terminal, a serial console) gets $COLUMNS/$LINES or 80x24: with the zero size it reports,
    tqdm would draw nothing at all."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        columns, lines = 0, 0
    fallback = shutil.get_terminal_size()
    return {"ncols": columns or fallback.columns, "nrows": lines or fallback.lines}


def wanted(as_json: bool = False) -> bool:
    """Progress is drawn only on a terminal, and never with --json."""
    return not as_json and sys.stderr.isatty()


@contextmanager
def progress(label: str, as_json: bool = False, unit: str = "file",
             many: Optional[str] = None) -> Iterator[Optional[Progress]]:
    """A `Progress` for the operation named `label` while the block runs, or None when none is wanted.
    Its count reads `unit` (`many` when irregular: "entry", "entries")."""
    if not wanted(as_json):
        yield None
        return
    shown = TerminalProgress(label, unit, many)
    try:
        yield shown
    finally:
        shown.close()
