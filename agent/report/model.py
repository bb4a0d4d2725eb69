"""The RunReport: a frozen value that crosses threads (runner → spool → sender) unchanged."""

from __future__ import annotations

import secrets
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
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(8)


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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        data = asdict(self)
        data["errors"] = list(self.errors)
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunReport:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["errors"] = tuple(known.get("errors", ()))
        known["warnings"] = tuple(known.get("warnings", ()))
        return cls(**known)
