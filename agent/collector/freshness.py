"""Freshness: what state each host/job is in, judged from the reports alone against the job's policy
(the `every` range each report carries). Pure functions of the stored rows and a clock, so that tests
inject the time.

  ok       the last run succeeded and the last success is younger than policy high end + grace
  overdue  the last success is older than that
  failing  the last run failed
  never    a host/job that has sent no report yet
  silent   (a host) nothing arrived for longer than its shortest policy high end + grace
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from agent.collector.storage import HostRow, JobRow

STATES = ("failing", "overdue", "never", "ok")  # worst first: the order the dashboard sorts by
DEFAULT_GRACE = 3600.0


@dataclass(frozen=True)
class Cell:
    host: str
    job: str
    state: str
    row: Optional[JobRow]

    def to_json(self) -> dict:
        row = self.row
        return {"host": self.host, "job": self.job, "state": self.state,
                "last_ok": iso(row.last_ok_ts) if row else None, "last_run": iso(row.last_run_ts) if row else None,
                "last_status": row.last_status if row else None, "last_error": row.last_error if row else None,
                "last_trigger": row.last_trigger if row else None,
                "every": {"low": row.every_low, "high": row.every_high} if row else None}


@dataclass(frozen=True)
class HostView:
    host: str
    state: str  # "ok" or "silent" or "never"
    last_seen: Optional[float]
    missing: int
    cells: Tuple[Cell, ...]

    @property
    def worst(self) -> int:
        ranks = [STATES.index(cell.state) for cell in self.cells] or [len(STATES)]
        return min(ranks) - (len(STATES) if self.state == "silent" else 0)


def iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_state(row: Optional[JobRow], now: float, grace: float = DEFAULT_GRACE) -> str:
    if row is None:
        return "never"
    if row.last_status != "ok":
        return "failing"
    if row.last_ok_ts is None or now - row.last_ok_ts > row.every_high + grace:
        return "overdue"
    return "ok"


def host_state(host: Optional[HostRow], rows: Sequence[JobRow], now: float, grace: float = DEFAULT_GRACE) -> str:
    if host is None:
        return "never"
    shortest = min((row.every_high for row in rows), default=None)
    if shortest is not None and now - host.last_seen_ts > shortest + grace:
        return "silent"
    return "ok"


def fleet(jobs: Sequence[JobRow], hosts: Sequence[HostRow], known_hosts: Sequence[str], now: float,
          grace: float = DEFAULT_GRACE) -> Tuple[List[str], List[HostView]]:
    """(job names, one view per host): every host that reported or holds a token, every job any host
    reported; a host/job without a report is `never`."""
    by_host: Dict[str, Dict[str, JobRow]] = {}
    for row in jobs:
        by_host.setdefault(row.host, {})[row.job] = row
    host_rows = {row.host: row for row in hosts}
    job_names = sorted({row.job for row in jobs})
    views = []
    for name in sorted(set(by_host) | set(host_rows) | set(known_hosts)):
        rows = by_host.get(name, {})
        cells = tuple(Cell(name, job, job_state(rows.get(job), now, grace), rows.get(job)) for job in job_names)
        host = host_rows.get(name)
        views.append(HostView(name, host_state(host, list(rows.values()), now, grace),
                              host.last_seen_ts if host else None, host.missing if host else 0, cells))
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
