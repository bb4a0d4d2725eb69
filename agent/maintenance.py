"""The daemon's maintenance lane: restore drills of each job every `drill_every`, and a prune of the
repository every `prune_every` (retention, then the data no snapshot needs: also what failed or killed
runs left behind). One task at a time, only while no backup runs, on a thread at the lowest CPU and
I/O priority (`nice 19`, the idle I/O class), which the processes it starts (a drill's throwaway
database server) inherit.

When: a job is first drilled once it has a successful backup, within minutes of start-up, staggered
per host and job; then `drill_every` after its previous drill. The first prune comes within the hour,
at a time spread per host (a fleet sharing storage does not prune at once); then `prune_every` after
the previous one. The times live in `state_dir/maintenance.json`, so restarts keep the clocks.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from agent.config import Config
from agent.durable import atomic_write
from agent.report import RunReport, new_run_id, utc_now
from agent.schedule import spread
from agent.text import in_words

log = logging.getLogger("backup-agent")

PRUNE_JOB = "repository"      # the job name of a prune run's report (it covers the whole repository)
FIRST_DRILL_WITHIN = 600.0    # a job's first drill comes within ten minutes of its first backup being known
FIRST_PRUNE_WITHIN = 3600.0
START_DELAY = 60.0            # nothing of this lane in the first minute after start-up
_IOPRIO_SET = 251             # x86_64 syscall number (asm/unistd_64.h)
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13


@dataclass(frozen=True)
class Task:
    """A maintenance run: `kind` "drill" (of `job`) or "prune" (`job` None), due at `at` (epoch seconds)."""

    kind: str
    job: Optional[str]
    at: float


class Records:
    """When each job was last drilled and the repository last pruned: `state_dir/maintenance.json`."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "maintenance.json")

    def load(self) -> Dict[str, Dict[str, float]]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            return {"drills": dict(data.get("drills", {})), "prune": dict(data.get("prune", {}))}
        except (OSError, ValueError, AttributeError):
            return {"drills": {}, "prune": {}}

    def record(self, task: Task, when: float) -> None:
        data = self.load()
        if task.kind == "drill":
            data["drills"][str(task.job)] = when
        else:
            data["prune"]["last"] = when
        atomic_write(self.path, json.dumps(data).encode(), durable=False)


def due_tasks(config: Config, records: Dict[str, Dict[str, float]], backed_up: Callable[[str], bool],
              started_at: float) -> List[Task]:
    """Every task with the time it is due, soonest first. `backed_up(job)`: whether the job has a
    successful backup (a job without one has nothing to drill yet)."""
    tasks: List[Task] = []
    # a node that encrypts without an identity cannot read back what it stored (README "Encryption"):
    # its jobs are drilled where the identity is (`drill --repository URL --host NODE`)
    encryption = config.encryption
    can_drill = not (encryption.enabled and encryption.identity_file is None)
    for job in config.jobs:
        if not backed_up(job.name) or not can_drill:
            continue
        every = config.drill_every_of(job)
        last = records["drills"].get(job.name)
        at = last + every if last is not None else \
            _first(started_at, every, FIRST_DRILL_WITHIN, spread(config.host, job.name, "drill"))
        tasks.append(Task("drill", job.name, at))
    last_prune = records["prune"].get("last")
    at = last_prune + config.prune_every if last_prune is not None else \
        _first(started_at, config.prune_every, FIRST_PRUNE_WITHIN, spread(config.host, "", "prune"))
    tasks.append(Task("prune", None, at))
    return sorted(tasks, key=lambda task: task.at)


def _first(started_at: float, every: float, within: float, place: float) -> float:
    """A first run: not in the first minute after start-up (nor before half of a short period), then
    at `place` (0..1, per host and job) of a window of `within` (at most the period)."""
    return started_at + min(START_DELAY, every / 2) + min(within, every) * place


