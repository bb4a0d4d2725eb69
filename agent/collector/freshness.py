"""Freshness: what state each host/job is in, judged from the reports alone against the job's policy
(the `every` range each report carries). Pure functions of the stored rows and a clock, so that tests
inject the time.

  ok       the last run succeeded and the last success is younger than policy high end + grace
  overdue  the last success is older than that
  failing  the last run failed
  never    a host/job that has sent no report yet
  silent   (a host) nothing arrived for longer than its shortest policy high end + grace

Restore drills are judged apart (`drill_state`), against the drill policy their reports carry:
  ok       the last drill passed and the last passing one is younger than drill_every + grace
  overdue  the last passing drill is older than that (or none passed)
  failing  the last drill failed
  never    no drill yet
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from agent.collector.storage import DrillRow, HostRow, JobRow, PruneRow

STATES = ("failing", "overdue", "never", "ok")  # worst first: the order the dashboard sorts by
DEFAULT_GRACE = 3600.0


class Cell(NamedTuple):
    host: str
    job: str
    state: str
    row: Optional[JobRow]
    drill: Optional[DrillRow] = None
    drill_state: str = "never"

    def to_json(self, host_state: str) -> dict:
        row, drill = self.row, self.drill
        drills = {"last_drill_ok": iso(drill.last_ok_ts) if drill else None,
                  "last_drill_status": drill.last_status if drill else None, "drill_state": self.drill_state}
        if row is None:
            return {"host": self.host, "job": self.job, "state": self.state, "last_ok": None, "last_run": None,
                    "last_status": None, "last_error": None, "last_trigger": None, "every": None,
                    "host_state": host_state, **drills}
        return {"host": self.host, "job": self.job, "state": self.state, "last_ok": iso(row.last_ok_ts),
                "last_run": iso(row.last_run_ts), "last_status": row.last_status, "last_error": row.last_error,
                "last_trigger": row.last_trigger, "every": {"low": row.every_low, "high": row.every_high},
                "host_state": host_state, **drills}


@dataclass(frozen=True)
class HostView:
    host: str
    state: str  # "ok" or "silent" or "never"
    last_seen: Optional[float]
    missing: int
    cells: Tuple[Cell, ...]
    prune: Optional[PruneRow] = None  # the host's last prune, and its repository's size after it

    @property
    def worst(self) -> int:
        ranks = [STATES.index(cell.state) for cell in self.cells] or [len(STATES)]
        return min(ranks) - (len(STATES) if self.state == "silent" else 0)


def iso(ts: Optional[float]) -> Optional[str]:
    """UTC to the second, e.g. 2026-11-27T10:00:00Z (strftime: datetime is 5x slower, and pages format
    thousands of these)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _judged(status: str, last_ok_ts: Optional[float], policy: float, now: float, grace: float) -> str:
    if status != "ok":
        return "failing"
    if last_ok_ts is None or now - last_ok_ts > policy + grace:
        return "overdue"
    return "ok"


def job_state(row: Optional[JobRow], now: float, grace: float = DEFAULT_GRACE) -> str:
    return "never" if row is None else _judged(row.last_status, row.last_ok_ts, row.every_high, now, grace)


def drill_state(drill: Optional[DrillRow], now: float, grace: float = DEFAULT_GRACE) -> str:
    """A host/job's restore drills judged against the drill policy their last report carried."""
    if drill is None:
        return "never"
    return _judged(drill.last_status, drill.last_ok_ts, drill.drill_every, now, grace)


def host_state(host: Optional[HostRow], rows: Sequence[JobRow], now: float, grace: float = DEFAULT_GRACE) -> str:
    if host is None:
        return "never"
    shortest = min((row.every_high for row in rows), default=None)
    if shortest is not None and now - host.last_seen_ts > shortest + grace:
        return "silent"
    return "ok"


def fleet(jobs: Sequence[JobRow], hosts: Sequence[HostRow], known_hosts: Sequence[str], now: float,
          grace: float = DEFAULT_GRACE, drills: Sequence[DrillRow] = (),
          prunes: Sequence[PruneRow] = ()) -> Tuple[List[str], List[HostView]]:
    """(job names, one view per host): every host that reported or holds a token, every job any host
    reported; a host/job without a report is `never`. `drills`: the drills rows, judged by drill_state."""
    drilled = {(row.host, row.job): row for row in drills}
    pruned = {row.host: row for row in prunes}
    by_host: Dict[str, Dict[str, JobRow]] = {}
    for row in jobs:
        by_host.setdefault(row.host, {})[row.job] = row
    host_rows = {row.host: row for row in hosts}
    job_names = sorted({row.job for row in jobs})
    views = []
    for name in sorted(set(by_host) | set(host_rows) | set(known_hosts)):
        rows = by_host.get(name, {})
        cells = []
        for job in job_names:
            row = rows.get(job)
            # job_state() inlined: this loop runs hosts x jobs times per page
            if row is None:
                state = "never"
            elif row.last_status != "ok":
                state = "failing"
            elif row.last_ok_ts is None or now - row.last_ok_ts > row.every_high + grace:
                state = "overdue"
            else:
                state = "ok"
            drill = drilled.get((name, job)) if drilled else None
            if drill is None:
                cells.append(Cell(name, job, state, row))
            else:
                cells.append(Cell(name, job, state, row, drill, drill_state(drill, now, grace)))
        host = host_rows.get(name)
        views.append(HostView(name, host_state(host, list(rows.values()), now, grace),
                              host.last_seen_ts if host else None, host.missing if host else 0, tuple(cells),
                              pruned.get(name)))
    return job_names, views


def age(seconds: Optional[float]) -> str:
    """'3 h ago' style, for people."""
    if seconds is None:
        return "never"
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"
