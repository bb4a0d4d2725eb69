"""Parsing of the human durations used in job files: "30s", "10m", "1h30m", "24h" and ranges "4h..6h"."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with a short reason that fits after 'KEY: '."""
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 10m, 4h, 1d, 1h30m)")
    if total <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return total


@dataclass(frozen=True)
class Interval:
    """How often a job runs: a fixed interval or a range the scheduler picks from per host and job."""

    low: float
    high: float
    text: str

    @property
    def is_range(self) -> bool:
        return self.low != self.high


def parse_interval(text: str) -> Interval:
    if ".." in text:
        low_text, _, high_text = text.partition("..")
        low, high = parse_duration(low_text), parse_duration(high_text)
        if low > high:
            raise ValueError(f"range {text!r} has its low end above its high end")
        return Interval(low, high, text)
    value = parse_duration(text)
    return Interval(value, value, text)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
