"""The run report's wire contract, defined once: the agent makes its reports conform to it (`conform`)
and the collector validates what it receives against it (`problems`).

The schema is a small subset of JSON Schema written as plain dicts (type, enum, pattern, minimum,
maximum, maxLength, maxItems, items, properties, required), compiled once into predicates that answer
with one short message per problem, `field: must be ...` -- the shape of healthchecks'
`hc/lib/jsonschema.py`, which does the same for its API. Unknown fields are ignored (a newer agent may
report to an older collector) and are not kept.

Text fields hold any Unicode that UTF-8 can encode, except NUL: a file name that is not valid UTF-8 is
escaped (`pipe\\xff`) by `escape` before it enters a report.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any, Callable, Dict, List, Tuple

from agent.config.model import HOST_PATTERN, JOB_NAME_PATTERN, JOB_TYPES

# a report's type: the job's, or "repository" for a prune run (which covers the whole repository)
REPORT_TYPES = (*JOB_TYPES, "repository")
TRIGGERS = ("manual", "change", "schedule", "catch-up", "retry", "startup", "prune", "drill")
STATUSES = ("ok", "failed")

ID = r"[A-Za-z0-9_-]{1,80}"
JOB = JOB_NAME_PATTERN
HOST = HOST_PATTERN
MAX_LIST = 1000  # items in errors, warnings, changes.paths
MAX_TEXT = 4000  # characters in one item
MAX_CHANGE_PATHS = 20  # a change report carries the first paths only
MAX_COUNT = 2**63 - 1
MAX_SECONDS = 10 * 365 * 86400  # a policy longer than ten years is a mistake
TIME_LENGTH = 40

_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT, "must": "a non-negative integer"}
_TEXTS = {"type": "array", "maxItems": MAX_LIST, "items": {"type": "string", "maxLength": MAX_TEXT},
          "must": f"a list of at most {MAX_LIST} texts (each at most {MAX_TEXT} characters, no NUL)"}
_TIME = {"type": "string", "format": "date-time", "must": "an ISO-8601 time with a zone"}
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS}

REPORT_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": ID, "must": "1-80 letters, digits, '_' or '-'"},
        "host": {"type": "string", "pattern": HOST, "must": "a host name"},
        "job": {"type": "string", "pattern": JOB, "must": "a job name"},
        "type": {"enum": REPORT_TYPES},
        "trigger": {"enum": TRIGGERS},
        "status": {"enum": STATUSES},
        "changed": {"type": "boolean", "must": "true or false"},
        "snapshot": {"type": ["string", "null"], "pattern": ID, "must": "null or a snapshot id"},
        "started_at": _TIME,
        "finished_at": _TIME,
        "files": _COUNT,
        "bytes": _COUNT,
        "new_bytes": _COUNT,
        "errors": _TEXTS,
        "warnings": _TEXTS,
        "seq": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT, "must": "a positive integer"},
        "every": {"type": "object", "properties": {"low": _SECONDS, "high": _SECONDS}, "required": ["low", "high"],
                  "must": '{"low": seconds, "high": seconds} with 0 < low <= high'},
        # optional: what a change-triggered run changed since the job's previous snapshot
        "changes": {"type": "object", "required": ["added", "removed", "changed", "paths"],
                    "properties": {"added": _COUNT, "removed": _COUNT, "changed": _COUNT,
                                   "paths": {**_TEXTS, "maxItems": MAX_LIST}},
                    "must": '{"added": N, "removed": N, "changed": N, "paths": [texts]}'},
        # optional, prune reports: the repository's stored bytes before and after the prune
        "repository_bytes_before": _COUNT,
        "repository_bytes_after": _COUNT,
        # optional, drill reports: the job's drill policy in seconds (the collector judges drills with it)
        "drill_every": {**_SECONDS, "must": "a number of seconds"},
        # optional, drills of mysql snapshots: every table of the loaded dump with its exact row count
        "tables": {"type": "array", "maxItems": MAX_LIST,
                   "items": {"type": "object", "required": ["table", "rows"],
                             "properties": {"table": {"type": "string", "maxLength": MAX_TEXT}, "rows": _COUNT}},
                   "must": f'a list of at most {MAX_LIST} {{"table": name, "rows": N}}'},
    },
    "required": ["id", "host", "job", "type", "trigger", "status", "changed", "snapshot", "started_at",
                 "finished_at", "files", "bytes", "new_bytes", "errors", "warnings", "seq", "every"],
}

@functools.lru_cache(maxsize=64)  # each report's two times are checked, compared and stored: parse once
def _parse_time(value: str) -> float:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no zone")
    return parsed.timestamp()


def parse_time(value: Any) -> float:
    """An ISO-8601 time with a zone (`2026-11-27T07:25:01.123456Z`) as POSIX seconds; ValueError else."""
    if not isinstance(value, str) or len(value) > TIME_LENGTH:
        raise ValueError("not a time")
    return _parse_time(value)


Check = Callable[[Any], bool]


def _text_ok(value: str, limit: int) -> bool:
    if len(value) > limit or "\x00" in value:
        return False
    try:
        value.encode()  # a lone surrogate (\ud800) cannot be stored as text
    except UnicodeEncodeError:
        return False
    return True


def _is_time(value: str) -> bool:
    try:
        parse_time(value)
    except (ValueError, OverflowError):
        return False
    return True


def _compile(schema: Dict[str, Any]) -> Check:
    """`schema` turned once into a predicate (the collector checks every report: interpreting the dicts
    each time cost three times as much)."""
    if "enum" in schema:
        choices = frozenset(schema["enum"])
        return lambda value: isinstance(value, str) and value in choices
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    checks: List[Check] = []
    if "string" in types:
        limit = schema.get("maxLength", MAX_TEXT)
        pattern = re.compile(schema["pattern"]).fullmatch if "pattern" in schema else None
        is_time = schema.get("format") == "date-time"
        checks.append(lambda value: isinstance(value, str) and _text_ok(value, limit)
                      and (pattern is None or pattern(value) is not None) and (not is_time or _is_time(value)))
    if "integer" in types or "number" in types:
        kinds = int if "number" not in types else (int, float)
        low, high = schema.get("minimum", float("-inf")), schema.get("maximum", float("inf"))
        above = schema.get("exclusiveMinimum", float("-inf"))
        checks.append(lambda value: isinstance(value, kinds) and not isinstance(value, bool)
                      and low <= value <= high and value > above)
    if "boolean" in types:
        checks.append(lambda value: isinstance(value, bool))
    if "null" in types:
        checks.append(lambda value: value is None)
    if "array" in types:
        most, item = schema.get("maxItems", MAX_LIST), _compile(schema["items"])
        checks.append(lambda value: isinstance(value, list) and len(value) <= most and all(map(item, value)))
    if "object" in types:
        fields = _compile_fields(schema)
        checks.append(lambda value: isinstance(value, dict) and not fields(value))
    if len(checks) == 1:
        return checks[0]
    return lambda value: any(check(value) for check in checks)


def _compile_fields(schema: Dict[str, Any]) -> Callable[[Dict[str, Any]], List[str]]:
    """An object's fields checked one by one: the problems found, `field: missing` or `field: must be ...`."""
    required = tuple(schema.get("required", ()))
    fields = []
    for name, sub in schema["properties"].items():
        expected = sub.get("must") or (f"one of {', '.join(sub['enum'])}" if "enum" in sub else "valid")
        fields.append((name, _compile(sub), f"{name}: must be {expected}"))

    def check(value: Dict[str, Any]) -> List[str]:
        found = [f"{name}: missing" for name in required if name not in value]
        for name, valid, message in fields:
            if name in value and not valid(value[name]):
                found.append(message)
        return found

    return check


