"""Wording shared by every human-readable output (the command, the daemon's log, the collector):
counts with the right plural, and an exception said in words (no Python class names)."""

from __future__ import annotations

import json
from typing import Optional


def plural(count: int, singular: str, many: Optional[str] = None) -> str:
    """`1 file`, `2 files`, `0 files`; `many` for irregular plurals (`plural(2, "entry", "entries")`)."""
    return f"{count} {singular if count == 1 else (many or singular + 's')}"


def in_words(exc: BaseException) -> str:
    """What went wrong, in words a user reads: `not valid JSON (unterminated string at line 1 column
    9)`, `the field 'id' is missing`, `/x: No space left on device`; never the exception's class name,
    except for an exception that carries no message at all (a bug: the name is all there is)."""
    if isinstance(exc, json.JSONDecodeError):
        what = exc.msg[:1].lower() + exc.msg[1:]
        what = what[:-3] if what.endswith(" at") else what  # "Unterminated string starting at"
        return f"not valid JSON ({what} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 text (at byte {exc.start})"
    if isinstance(exc, KeyError):
        return f"the field {exc.args[0]!r} is missing" if exc.args else "a field is missing"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = str(exc)
    return text if text else f"unexpected {type(exc).__name__}"