def lowest_priority() -> None:
    """The calling thread (and what it starts from now on) at nice 19 and in the idle I/O class."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(_IOPRIO_SET, 1, tid, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)  # 1: IOPRIO_WHO_PROCESS
    except (OSError, AttributeError):
        pass


def run_task(config: Config, task: Task, on_report: Callable[[RunReport], None]) -> Optional[RunReport]:
    """Run one task now (on the calling thread); its report is spooled and handed to `on_report`. None:
    a prune the repository does not allow (append-only credentials), which has no report."""
    report = _drill(config, str(task.job)) if task.kind == "drill" else prune(config)
    if report is not None:
        on_report(report)
    return report


def _drill(config: Config, name: str) -> RunReport:
    from agent.drill import DrillTarget, drill, unopened
    from agent.runner import open_repository, spool_for

    job = config.job(name)
    target = DrillTarget(name, config.host, job.every.low, job.every.high, config.drill_every_of(job), job.type)
    try:
        repo = open_repository(config)
    except Exception as exc:  # a damaged config, unreachable storage: the drill fails, in its report
        return unopened(target, in_words(exc), config.state_dir, spool_for(config))
    try:
        return drill(repo, target, config.state_dir, spool_for(config))
    finally:
        repo.close()


def prune(config: Config) -> Optional[RunReport]:
    """Apply every job's retention and delete what no snapshot needs; a report with `"trigger": "prune"`
    and the repository's size before and after, spooled. Never raises: a failure is the report's error.
    None when the repository does not allow deleting (S3 credentials without delete permission): then
    nothing was deleted, and nothing is reported."""
    from agent.pruner import prune_repository
    from agent.runner import open_repository, spool_for

    run_id, started = new_run_id(), utc_now()
    before = after = None
    errors: List[str] = []
    warnings: List[str] = []
    try:
        repo = open_repository(config)
        try:
            with repo.lock(exclusive=True, purpose="prune (daemon)"):
                before = sum(repo.packs().values())
                # a node's daemon applies its own retention to its own snapshots: hosts sharing a
                # repository may keep theirs longer (the central prune applies one policy to all)
                result = prune_repository(repo, {job.name: job.retention for job in config.jobs},
                                          hosts={config.host})
                after = sum(repo.packs().values())
            warnings += [f"damaged (kept, not pruned): {reason}" for reason in result.damaged]
        finally:
            repo.close()
    except Exception as exc:  # the prune failed as a whole: said in its report
        if _denied(config, exc):
            return None
        errors.append(in_words(exc))
    shortest = min((job.every.high for job in config.jobs), default=config.prune_every)
    report = RunReport(id=run_id, host=config.host, job=PRUNE_JOB, type="repository", trigger="prune",
                       status="failed" if errors else "ok", changed=False, snapshot=None, started_at=started,
                       finished_at=utc_now(), errors=tuple(errors), warnings=tuple(warnings),
                       every_low=min(shortest, config.prune_every), every_high=config.prune_every,
                       repository_bytes_before=before, repository_bytes_after=after)
    try:
        return spool_for(config).add(report)
    except OSError as exc:
        log.error("cannot spool the prune report in %s: %s", config.state_dir, exc.strerror)
        return report


def _denied(config: Config, exc: Exception) -> bool:
    """Whether `exc` says the repository's credentials may not delete (only object storage has those)."""
    if os.path.isabs(config.repository):
        return False
    from agent.backend.s3 import AccessDenied

    return isinstance(exc, AccessDenied)


class Lane:
    """The daemon's side: `step(now, idle)` starts the next due task when the daemon is idle and none
    runs, and returns how long until one is due (seconds; None: nothing to wait for)."""

    def __init__(self, config: Config, started_at: float, backed_up: Callable[[str], bool],
                 on_report: Callable[[RunReport], None], on_done: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.started_at = started_at
        self.backed_up = backed_up
        self.on_report = on_report
        self.on_done = on_done
        self.records = Records(config.state_dir)
        self.thread: Optional[threading.Thread] = None
        from agent.drill import remove_leftovers

        cleared = remove_leftovers(config.state_dir)
        for path in cleared.removed:
            log.info("removed the scratch directory of an interrupted drill: %s", path)
        for problem in cleared.problems:
            log.warning("%s", problem)

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def step(self, now: float, idle: bool) -> Optional[float]:
        if self.busy:
            return None
        tasks = due_tasks(self.config, self.records.load(), self.backed_up, self.started_at)
        if not tasks:
            return None
        task = tasks[0]
        if task.at > now:
            return task.at - now
        if not idle:
            return None  # after the backups: a run's end wakes the daemon
        self.thread = threading.Thread(target=self._run, args=(self.config, task), name=f"maintenance-{task.kind}",
                                       daemon=True)
        self.thread.start()
        return None

    def _run(self, config: Config, task: Task) -> None:
        lowest_priority()
        what = f"drill of {task.job}" if task.kind == "drill" else "prune"
        log.info("%s started", what)
        try:
            report = run_task(config, task, self.on_report)
            self.records.record(task, self.clock())
            if report is None:
                log.info("%s skipped: the repository's credentials may not delete (append-only); a host with "
                         "such credentials prunes it (backup-agent-prune.timer)", what)
                return
            level = logging.INFO if report.ok else logging.ERROR
            log.log(level, "%s %s%s", what, report.status,
                    "".join(f"\n  error: {error}" for error in report.errors[:20]))
        except Exception as exc:  # never kills the daemon; the next due time retries
            log.error("%s failed: %s", what, exc)
            self.records.record(task, self.clock())
        finally:
            self.on_done()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
