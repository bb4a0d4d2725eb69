"""Runs one job now and turns whatever happens into a RunReport: the only place that decides a run's
status. Nothing a job does can escape as an exception; a crash of the job is a failed report."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Callable, Optional

from agent.config import Config, Job
from agent.report import RunReport, new_run_id, utc_now
from agent.snapshot.cache import FilesCache, cache_path
from agent.snapshot.fs import backup_tree
from agent.store import Repository
from agent.store.fsutil import atomic_write, make_private_dirs
from agent.watch.ignore import IgnoreRules


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def open_repository(config: Config) -> Repository:
    return Repository.open(config.repository, create=True)


def run_job(config: Config, job: Job, trigger: str = "manual",
            on_wait: Callable[[str], None] = _say, stop: Optional[threading.Event] = None) -> RunReport:
    run_id = new_run_id()
    started = utc_now()

    def report(status: str, errors: tuple = (), **values: object) -> RunReport:
        result = RunReport(id=run_id, host=config.host, job=job.name, type=job.type, trigger=trigger,
                           status=status, changed=bool(values.pop("changed", False)),
                           snapshot=values.pop("snapshot", None), started_at=started, finished_at=utc_now(),
                           errors=tuple(errors), **values)  # type: ignore[arg-type]
        _record_last_run(config, result)
        return result

    if job.type != "fs":
        return report("failed", (f"{job.type} jobs are not implemented yet",))
    assert job.path is not None
    if not os.path.isdir(job.path):
        return report("failed", (f"{job.path} does not exist or is not a directory",))
    try:
        repo = open_repository(config)
        lock = repo.lock(exclusive=True, purpose=f"backup {job.name}")
        lock.acquire(on_wait=on_wait, stop=stop)
        try:
            cache = FilesCache.load(cache_path(config.state_dir, job.name))
            result = backup_tree(repo, job.path, IgnoreRules(job.exclude), cache, job=job.name,
                                 job_type=job.type, host=config.host, trigger=trigger, now=started)
        finally:
            lock.release()
            repo.close()
    except Exception as exc:  # the run failed as a whole; the report carries why
        return report("failed", (f"{type(exc).__name__}: {exc}",))
    return report("failed" if result.errors else "ok", result.errors, changed=result.changed,
                  snapshot=result.snapshot.id if result.snapshot else None, files=result.files,
                  bytes=result.bytes, new_bytes=result.new_bytes, warnings=result.warnings)


def _record_last_run(config: Config, report: RunReport) -> None:
    """Keep the newest report per job in state_dir; `status` and the scheduler read it."""
    directory = os.path.join(config.state_dir, "runs")
    try:
        make_private_dirs(directory)
        atomic_write(os.path.join(directory, f"{report.job}.json"), json.dumps(report.to_json()).encode(),
                     durable=False)
    except OSError as exc:
        _say(f"warning: cannot record the run of {report.job} in {directory}: {exc.strerror}")
