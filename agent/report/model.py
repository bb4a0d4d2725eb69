"""The RunReport: a frozen value that crosses threads (runner → spool → sender) unchanged."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional, Tuple

TRIGGERS = ("manual", "change", "schedule", "catch-up", "retry")
STATUSES = ("ok", "failed")


def utc_now() -> str:
    """ISO-8601 UTC with microseconds, e.g. 2026-11-27T07:25:01.123456Z."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """Unique, sortable by time, at most 64 characters of [A-Za-z0-9_-]."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + os.urandom(8).hex()


@dataclass(frozen=True)
class RunReport:
    id: str
    host: str
    job: str
    type: str
    trigger: str
    status: str
    changed: bool
    snapshot: Optional[str]
    started_at: str
    finished_at: str
    files: int = 0
    bytes: int = 0
    new_bytes: int = 0
    errors: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = field(default=())
    # The job's policy, so that the collector judges freshness without the node's configuration
    every_low: float = 0.0
    every_high: float = 0.0
    # Per host, assigned when the report enters the spool: a gap at the collector is a lost report
    seq: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        data = asdict(self)
        data["errors"] = list(self.errors)
        data["warnings"] = list(self.warnings)
        data["every"] = {"low": data.pop("every_low"), "high": data.pop("every_high")}
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunReport:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        every = data.get("every") or {}
        known["every_low"] = float(every.get("low", 0.0))
        known["every_high"] = float(every.get("high", 0.0))
        known["errors"] = tuple(known.get("errors", ()))
        known["warnings"] = tuple(known.get("warnings", ()))
        return cls(**known)
