"""The RunReport: a frozen value that crosses threads (runner → spool → sender) unchanged.

Its JSON form (`to_json`) is the wire contract of `agent.report.schema`. Every text is escaped and every
list cut to the contract's bounds when a report is made, so every report the agent makes, the collector
accepts, and what is printed or logged of it is valid text too.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, NamedTuple, Optional, Tuple

from agent.report.schema import MAX_CHANGE_PATHS, MAX_LIST, MAX_SECONDS, STATUSES, TRIGGERS, clip, escape

__all__ = ["STATUSES", "TRIGGERS", "Changes", "RunReport", "TableRows", "new_run_id", "utc_now"]


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", clip(tuple(self.paths), MAX_CHANGE_PATHS))  # escaped, the first 20

    def to_json(self) -> Dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "paths": list(self.paths)}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Changes:
        return cls(int(data.get("added", 0)), int(data.get("removed", 0)), int(data.get("changed", 0)),
                   tuple(data.get("paths", ())))


class TableRows(NamedTuple):
    """One table of a drilled mysql dump (`schema.table`) and its exact row count (COUNT(*))."""

    table: str
    rows: int


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
    # Drill reports: the job's drill policy in seconds (0: not a drill; absent from JSON), and for a
    # mysql drill the tables of the loaded dump (None: absent from JSON)
    drill_every: float = 0.0
    tables: Optional[Tuple[TableRows, ...]] = None
    # Prune reports: the repository's stored bytes before and after (None: absent from JSON)
    repository_bytes_before: Optional[int] = None
    repository_bytes_after: Optional[int] = None

    def __post_init__(self) -> None:
        # The report boundary: every text escaped and every list cut here, once, so that what is printed,
        # logged, recorded in the state dir and sent is the same valid text (a name that is not UTF-8
        # reads `pipe\xff` everywhere, and never makes the collector refuse the report).
        for name in ("id", "host", "job", "type", "trigger", "status", "started_at", "finished_at"):
            object.__setattr__(self, name, escape(getattr(self, name)))
        if self.snapshot is not None:
            object.__setattr__(self, "snapshot", escape(self.snapshot))
        if self.tables is not None:
            object.__setattr__(self, "tables", tuple(TableRows(escape(name), rows)
                                                     for name, rows in self.tables[:MAX_LIST]))
        object.__setattr__(self, "errors", clip(tuple(self.errors)))
        object.__setattr__(self, "warnings", clip(tuple(self.warnings)))
        # a policy beyond the contract's ten years (every = "1000w") is as good as never: say ten years
        object.__setattr__(self, "every_low", min(float(self.every_low), MAX_SECONDS))
        object.__setattr__(self, "every_high", min(float(self.every_high), MAX_SECONDS))
        object.__setattr__(self, "drill_every", min(float(self.drill_every), MAX_SECONDS))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> Dict[str, Any]:
        """The contract's JSON (`agent.report.schema`)."""
        data = asdict(self)
        data["errors"] = list(self.errors)
        data["warnings"] = list(self.warnings)
        data["every"] = {"low": data.pop("every_low"), "high": data.pop("every_high")}
        changes = data.pop("changes")
        if changes is not None:
            data["changes"] = self.changes.to_json()  # type: ignore[union-attr]
        for name in ("repository_bytes_before", "repository_bytes_after"):
            if data[name] is None:
                del data[name]
        if not data["drill_every"]:
            del data["drill_every"]
        if data["tables"] is None:
            del data["tables"]
        else:
            data["tables"] = [{"table": name, "rows": rows} for name, rows in self.tables or ()]
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
        if isinstance(data.get("tables"), list):
            known["tables"] = tuple(TableRows(str(item["table"]), int(item["rows"])) for item in data["tables"])
        return cls(**known)
