"""The timer module: when each job is next due, and with which trigger.

Pure functions of (job, host, state, clock) so that tests drive them with any clock. Rules:
- the next run is due at the last success plus an interval inside the job's range, chosen per host and
  job (a fleet does not dump its databases at the same minute) and never beyond the range's high end;
- a failed run is retried with backoff (5 min, doubling, capped below the interval);
- a job that never succeeded runs within minutes of start-up, staggered;
- a due time that passed while the agent was down runs soon after start-up, staggered, as "catch-up";
- a time recorded later than now (written while the clock ran ahead, hours or months) says nothing about
  when the job really ran: the job is due as after downtime, so a clock that was wrong once never holds
  a run back beyond the policy once it is right again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Optional

from agent.config import Job
from agent.state import JobState

FIRST_RUN_WITHIN = 180.0      # a fresh install backs each job up within three minutes
CATCH_UP_WITHIN = 120.0       # overdue jobs start within two minutes of start-up, staggered
START_DELAY = 15.0            # ... but not in the very first seconds, while the node boots
RETRY_FIRST = 300.0
RETRY_CAP = 3600.0
CLOCK_SLACK = 60.0            # a recorded time this far ahead of now is taken as written by a wrong clock


def spread(host: str, job: str, salt: str = "") -> float:
    """A stable number in [0, 1) for this host and job."""
    digest = hashlib.sha256(f"{host}\0{job}\0{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def interval(job: Job, host: str) -> float:
    low, high = job.every.low, job.every.high
    return low + (high - low) * spread(host, job.name, "interval")


def retry_delay(job: Job, failures: int) -> float:
    cap = min(RETRY_CAP, job.every.low / 2)
    return max(60.0, min(RETRY_FIRST * 2 ** max(failures - 1, 0), cap))


@dataclass(frozen=True)
class Due:
    at: float
    trigger: str  # "schedule", "retry" or "catch-up"


def next_due(job: Job, host: str, state: JobState, started_at: float, now: Optional[float] = None) -> Due:
    """When `job` should run next (epoch seconds), given its state, when the agent started and the time now
    (default: the clock, never before `started_at`)."""
    now = max(started_at, time.time()) if now is None else now
    last_ok = state.last_full_at
    last_run = state.last_run_at
    if any(recorded is not None and recorded > now + CLOCK_SLACK for recorded in (last_ok, last_run)):
        return _catch_up(job, host, started_at)
    if state.failures and last_run is not None:
        at = last_run + retry_delay(job, state.failures)
        if last_ok is not None:
            at = min(at, last_ok + interval(job, host))
        trigger = "retry"
    elif last_ok is not None:
        at, trigger = last_ok + interval(job, host), "schedule"
    else:
        window = min(FIRST_RUN_WITHIN, job.every.low / 10)
        return Due(started_at + _start_delay(job) + window * spread(host, job.name, "first"), "schedule")
    if at < started_at:
        return _catch_up(job, host, started_at)
    return Due(at, trigger)


def _catch_up(job: Job, host: str, started_at: float) -> Due:
    # missed while the agent was down: run soon, staggered so overdue jobs do not start together
    window = min(CATCH_UP_WITHIN, job.every.low / 10)
    return Due(started_at + _start_delay(job) + window * spread(host, job.name, "catch-up"), "catch-up")


def _start_delay(job: Job) -> float:
    # short intervals (tests, demos) scale the delays down with them
    return min(START_DELAY, job.every.low / 40)


def due_in_words(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "now"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"in {minutes} min"
    return f"in {minutes // 60} h {minutes % 60} min"
