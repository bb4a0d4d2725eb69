"""Clean-up after a failed or aborted backup: what no snapshot references (the data that run wrote among
it) is deleted at once when the repository is local and nothing else is writing to it, so that a failed
run's leftovers cannot fill the disk under the next run. Otherwise the next prune collects it.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from agent.durable import LockTimeout
from agent.pruner import prune_repository
from agent.store import Repository

log = logging.getLogger("backup-agent")


def collectable(location: str) -> bool:
    """Whether a failed run's data can be collected at once: a local repository (object storage's is
    left to the next prune, which may run elsewhere)."""
    return os.path.isabs(location)


def collect_garbage(repo: Repository) -> Optional[int]:
    """Delete what no snapshot of `repo` (opened as the run opened it: an encrypted repository needs its
    settings) references, if it can be locked exclusively right now; no snapshot is forgotten (no
    retention applies). Returns the bytes freed, None if not now. Never raises: a clean-up must not
    change the outcome of the run it follows."""
    try:
        lock = repo.lock(exclusive=True, purpose="clean-up after a failed backup")
        try:
            lock.acquire(timeout=0, on_wait=lambda _message: None)
        except LockTimeout:
            return None
        try:
            return prune_repository(repo, {}).bytes_freed  # no policy: every snapshot is kept
        finally:
            lock.release()
    except Exception as exc:
        log.warning("clean-up after a failed backup: %s", exc)
        return None