_check_report = _compile_fields(REPORT_SCHEMA)


def problems(body: Any) -> List[str]:
    """Every way `body` (decoded JSON) breaks the contract, one short `field: what is wrong` each;
    [] for a valid report."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    found = _check_report(body)
    if found:
        return found
    if body["every"]["low"] > body["every"]["high"]:
        return ['every: must be {"low": seconds, "high": seconds} with 0 < low <= high']
    if parse_time(body["finished_at"]) < parse_time(body["started_at"]):
        return ["finished_at: before started_at"]
    return []


def canonical(body: Dict[str, Any]) -> Dict[str, Any]:
    """A valid report's known fields only: what the collector keeps."""
    return {name: body[name] for name in REPORT_SCHEMA["properties"] if name in body}


# --- making the agent's own reports conform --------------------------------------------------------------

def escape(text: str) -> str:
    """`text` as valid, NUL-free UTF-8 text: bytes that were not UTF-8 (os.fsdecode's surrogate escapes,
    e.g. a file named b'pipe\\xff') become `\\xff`, a lone surrogate `\\udcff`, NUL `\\x00`. Valid text
    passes unchanged, so escaping twice changes nothing."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else None
        text = (raw.decode("utf-8", "backslashreplace") if raw is not None
                else text.encode("utf-8", "backslashreplace").decode())
    return text.replace("\x00", "\\x00")


def _only_escapes(text: str) -> bool:
    """Whether every surrogate in `text` is one of os.fsdecode's (U+DC80..U+DCFF, one undecodable byte)."""
    return all("\udc80" <= char <= "\udcff" for char in text if "\ud800" <= char <= "\udfff")


def clip(texts: Tuple[str, ...], limit: int = MAX_LIST) -> Tuple[str, ...]:
    """Texts escaped and cut to what the contract allows; the last kept item says how many were left out."""
    items = [escape(text) for text in texts]
    suffix = "… (shortened)"
    items = [text if len(text) <= MAX_TEXT else text[:MAX_TEXT - len(suffix)] + suffix for text in items]
    if len(items) > limit:
        items = items[:limit - 1] + [f"… and {len(items) - limit + 1} more"]
    return tuple(items)
