"""The RunReport: a frozen value that crosses threads (runner → spool → sender) unchanged.

Its JSON form (`to_json`) is the wire contract of `agent.report.schema`: every text in it is escaped and
every list cut to the contract's bounds there, so every report the agent makes, the collector accepts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

from agent.report.schema import MAX_CHANGE_PATHS, STATUSES, TRIGGERS, clip, escape

__all__ = ["STATUSES", "TRIGGERS", "Changes", "RunReport", "new_run_id", "utc_now"]


def utc_now() -> str:
    """ISO-8601 UTC with microseconds, e.g. 2026-11-27T07:25:01.123456Z."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """Unique, sortable by time, at most 64 characters of [A-Za-z0-9_-]."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + os.urandom(8).hex()


@dataclass(frozen=True)
class Changes:
    """What a change-triggered run changed since the job's previous snapshot: counts of entries and the
    first paths (relative to the job's path), as `{"added", "removed", "changed", "paths"}` in JSON."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    paths: Tuple[str, ...] = ()

    def to_json(self) -> Dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "paths": list(clip(self.paths, MAX_CHANGE_PATHS))}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Changes:
        return cls(int(data.get("added", 0)), int(data.get("removed", 0)), int(data.get("changed", 0)),
                   tuple(data.get("paths", ())))


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
    # Change-triggered runs: what changed since the job's previous snapshot (absent from JSON when None)
    changes: Optional[Changes] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> Dict[str, Any]:
        """The contract's JSON: texts escaped (a file name that is not UTF-8 reads `\\xff`), lists cut."""
        data = asdict(self)
        for name in ("host", "job", "type", "trigger", "status", "started_at", "finished_at"):
            data[name] = escape(data[name])
        data["errors"] = list(clip(self.errors))
        data["warnings"] = list(clip(self.warnings))
        data["every"] = {"low": data.pop("every_low"), "high": data.pop("every_high")}
        changes = data.pop("changes")
        if changes is not None:
            data["changes"] = self.changes.to_json()  # type: ignore[union-attr]
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> RunReport:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        every = data.get("every") or {}
        known["every_low"] = float(every.get("low", 0.0))
        known["every_high"] = float(every.get("high", 0.0))
        known["errors"] = tuple(known.get("errors", ()))
        known["warnings"] = tuple(known.get("warnings", ()))
        if isinstance(data.get("changes"), dict):
            known["changes"] = Changes.from_json(data["changes"])
        return cls(**known)
