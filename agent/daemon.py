"""`backup-agent run`: the long-running agent.

It wires the pieces together and decides nothing itself: the watcher reports changes, the debouncer
says when a burst has settled, the timer module says when a job is due, the runner runs a job. The main
loop is a sequence of small steps (`step`) that waits on one Event between them, so that shutdown,
reload, a settled burst or a due job all end the wait promptly; there is no bare sleep. A wait is never
shortened for something that cannot start yet (a paused job's change, a busy job's follow-up): the pause's
end and a run's end wake the loop themselves, so an idle or paused agent wakes only when it has work.

Two clocks: the wall clock for the schedule and pauses (their times are stored and shown), the monotonic
clock for intervals (debounce, idle release), which a clock step must not stretch or cut.

Lanes: change-triggered runs of fs jobs have a lane of their own, so a small tree's change is not
starved behind a long database dump; every other run shares `max_concurrent_runs` (default 1).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

from agent.config import Config, ConfigError, Job, load_config
from agent.durable import atomic_write, make_private_dirs
from agent.maintenance import Lane
from agent.report import RunReport
from agent.report.sender import DeliveryLoop, Sender
from agent.runner import open_repository, run_job, spool_for
from agent.schedule import Due, next_due
from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules
from agent.state import JobState, StateDir
from agent.systemd import notify, watchdog_interval
from agent.text import plural
from agent.watch.debounce import Debouncer
from agent.watch.observer import TreeWatcher

log = logging.getLogger("backup-agent")

SHUTDOWN_GRACE = 8.0    # a running backup may finish within this; then it is aborted (10 s in all)
IDLE_WAKE = 30.0        # upper bound of one wait when nothing is due (cheap: a few stats)
IDLE_RELEASE = 120.0    # after this long without a run, the repository index is let go (reloaded on use)


@dataclass
class _Running:
    thread: threading.Thread
    trigger: str
    lane: str


@dataclass
class Daemon:
    config_path: Optional[str]
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    config: Optional[Config] = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    abort_runs: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.debouncer = Debouncer()
        self.running: Dict[str, _Running] = {}
        self.states: Dict[str, JobState] = {}
        self.started_at = self.clock()
        self.reload_requested = False
        self.paused: Dict[str, float] = {}
        self._pause_mtime = -1.0
        self._state_mtime = -1.0
        self._lock = threading.Lock()
        self.watcher: Optional[TreeWatcher] = None
        self.delivery: Optional[DeliveryLoop] = None
        self.repo = None
        self.last_activity = self.monotonic()
        self.passes = 0                       # passes of the main loop: each one is a wake-up
        self._startup_scans: Set[str] = set()  # jobs whose pending full scan is the start-up one
        self.maintenance: Optional[Lane] = None  # drills and prunes (agent.maintenance)

    # --- events from other threads ----------------------------------------------------------------------

    def _on_change(self, job: str, changes: ChangeSet) -> None:
        self.debouncer.add(job, changes, self.monotonic())
        self.wake.set()

    def _on_events_lost(self, job: str) -> None:
        log.warning("%s: file events may have been lost; the next backup scans the whole tree", job)
        self._on_change(job, ChangeSet.everything())

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()
        self.wake.set()

    def request_reload(self, *_: object) -> None:
        self.reload_requested = True
        self.wake.set()

    # --- start-up and configuration ---------------------------------------------------------------------

    def start(self) -> None:
        self.config = load_config(self.config_path)
        for warning in (*self.config.warnings, *self.config.advice):
            log.warning("%s", warning)
        make_private_dirs(self.config.state_dir)
        self.state = StateDir(self.config.state_dir)
        try:
            self.repo = open_repository(self.config)
        except Exception as exc:  # each run will report it; the agent keeps watching
            log.error("repository %s: %s", self.config.repository, exc)
        self.watcher = TreeWatcher(self._on_change, self._on_events_lost, self.config.poll_interval)
        self.watcher.start()
        self._start_delivery()
        for job in self.config.jobs:
            self._arm(job, startup=True)
        self.maintenance = Lane(self.config, self.started_at, lambda name: self.job_state(name).last_ok_at is not None,
                                self._on_report, self.wake.set, self.clock)
        self._write_daemon_file()
        log.info("backup-agent running: %d jobs, host %s, repository %s", len(self.config.jobs),
                 self.config.host, self.config.repository)

    def _start_delivery(self) -> None:
        """The report sender follows the [collector] settings; without them reports stay in the spool."""
        assert self.config is not None
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None
        settings = self.config.collector
        if settings is None:
            return
        spool = spool_for(self.config)
        self.delivery = DeliveryLoop(lambda stop: Sender(spool, settings, stop)).start()
        log.info("delivering run reports to %s", settings.url)

    def _arm(self, job: Job, startup: bool = False) -> None:
        assert self.watcher is not None
        if job.type == "fs" and job.on_change and job.path:
            self.debouncer.configure(job.name, job.quiet, job.max_delay)
            self.watcher.watch(job.name, job.path, IgnoreRules(job.exclude))
            # Changes made while the agent was not watching are found by a full scan now, unless the
            # timer is about to run one anyway (first backup, or overdue: reported as catch-up).
            if self.due(job).trigger == "schedule" and self.job_state(job.name).last_full:
                self.debouncer.add(job.name, ChangeSet.everything(), self.monotonic() - job.quiet)
                if startup:
                    self._startup_scans.add(job.name)

    def _disarm(self, name: str) -> None:
        assert self.watcher is not None
        self.watcher.unwatch(name)
        self.debouncer.forget(name)
        self._startup_scans.discard(name)

    def reload(self) -> None:
        self.reload_requested = False
        notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            log.error("reload: the new configuration is invalid; keeping the old one")
            notify("READY=1")
            return
        old = {job.name: job for job in self.config.jobs} if self.config else {}
        fresh = {job.name: job for job in new.jobs}
        for name in old.keys() - fresh.keys():
            self._disarm(name)
        for name, job in fresh.items():
            if old.get(name) != job:
                self._disarm(name)
                self._arm(job)
        collector_changed = (self.config.collector if self.config else None) != new.collector \
            or (self.config.state_dir if self.config else None) != new.state_dir
        self.config = new
        if self.maintenance is not None:
            self.maintenance.config = new
        if collector_changed:
            self._start_delivery()
        self._write_daemon_file()
        log.info("reloaded configuration: %d jobs (%d added, %d removed, %d changed)", len(fresh),
                 len(fresh.keys() - old.keys()), len(old.keys() - fresh.keys()),
                 sum(1 for n in fresh.keys() & old.keys() if fresh[n] != old[n]))
        notify("READY=1")

    def _write_daemon_file(self) -> None:
        assert self.config is not None and self.watcher is not None
        modes = self.watcher.modes()
        data = {"pid": os.getpid(), "started_at": self.started_at,
                "watch": {job.name: modes.get(job.name, "off") for job in self.config.jobs}}
        try:
            atomic_write(self.state.daemon_file(), json.dumps(data).encode(), durable=False)
        except OSError as exc:  # `status` then says "not running"; the agent itself works on
            log.error("cannot write %s: %s", exc.filename or self.state.daemon_file(), exc.strerror)

    # --- the loop ---------------------------------------------------------------------------------------

    def job_state(self, name: str) -> JobState:
        if name not in self.states:
            self.states[name] = self.state.job(name)
        return self.states[name]

    def _refresh_external_state(self, now: float, tick: float) -> None:
        """Pick up runs recorded by other processes (a manual backup) and pause requests (`now`: wall
        clock, `tick`: monotonic)."""
        mtime = self.state.mtime()
        if mtime != self._state_mtime:
            self._state_mtime = mtime
            self.states.clear()
        pause_mtime = self.state.pause_mtime()
        if pause_mtime != self._pause_mtime or any(until <= now for until in self.paused.values()):
            self._pause_mtime = pause_mtime
            before = self.paused
            self.paused = self.state.pauses(now)
            assert self.config is not None
            for job in self.config.jobs:
                if self._is_paused(job.name, before) and not self._is_paused(job.name, self.paused) \
                        and job.on_change:
                    log.info("%s: resumed; taking one backup", job.name)
                    self.debouncer.add(job.name, ChangeSet.everything(), tick - job.max_delay)

    @staticmethod
    def _is_paused(name: str, pauses: Dict[str, float]) -> bool:
        return name in pauses or "*" in pauses

    def due(self, job: Job) -> Due:
        assert self.config is not None
        return next_due(job, self.config.host, self.job_state(job.name), self.started_at, self.clock())

    def step(self) -> float:
        """One pass: start what is ready; returns how long the loop may wait (seconds) before the next pass."""
        assert self.config is not None
        now, tick = self.clock(), self.monotonic()
        self._reap()
        self._refresh_external_state(now, tick)
        busy = frozenset(self.running)
        jobs = {job.name: job for job in self.config.jobs}
        paused = frozenset(name for name in jobs if self._is_paused(name, self.paused))
        # change-triggered runs: their own lane, one at a time
        if not self._change_lane_busy():
            for name, changes in self.debouncer.take_ready(tick, busy | paused, limit=1):
                if name in jobs:
                    trigger = "startup" if name in self._startup_scans else "change"
                    self._startup_scans.discard(name)
                    self._start(jobs[name], trigger, changes, "change")
                    busy = busy | {name}
        waits = self._start_due_timers(now, busy)
        if self.maintenance is not None:  # drills and prunes: after the backups, one at a time
            until = self.maintenance.step(now, idle=not self.running)
            if until is not None:
                waits.append(until)
        # Only a burst that could start when it settles may shorten the wait: a paused job's burst waits
        # for the pause to end, a busy job's or one behind a full change lane for a run to end.
        deadline = None if self._change_lane_busy() else \
            self.debouncer.next_deadline(exclude=frozenset(self.running) | paused)
        if deadline is not None:
            waits.append(deadline - tick)
        waits += [until - now for until in self.paused.values()]  # a pause ends: its held changes go
        if self.running or deadline is not None:
            self.last_activity = tick
        elif self.repo is not None and self.repo.holds_index:
            idle = tick - self.last_activity
            if idle >= IDLE_RELEASE:
                # hot while a deployment writes, small while nothing happens (a paused deployment too)
                self.repo.release()
                release_memory()
            else:
                waits.append(IDLE_RELEASE - idle)
        return max(min([IDLE_WAKE, *waits]), 0.05)

    def _change_lane_busy(self) -> bool:
        return any(run.lane == "change" for run in self.running.values())

    def _start_due_timers(self, now: float, busy: frozenset) -> List[float]:
        """Start the timer runs that are due (shared lane, global limit); returns the waits (seconds) until
        the others are."""
        assert self.config is not None
        waits: List[float] = []
        for job in self.config.jobs:
            due = self.due(job)
            if due.at > now:
                waits.append(due.at - now)
                continue
            shared = sum(1 for run in self.running.values() if run.lane == "shared")
            if job.name in busy or shared >= self.config.max_concurrent_runs:
                continue
            # a full scan covers whatever the watcher had pending for this job
            self.debouncer.take(job.name)
            self._startup_scans.discard(job.name)
            self._start(job, due.trigger, None, "shared")
            busy = busy | {job.name}
        return waits

    def _start(self, job: Job, trigger: str, changes: Optional[ChangeSet], lane: str) -> None:
        # a due time passed (trigger "catch-up") belongs to this start-up only
        thread = threading.Thread(target=self._run, args=(job, trigger, changes), name=f"run-{job.name}",
                                  daemon=True)
        self.running[job.name] = _Running(thread, trigger, lane)
        thread.start()

    def _run(self, job: Job, trigger: str, changes: Optional[ChangeSet]) -> None:
        assert self.config is not None
        what = "changes" if changes is not None and not changes.full else "full scan"
        log.info("%s: backup started (%s, %s)", job.name, trigger, what)
        try:
            report = run_job(self.config, job, trigger=trigger, changes=changes, repo=self.repo,
                             on_wait=lambda message: log.info("%s: %s", job.name, message),
                             stop=self.abort_runs, on_report=self._on_report)
            self._log_report(report)
            with self._lock:
                self.states.pop(job.name, None)
            release_memory()
        finally:
            self.wake.set()  # the loop reaps the run (and starts a held follow-up) now, whatever happened

    def _on_report(self, report: RunReport) -> None:
        delivery = self.delivery
        if delivery is not None:
            delivery.kick()

    @staticmethod
    def _log_report(report: RunReport) -> None:
        level = logging.INFO if report.ok else logging.ERROR
        outcome = ("snapshot " + (report.snapshot or "")[:12]) if report.changed else "unchanged"
        log.log(level, "%s: backup %s (%s): %s, %d files, %d new bytes%s", report.job, report.status,
                report.trigger, outcome, report.files, report.new_bytes,
                "".join(f"\n  error: {error}" for error in report.errors[:20]))

    def _reap(self) -> None:
        for name, run in list(self.running.items()):
            if not run.thread.is_alive():
                run.thread.join()
                del self.running[name]
                self.states.pop(name, None)

    def run_forever(self) -> int:
        self.start()
        notify("READY=1")
        ping = watchdog_interval()
        last_ping = self.monotonic()
        try:
            while not self.stop_event.is_set():
                if self.reload_requested:
                    self.reload()
                wait = self.step()
                self.passes += 1
                if ping is not None:
                    if self.monotonic() - last_ping >= ping:
                        notify("WATCHDOG=1")
                        last_ping = self.monotonic()
                    wait = min(wait, ping)
                self.wake.wait(wait)
                self.wake.clear()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        notify("STOPPING=1")
        log.info("stopping: %s running", plural(len(self.running), "backup"))
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for run in list(self.running.values()):
            run.thread.join(max(deadline - time.monotonic(), 0))
        if any(run.thread.is_alive() for run in self.running.values()):
            log.warning("aborting running backups (nothing partial is committed)")
            self.abort_runs.set()
            for run in list(self.running.values()):
                run.thread.join(2.0)
        if self.maintenance is not None:
            self.maintenance.join(SHUTDOWN_GRACE)  # a drill's server dies with the process, if not before
        if self.watcher is not None:
            self.watcher.stop()
        if self.delivery is not None:
            self.delivery.close()  # whatever is undelivered stays spooled for the next start
        if self.repo is not None:
            self.repo.close()
        if self.config is not None:
            try:
                data_file = self.state.daemon_file()
                with open(data_file, encoding="utf-8") as handle:
                    if json.load(handle).get("pid") == os.getpid():
                        os.unlink(data_file)
            except (OSError, ValueError):
                pass
        log.info("stopped")


def release_memory() -> None:
    """Hand memory freed by a run back to the system: an idle agent should be small, and glibc keeps
    freed heap pages otherwise."""
    import gc

    gc.collect()  # cycles left by a run would keep whole arenas alive
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def install_signal_handlers(daemon: Daemon) -> None:
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    signal.signal(signal.SIGUSR1, lambda *_: daemon.wake.set())  # `pause`/`resume` nudge


def running_daemon(state_dir: str) -> Tuple[Optional[int], Dict[str, str], Optional[float]]:
    """(pid, watch modes, started_at) of the agent running on this state_dir, or (None, {}, None)."""
    try:
        with open(StateDir(state_dir).daemon_file(), encoding="utf-8") as handle:
            data = json.load(handle)
        pid = int(data["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"agent" not in handle.read():
                return None, {}, None  # the pid was reused by something else
        return pid, dict(data.get("watch", {})), float(data.get("started_at", 0))
    except (OSError, ValueError, KeyError):
        return None, {}, None
