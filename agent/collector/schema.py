"""Validation of incoming run reports against the one contract (`agent.report.schema`), and the columns
storage needs from a valid one. Each problem is a short `field: what is wrong`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from agent.report.schema import HOST as HOST_PATTERN
from agent.report.schema import canonical, parse_time, problems

__all__ = ["HOST", "Report", "parse_time", "validate"]

HOST = re.compile(HOST_PATTERN)


@dataclass(frozen=True)
class Report:
    """A validated report: what storage needs as columns, plus the body (its known fields only)."""

    id: str
    host: str
    job: str
    type: str
    trigger: str
    status: str
    seq: int
    started_ts: float
    finished_ts: float
    files: int
    bytes: int
    new_bytes: int
    every_low: float
    every_high: float
    first_error: Optional[str]
    body: Dict[str, Any]
    drill_every: float = 0.0  # drill reports: the job's drill policy in seconds


def validate(body: Any) -> Tuple[Optional[Report], List[str]]:
    """(Report, []) or (None, problems)."""
    found = problems(body)
    if found:
        return None, found
    errors = body["errors"]
    every = body["every"]
    return Report(id=body["id"], host=body["host"], job=body["job"], type=body["type"], trigger=body["trigger"],
                  status=body["status"], seq=body["seq"], started_ts=parse_time(body["started_at"]),
                  finished_ts=parse_time(body["finished_at"]), files=body["files"], bytes=body["bytes"],
                  new_bytes=body["new_bytes"], every_low=float(every["low"]), every_high=float(every["high"]),
                  first_error="; ".join(errors[:3])[:1000] if errors else None, body=canonical(body),
                  drill_every=float(body.get("drill_every", 0.0))), []
