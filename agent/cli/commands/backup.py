"""`backup JOB... | --all`: run jobs now, one after the other, print or emit their run reports, then
try briefly to deliver the reports to the collector."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from typing import Iterator, List, Optional, Sequence

import agent.cli.render as render
from agent.cli.common import EXIT_FAILED, EXIT_OK, PREFIX, UsageError, check_jobs, err, load_config, print_json
from agent.cli.progress import progress
from agent.text import plural

BRIEF_DELIVERY = 5.0  # a one-shot backup tries this long; the daemon (or `reports --flush`) does the rest


def backup(config, names: Sequence[str], as_json: bool = False, stop: Optional[threading.Event] = None) -> int:
    """Back up the jobs `names` (known to be in `config`); exit status 0 if every run was ok, else 1.
    Once `stop` is set the running job is aborted (its data removed, a failed report written, as the
    daemon's stop does) and the jobs after it are not run."""
    from contextlib import nullcontext

    from agent.runner import RunLock, open_repository, run_job

    reports = []
    not_run: List[str] = []
    repo = None
    try:
        repo = open_repository(config)  # shared by the runs: the index is loaded once
    except Exception:
        pass  # each run reports the problem in its own report
    # one repository lock for every job (on object storage each lock costs requests); the runs end
    # before it is released
    with RunLock(repo, f"backup {', '.join(names)}") if repo is not None else nullcontext() as run_lock:
        # One job after the other: measured, two threads were slower (GIL) and doubled peak memory.
        for number, name in enumerate(names):
            if stop is not None and stop.is_set():
                not_run = list(names[number:])
                break
            with progress(name, as_json, "entry", "entries") as shown:
                report = run_job(config, config.job(name), trigger="manual", repo=repo, progress=shown,
                                 run_lock=run_lock, stop=stop)
            reports.append(report)
            if not as_json:
                render.show(render.report(report))
    if as_json:
        print_json([report.to_json() for report in reports])
    if not_run:
        err(f"{PREFIX}stopped: {plural(len(not_run), 'job')} not run: {', '.join(not_run)}")
    if config.collector is not None and not (stop is not None and stop.is_set()):
        deliver_briefly(config)  # a stopped command ends now; the daemon or `reports --flush` delivers
    return EXIT_OK if all(report.ok for report in reports) and not not_run else EXIT_FAILED


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[threading.Event]:
    """An Event that SIGTERM and SIGINT set for the length of the context, instead of ending the process
    at once (the daemon's stop, agent.daemon): a run stopped so cleans up after itself and reports."""
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def deliver_briefly(config) -> None:
    import time

    from agent.report.sender import Sender
    from agent.runner import spool_for

    sender = Sender(spool_for(config), config.collector, timeout=3.0, patient=False)
    try:
        result = sender.drain(deadline=time.monotonic() + BRIEF_DELIVERY)
    finally:
        sender.close()
    if result.remaining:
        err(f"{PREFIX}note: {plural(result.remaining, 'report')} not delivered to the collector yet: they stay "
            "spooled (`backup-agent reports`)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.all and args.jobs:
        raise UsageError("give job names or --all, not both")
    if not args.all and not args.jobs:
        raise UsageError("name the jobs to back up, or give --all")
    names: List[str] = [job.name for job in config.jobs] if args.all else args.jobs
    check_jobs(config, names)
    with stopped_by_signals() as stop:
        return backup(config, names, args.json, stop)
