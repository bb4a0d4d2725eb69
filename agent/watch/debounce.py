"""Debouncing: turn a burst of file events into one backup.

A job fires once `quiet` has passed with no relevant event, or at the latest `max_delay` after the first
event of the burst if changes keep coming. Events that arrive while a run is in progress are kept for
exactly one follow-up run. The clock (monotonic seconds) is passed in, so tests need no sleeps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.snapshot.changes import ChangeSet


@dataclass
class _Burst:
    first: float
    last: float
    changes: ChangeSet


class Debouncer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bursts: Dict[str, _Burst] = {}
        self._settings: Dict[str, Tuple[float, float]] = {}

    def configure(self, job: str, quiet: float, max_delay: float) -> None:
        with self._lock:
            self._settings[job] = (quiet, max_delay)

    def forget(self, job: str) -> None:
        with self._lock:
            self._settings.pop(job, None)
            self._bursts.pop(job, None)

    def add(self, job: str, changes: ChangeSet, now: float) -> None:
        with self._lock:
            burst = self._bursts.get(job)
            if burst is None:
                self._bursts[job] = _Burst(now, now, changes)
            else:
                burst.last = now
                burst.changes = burst.changes.merge(changes)

    def pending(self, job: str) -> bool:
        with self._lock:
            return job in self._bursts

    def deadline(self, job: str) -> Optional[float]:
        """When the job's burst fires if nothing else arrives."""
        with self._lock:
            burst = self._bursts.get(job)
            if burst is None:
                return None
            quiet, max_delay = self._settings.get(job, (30.0, 600.0))
            return min(burst.last + quiet, burst.first + max_delay)

    def next_deadline(self, exclude: frozenset = frozenset()) -> Optional[float]:
        """The earliest deadline of the jobs not in `exclude`, or None."""
        deadlines = [d for d in (self.deadline(job) for job in list(self._bursts) if job not in exclude)
                     if d is not None]
        return min(deadlines) if deadlines else None

    def take_ready(self, now: float, busy: frozenset = frozenset(), limit: int = 1 << 30
                   ) -> List[Tuple[str, ChangeSet]]:
        """Up to `limit` bursts that have settled (oldest deadline first), removed from the debouncer;
        jobs in `busy` keep theirs for later."""
        ready = []
        for job in sorted(list(self._bursts), key=lambda name: self.deadline(name) or 0.0):
            if len(ready) >= limit:
                break
            deadline = self.deadline(job)
            if job in busy or deadline is None or deadline > now:
                continue
            with self._lock:
                burst = self._bursts.pop(job, None)
            if burst is not None:
                ready.append((job, burst.changes))
        return ready

    def take(self, job: str) -> Optional[ChangeSet]:
        with self._lock:
            burst = self._bursts.pop(job, None)
        return burst.changes if burst else None
