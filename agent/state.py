"""Per-job state kept in state_dir: the last run's report, the last success, consecutive failures, and
pause requests. Written by every run (command line or daemon), read by the scheduler and `status`.

Each job has its own small JSON file, updated under a per-job flock so that a manual `backup` and the
daemon never lose each other's updates. When state_dir is full the file is overwritten in place (its
blocks are already allocated), so that a run failed for lack of space still shows as failed in `status`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, Iterator, Optional

from agent.durable import FILE_MODE, atomic_write, make_private_dirs
from agent.report import RunReport


def parse_time(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class JobState:
    last_run: Optional[dict] = None      # the newest run report, as JSON
    last_ok: Optional[str] = None        # finished_at of the newest successful run
    failures: int = 0                    # consecutive failed runs
    last_full: Optional[str] = None      # finished_at of the newest successful full scan (the timer's base)

    @property
    def last_run_at(self) -> Optional[float]:
        return parse_time(self.last_run.get("finished_at")) if self.last_run else None

    @property
    def last_ok_at(self) -> Optional[float]:
        return parse_time(self.last_ok)

    @property
    def last_full_at(self) -> Optional[float]:
        return parse_time(self.last_full)


def _write_state(path: str, data: bytes) -> None:
    """Replace `path` atomically, or, when the filesystem is full, overwrite it in place: a torn file
    reads as "no state" (a run soon), which is better than a status that hides the failed run."""
    try:
        atomic_write(path, data, durable=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            raise exc from None
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = path
        self.jobs_dir = os.path.join(path, "jobs")

    def _file(self, job: str) -> str:
        return os.path.join(self.jobs_dir, f"{job}.json")

    @contextmanager
    def _locked(self, job: str) -> Iterator[None]:
        make_private_dirs(self.jobs_dir)
        fd = os.open(os.path.join(self.jobs_dir, f".{job}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def job(self, job: str) -> JobState:
        try:
            with open(self._file(job), encoding="utf-8") as handle:
                data = json.load(handle)
            return JobState(data.get("last_run"), data.get("last_ok"), int(data.get("failures", 0)),
                            data.get("last_full"))
        except (OSError, ValueError):
            return JobState()

    def record(self, report: RunReport, full_scan: bool = True) -> JobState:
        """Store a finished run. An incremental (change-triggered) run does not move the timer's base:
        the daily full scan still happens however often the tree changes."""
        with self._locked(report.job):
            old = self.job(report.job)
            new = JobState(report.to_json(), report.finished_at if report.ok else old.last_ok,
                           0 if report.ok else old.failures + 1,
                           report.finished_at if report.ok and full_scan else old.last_full)
            data = {"last_run": new.last_run, "last_ok": new.last_ok, "failures": new.failures,
                    "last_full": new.last_full}
            # Not fsynced: after a power loss the worst case is one extra run of the job.
            _write_state(self._file(report.job), json.dumps(data).encode())
            return new

    def mtime(self) -> float:
        try:
            return os.stat(self.jobs_dir).st_mtime
        except OSError:
            return 0.0

    # --- pauses ---------------------------------------------------------------------------------------

    @property
    def _pause_file(self) -> str:
        return os.path.join(self.path, "paused.json")

    def pauses(self, now: Optional[float] = None) -> Dict[str, float]:
        """Active pauses: job name (or "*" for all) -> until (epoch seconds); expired ones are dropped."""
        now = time.time() if now is None else now
        try:
            with open(self._pause_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return {job: float(until) for job, until in data.items() if float(until) > now}

    def set_pause(self, job: Optional[str], until: Optional[float]) -> None:
        make_private_dirs(self.path)
        with self._locked("_pause"):
            pauses = self.pauses()
            key = job or "*"
            if until is None:
                pauses.pop(key, None)
                if job is None:
                    pauses.clear()  # `resume` without a job lifts every pause
            else:
                pauses[key] = until
            atomic_write(self._pause_file, json.dumps(pauses).encode())

    def pause_mtime(self) -> float:
        try:
            return os.stat(self._pause_file).st_mtime_ns / 1e9
        except OSError:
            return 0.0

    def daemon_file(self) -> str:
        return os.path.join(self.path, "daemon.json")
