"""The one validation schema for incoming run reports. Each problem is a short `field: what is wrong`.
Unknown fields are ignored, so that a newer agent can report to an older collector."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional

from agent.config.model import JOB_TYPES
from agent.report.model import STATUSES, TRIGGERS

ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
JOB = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
MAX_LIST = 1000
MAX_TEXT = 4000


@dataclass(frozen=True)
class Report:
    """A validated report: what storage needs as columns, plus the whole body."""

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


def parse_time(value: Any) -> float:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError
    return parsed.timestamp()


def _matches(pattern: re.Pattern) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _text(item: Any) -> bool:
    if not isinstance(item, str) or len(item) > MAX_TEXT or "\x00" in item:
        return False
    try:
        item.encode()  # a lone surrogate (\ud800) cannot be stored as text
    except UnicodeEncodeError:
        return False
    return True


def _texts(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_LIST and all(_text(item) for item in value)


FIELDS: Dict[str, tuple] = {
    "id": (_matches(ID), "1-80 letters, digits, '_' or '-'"),
    "host": (_matches(HOST), "a host name"),
    "job": (_matches(JOB), "a job name"),
    "type": (lambda v: v in JOB_TYPES, f"one of {', '.join(JOB_TYPES)}"),
    "trigger": (lambda v: v in TRIGGERS, f"one of {', '.join(TRIGGERS)}"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "changed": (lambda v: isinstance(v, bool), "true or false"),
    "seq": (lambda v: _count(v) and v >= 1, "a positive integer"),
    "files": (_count, "a non-negative integer"),
    "bytes": (_count, "a non-negative integer"),
    "new_bytes": (_count, "a non-negative integer"),
    "errors": (_texts, f"a list of at most {MAX_LIST} texts"),
    "warnings": (_texts, f"a list of at most {MAX_LIST} texts"),
    "snapshot": (lambda v: v is None or _matches(ID)(v), "null or a snapshot id"),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 10 * 365 * 86400


def validate(body: Any) -> tuple:
    """(Report, []) or (None, problems)."""
    if not isinstance(body, dict):
        return None, ["the body must be a JSON object"]
    problems: List[str] = []
    for name, (check, expected) in FIELDS.items():
        if name not in body:
            problems.append(f"{name}: missing")
        elif not check(body[name]):
            problems.append(f"{name}: must be {expected}")
    times = {}
    for name in ("started_at", "finished_at"):
        try:
            times[name] = parse_time(body.get(name))
        except (ValueError, TypeError):
            problems.append(f"{name}: must be an ISO-8601 time with a zone")
    every = body.get("every")
    if not (isinstance(every, dict) and _number(every.get("low")) and _number(every.get("high"))
            and every["low"] <= every["high"]):
        problems.append("every: must be {\"low\": seconds, \"high\": seconds} with 0 < low <= high")
    if problems:
        return None, problems
    if times["finished_at"] < times["started_at"]:
        return None, ["finished_at: before started_at"]
    errors = body["errors"]
    return Report(id=body["id"], host=body["host"], job=body["job"], type=body["type"], trigger=body["trigger"],
                  status=body["status"], seq=body["seq"], started_ts=times["started_at"],
                  finished_ts=times["finished_at"], files=body["files"], bytes=body["bytes"],
                  new_bytes=body["new_bytes"], every_low=float(every["low"]), every_high=float(every["high"]),
                  first_error="; ".join(errors[:3])[:1000] if errors else None, body=body), []
