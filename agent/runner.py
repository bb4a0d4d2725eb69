"""Runs one job now and turns whatever happens into a RunReport: the only place that decides a run's
status. Nothing a job does escapes as an exception; a crash of the job is a failed report.

Locking: a per-job lock (one run of a job at a time: the daemon and a manual `backup` of the same job
queue up, the second saying so) and a shared repository lock (backups of different jobs write disjoint,
content-named files and may overlap; prune takes the repository lock exclusively). A run of several
jobs (`backup --all`) holds one repository lock for all of them (RunLock): on object storage a lock costs
requests, and prune's safety needs only that no backup runs outside a shared lock.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from agent.backend import Backend, open_backend
from agent.config import Config, Job
from agent.config.loader import S3_SECRET, TOKEN_SECRET, job_warnings, secret_file_warning
from agent.durable import FileLock, LockTimeout, make_private_dirs
from agent.execute import run_hook
from agent.progress import Progress
from agent.report import Changes, RunReport, new_run_id, utc_now
from agent.report.schema import MAX_CHANGE_PATHS
from agent.report.spool import Spool
from agent.snapshot.cache import FilesCache, cache_path
from agent.snapshot.changes import ChangeSet
from agent.snapshot.fs import Aborted, TreeResult, backup_tree
from agent.snapshot.ignore import IgnoreRules
from agent.snapshot.reader import StoreFailed
from agent.state import StateDir
from agent.store import Repository
from agent.text import in_words

if TYPE_CHECKING:
    from agent.backend import RepositoryLock


def _say(message: str) -> None:
    print(f"backup-agent: {message}", file=sys.stderr)  # the command's one prefix


def repository_backend(config: Config, location: Optional[str] = None, cache: Optional[str] = None) -> Backend:
    """The backend of the configured repository (or of `location`, reached with the same [s3] settings);
    an object store's immutable small objects (index, snapshot documents) are cached under `cache`,
    by default state_dir/cache/repository (verify gives an empty one of its own: it checks what is
    stored, not a copy). Raises BackendError for a bad location."""
    return open_backend(location or config.repository, config.s3,
                        cache or os.path.join(config.state_dir, "cache", "repository"))


def open_repository(config: Config) -> Repository:
    return Repository.open(repository_backend(config), create=True, encryption=config.encryption)


def config_warnings(config: Config) -> Tuple[str, ...]:
    """What is wrong with the agent's own settings as things stand now, for every run's report (the
    daemon read its configuration long before; a file's mode may have changed since)."""
    found = []
    for key, path, holds in (("collector.token_file", config.collector.token_file if config.collector else None,
                              TOKEN_SECRET),
                             ("s3.credentials_file", config.s3.credentials_file if config.s3 else None, S3_SECRET)):
        note = secret_file_warning(path, holds) if path else None
        if note:
            found.append(f"{key}: {note}")
    return tuple(found)


def spool_for(config: Config) -> Spool:
    if config.collector is None:
        return Spool(config.state_dir)
    return Spool(config.state_dir, config.collector.spool_max_reports, config.collector.spool_max_bytes)


def job_lock(config: Config, job: str) -> FileLock:
    directory = os.path.join(config.state_dir, "locks")
    make_private_dirs(directory)
    return FileLock(os.path.join(directory, f"{job}.lock"), exclusive=True, purpose=f"backup {job}",
                          label=f"the lock of job {job}")


def run_job(config: Config, job: Job, trigger: str = "manual", changes: Optional[ChangeSet] = None,
            on_wait: Callable[[str], None] = _say, stop: Optional[threading.Event] = None,
            repo: Optional[Repository] = None,
            on_report: Optional[Callable[[RunReport], None]] = None,
            progress: Optional[Progress] = None, run_lock: Optional[RunLock] = None) -> RunReport:
    """Run `job` once. Pass `repo` to share one opened repository (and its loaded index) across runs, and
    `run_lock` (of that repository) to hold one repository lock across them; `on_report` is told when the
    report is spooled (the daemon's sender wakes up)."""
    run_id = new_run_id()
    started = utc_now()
    incremental = False

    def report(status: str, errors: tuple = (), **values: object) -> RunReport:
        # every warning of a run belongs in its report, also those about the agent's own configuration
        values["warnings"] = tuple(values.get("warnings", ())) + config_warnings(config)  # type: ignore[arg-type]
        result = RunReport(id=run_id, host=config.host, job=job.name, type=job.type, trigger=trigger,
                           status=status, changed=bool(values.pop("changed", False)),
                           snapshot=values.pop("snapshot", None), started_at=started, finished_at=utc_now(),
                           errors=tuple(errors), every_low=job.every.low, every_high=job.every.high,
                           # what is wrong with the job's settings belongs in every report, not only on
                           # the stderr of the process that loaded them
                           warnings=tuple(f"{key}: {message}" for key, message in job_warnings(job))
                           + tuple(values.pop("warnings", ())),  # type: ignore[arg-type]
                           **values)  # type: ignore[arg-type]
        try:
            result = spool_for(config).add(result)
        except OSError as exc:  # reporting never fails a backup; the run is still recorded (and logged)
            note = f"the report could not be spooled in {config.state_dir}: {exc.strerror}"
            _say(f"warning: {job.name}: {note}")
            result = replace(result, warnings=result.warnings + (note,))
        try:
            StateDir(config.state_dir).record(result, full_scan=not incremental)
        except OSError as exc:
            _say(f"warning: cannot record the run of {job.name} in {config.state_dir}: {exc.strerror}")
        if on_report is not None:
            on_report(result)
        return result

    if job.type == "fs" and not os.path.isdir(str(job.path)):
        return report("failed", (f"{job.path} does not exist or is not a directory",))
    try:
        shared = repo is not None
        repo = repo or open_repository(config)
        try:
            repository_lock = _kept(run_lock, on_wait, stop) if run_lock is not None else \
                _held(repo.lock(exclusive=False, purpose=f"backup {job.name}"), on_wait, stop)
            with _held(job_lock(config, job.name), on_wait, stop, run_lock), repository_lock:
                result = _with_hooks(job, stop,
                                     lambda: _backup(config, job, repo, trigger, started, changes, stop,
                                                                            progress))
                # a damaged index file the run worked around (agent.store.index): said in every report
                # until prune rewrites the index
                result = replace(result, warnings=result.warnings + tuple(repo.index_problems()))
        finally:
            repo.settle()  # a failed run's packs still being written land before its clean-up looks
            if not shared:
                repo.close()  # a shared repository's open packs may be in use by another run
    except StoreFailed as exc:  # the repository refused a write (a full disk): what it stored goes at once
        _clean_up(config, run_lock=run_lock)
        return report("failed", (in_words(exc.cause),), bytes=exc.size, new_bytes=exc.new_bytes)
    except (Aborted, LockTimeout) as exc:
        _clean_up(config, wrote=isinstance(exc, Aborted), run_lock=run_lock)
        return report("failed", ("aborted: the agent was stopping; nothing of this run was committed",))
    except OSError as exc:  # the run failed as a whole: say what could not be done where (a full disk)
        _clean_up(config, run_lock=run_lock)
        where = f"{exc.filename}: " if exc.filename else ""
        return report("failed", (f"{where}{exc.strerror or exc}",))
    except Exception as exc:  # the run failed as a whole; the report carries why
        _clean_up(config, run_lock=run_lock)
        return report("failed", (in_words(exc),))
    # a dump judged bad reports the new data it stored
    _clean_up(config, wrote=result.snapshot is None and result.new_bytes > 0, run_lock=run_lock)
    incremental = result.incremental
    changes = None if result.changes is None else Changes(
        **result.changes.counts(), paths=tuple(result.changes.paths(MAX_CHANGE_PATHS)))
    return report("failed" if result.errors else "ok", result.errors, changed=result.changed,
                  snapshot=result.snapshot.id if result.snapshot else None, files=result.files,
                  bytes=result.bytes, new_bytes=result.new_bytes, warnings=result.warnings, changes=changes)


def _clean_up(config: Config, wrote: bool = True, run_lock: Optional[RunLock] = None) -> None:
    """A run that failed after it may have stored data: what no snapshot references goes now, so that
    it cannot fill the disk under the next run (agent.cleanup, which needs the repository lock
    exclusively: a run lock is let go first, and the next job takes it again)."""
    from agent.cleanup import collect_garbage, collectable

    if wrote and collectable(config.repository):  # else the run lock is kept for the next job
        if run_lock is not None:
            run_lock.let_go()
        try:
            repo = open_repository(config)  # with the run's encryption settings, as the run opened it
        except Exception:  # the run's own report says what is wrong with the repository
            return
        try:
            collect_garbage(repo)
        finally:
            repo.close()


def _with_hooks(job: Job, stop: Optional[threading.Event], backup: Callable[[], TreeResult]) -> TreeResult:
    """`before`, the backup, then `after` whatever happened; a failing hook fails the run."""
    errors: List[str] = []
    result: Optional[TreeResult] = None
    try:
        if job.before:
            done = run_hook(job.before, job.timeout, stop=stop)
            if not done.ok:
                errors.append(f"before: {done.describe()}")
        if not errors:
            result = backup()
    finally:
        if job.after:
            done = run_hook(job.after, job.timeout, stop=stop)
            if not done.ok:
                errors.append(f"after: {done.describe()}")
    if result is None:
        return TreeResult(None, False, 0, 0, 0, tuple(errors), ())
    if errors:
        result = replace(result, errors=result.errors + tuple(errors))
    return result


def riak_rules(paths: Tuple[str, ...], exclude: Tuple[str, ...]) -> IgnoreRules:
    """Rules that, walking from /, include only `paths`. gitignore cannot re-include anything below an
    excluded directory, so level by level: exclude the children of each ancestor, re-include the next
    level's ancestors and targets."""
    targets = {path.strip("/") for path in paths}
    levels: dict = {}
    for target in targets:
        parts = target.split("/")
        for depth in range(1, len(parts) + 1):
            levels.setdefault(depth, set()).add("/".join(parts[:depth]))
    patterns = ["/*"]
    for depth in sorted(levels):
        if depth > 1:
            patterns += [f"/{parent}/*" for parent in sorted(levels[depth - 1]) if parent not in targets]
        patterns += [f"!/{prefix}/" if prefix not in targets else f"!/{prefix}" for prefix in sorted(levels[depth])]
    return IgnoreRules([*patterns, *exclude], keep_excluded_dirs=False)


def _backup(config: Config, job: Job, repo: Repository, trigger: str, started: str,
            changes: Optional[ChangeSet], stop: Optional[threading.Event],
            progress: Optional[Progress] = None) -> TreeResult:
    names = {"job": job.name, "job_type": job.type, "host": config.host, "trigger": trigger, "now": started}
    if job.type in ("fs", "riak"):
        cache = FilesCache.load(cache_path(config.state_dir, job.name))
        if job.type == "riak":
            missing = [path for path in job.paths if not os.path.exists(path)]
            if missing:
                return TreeResult(None, False, 0, 0, 0, tuple(f"{path} does not exist" for path in missing), ())
            return backup_tree(repo, "/", riak_rules(job.paths, job.exclude), cache, stop=stop, progress=progress,
                               **names)
        return backup_tree(repo, str(job.path), IgnoreRules(job.exclude), cache, changes=changes, stop=stop,
                           progress=progress, **names)
    from agent.dumps.dumping import backup_dump, backup_sqlite  # fs-only agents never load the dump code

    if job.type == "sqlite":
        return backup_sqlite(repo, job, config.state_dir, stop, names, progress)
    return backup_dump(repo, job, stop, names, progress)


class RunLock:
    """One shared repository lock for a run of several jobs (`backup --all`), taken when the first job
    needs it and kept between jobs, so that each job does not take and end a lock of its own (four
    requests on object storage). Prune waits for it as for any backup's.

    It is let go while a job's own lock has to be waited for: another run of that job (the daemon's) may
    itself wait for the repository lock behind a waiting prune, and that prune waits for this lock, so
    holding it there could deadlock. Use it as a context manager: it is released at the end."""

    def __init__(self, repo: Repository, purpose: str) -> None:
        self._repo, self._purpose = repo, purpose
        self._lock: Optional[RepositoryLock] = None

    def hold(self, on_wait: Callable[[str], None], stop: Optional[threading.Event]) -> None:
        """Take it unless held; raises LockTimeout when `stop` is set while waiting."""
        if self._lock is None:
            lock = self._repo.lock(exclusive=False, purpose=self._purpose)
            lock.acquire(on_wait=on_wait, stop=stop)
            self._lock = lock

    def let_go(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.let_go()


class _kept:
    """The run lock for one job's `with` block: held on entry, kept on exit (the run ends it)."""

    def __init__(self, run_lock: RunLock, on_wait: Callable[[str], None], stop: Optional[threading.Event]) -> None:
        self.run_lock, self.on_wait, self.stop = run_lock, on_wait, stop

    def __enter__(self) -> RunLock:
        self.run_lock.hold(self.on_wait, self.stop)
        return self.run_lock

    def __exit__(self, *exc: object) -> None:
        pass


class _held:
    """Hold a lock for a `with` block, telling `on_wait` if it has to wait and giving up on `stop`. A
    `run_lock` is let go before any waiting (see RunLock)."""

    def __init__(self, lock: FileLock | RepositoryLock, on_wait: Callable[[str], None],
                 stop: Optional[threading.Event], run_lock: Optional[RunLock] = None) -> None:
        self.lock, self.on_wait, self.stop, self.run_lock = lock, on_wait, stop, run_lock

    def __enter__(self) -> FileLock | RepositoryLock:
        if self.run_lock is not None:
            try:
                self.lock.acquire(timeout=0, on_wait=lambda _message: None)
                return self.lock
            except LockTimeout:
                self.run_lock.let_go()
        self.lock.acquire(on_wait=self.on_wait, stop=self.stop)
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
