"""The agent daemon and its controls: `run`, `status`, `pause`, `resume`."""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional

import agent.cli.render as render
from agent.cli.common import EXIT_OK, UsageError, check_jobs, load_config, print_json


def run_daemon(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon, install_signal_handlers
    from agent.logs import setup_logging

    setup_logging(args.verbose)
    daemon = Daemon(args.config)
    install_signal_handlers(daemon)
    return daemon.run_forever()


def iso(epoch: Optional[float]) -> Optional[str]:
    """A Unix time as ISO 8601 UTC to the second (`2026-11-27T07:25:01Z`); None stays None."""
    if epoch is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_rows(config, only: Optional[str] = None) -> Dict:
    """`status --json`: {"agent": {"running", "pid", "host"}, "jobs": [one row per job (or job `only`)]}."""
    import time

    from agent.daemon import running_daemon
    from agent.schedule import next_due
    from agent.state import StateDir

    state = StateDir(config.state_dir)
    pid, modes, started_at = running_daemon(config.state_dir)
    now = time.time()
    pauses = state.pauses(now)
    rows: List[Dict] = []
    for job in config.jobs:
        if only is not None and job.name != only:
            continue
        job_state = state.job(job.name)
        last = job_state.last_run or {}
        due = next_due(job, config.host, job_state, started_at if pid else now)
        paused_until = pauses.get(job.name, pauses.get("*"))
        watch = modes.get(job.name, "off") if pid else "off"
        rows.append({"name": job.name, "type": job.type, "last_run": last.get("finished_at"),
                     "last_ok": job_state.last_ok, "last_status": last.get("status"),
                     "last_trigger": last.get("trigger"), "last_changed": last.get("changed"),
                     "last_error": (last.get("errors") or [None])[0],
                     "next_due": iso(due.at), "next_trigger": due.trigger, "watch": watch,
                     "paused_until": iso(paused_until) if job.on_change and paused_until else None,
                     "failures": job_state.failures})
    return {"agent": {"running": pid is not None, "pid": pid, "host": config.host}, "jobs": rows}


def status(config, job: Optional[str] = None, as_json: bool = False) -> int:
    if job:
        check_jobs(config, [job])
    data = status_rows(config, job)
    if as_json:
        print_json(data)
    else:
        render.show(render.status(data["agent"], data["jobs"]))
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    return status(load_config(args.config), args.job, args.json)


def _nudge_daemon(config) -> None:
    import signal

    from agent.daemon import running_daemon

    pid, _, _ = running_daemon(config.state_dir)
    if pid:
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            pass


def pause(config, job: Optional[str], duration: str) -> int:
    import time

    from agent.config import parse_duration
    from agent.state import StateDir

    if job:
        check_jobs(config, [job])
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    until = time.time() + seconds
    StateDir(config.state_dir).set_pause(job, until)
    _nudge_daemon(config)
    print(f"change-triggered backups of {job or 'every job'} paused until {iso(until)}; "
          "`backup-agent resume` takes one backup")
    return EXIT_OK


def resume(config, job: Optional[str]) -> int:
    from agent.state import StateDir

    if job:
        check_jobs(config, [job])
    StateDir(config.state_dir).set_pause(job, None)
    _nudge_daemon(config)
    print(f"change-triggered backups of {job or 'every job'} resumed")
    return EXIT_OK


def run_pause(args: argparse.Namespace) -> int:
    return pause(load_config(args.config), args.job, args.duration)


def run_resume(args: argparse.Namespace) -> int:
    return resume(load_config(args.config), args.job)
