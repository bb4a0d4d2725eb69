"""`drill JOB... | --all [--json] [--identity FILE] [--repository URL --host NODE]`: prove that each job's
latest snapshot restores (agent.drill), one report per job (`"trigger": "drill"`), spooled and sent
like a backup's; exit 0 when every drill passed, 1 when one failed."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import agent.cli.render as render
from agent.cli.commands.backup import deliver_briefly
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    UsageError,
    check_jobs,
    err,
    error,
    load_config,
    open_repository,
    print_json,
    require_identity,
    warning,
    with_identity,
)
from agent.text import plural

if TYPE_CHECKING:
    from agent.config import Config
    from agent.drill import DrillTarget
    from agent.report import RunReport
    from agent.report.spool import Spool
    from agent.store import Repository


def drill(config: Config, names: Sequence[str], as_json: bool = False, identity: Optional[str] = None,
          repository: Optional[str] = None, host: Optional[str] = None) -> int:
    """Drill the jobs `names` of `host` (default: this host) in `repository` (default: the configured
    one); exit status 0 if every drill passed, else 1. A repository that cannot be opened (a damaged
    config, an unreachable endpoint) fails every drill, each in its report; one that does not exist, or
    an identity or node key that is missing or wrong, is a UsageError (the configuration's to fix)."""
    from agent.runner import spool_for

    config = with_identity(config, identity)
    repo, problem = _opened(config, repository)
    try:
        if repo is not None:
            require_identity(repo, config, required=True)  # an encrypted repository's contents need one
        else:
            error(problem)
        spool = spool_for(config)
        reports = [_drill_one(config, repo, problem, _target(config, name, host or config.host, identity),
                              spool, as_json) for name in names]
    finally:
        if repo is not None:
            repo.close()
    if as_json:
        print_json([report.to_json() for report in reports])
    if config.collector is not None:
        deliver_briefly(config)
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def _drill_one(config: Config, repo: Optional[Repository], problem: str, target: DrillTarget, spool: Spool,
               as_json: bool) -> RunReport:
    """One job's drill, its report spooled in `spool` (and shown unless `as_json`); without `repo`, the
    report of a drill that could not begin (`problem`: why)."""
    from agent.drill import drill as drill_in
    from agent.drill import unopened

    if repo is None:
        report = unopened(target, problem, config.state_dir, spool)
    else:
        if not as_json:
            err(f"drilling {target.job} ...")
        report = drill_in(repo, target, config.state_dir, spool, fork_writers=True)
    if not as_json:
        render.show(drill_lines(report))
    return report


def _opened(config: Config, location: Optional[str]) -> Tuple[Optional[Repository], str]:
    """(the repository at `location` (None: the configured one), "") or (None, why it cannot be opened,
    naming the object). Raises UsageError as common.open_repository does."""
    from agent.backend import BackendError
    from agent.store import RepositoryError
    from agent.text import in_words

    try:
        return open_repository(config, location=location), ""
    except (RepositoryError, BackendError, OSError) as exc:
        return None, in_words(exc)


def drill_lines(report: RunReport) -> List[str]:
    """One drill report for a terminal: the verdict, what was proven, the tables, notes and errors."""
    snap = f"snapshot {report.snapshot[:12]}" if report.snapshot else "no snapshot"
    verdict = "restorable" if report.ok else "FAILED"
    lines = [f"{report.job}: {verdict}: {snap}, {plural(report.files, 'file')}, {render.size(report.bytes)}"]
    lines += [f"  table {name}: {plural(rows, 'row')}" for name, rows in report.tables or ()]
    lines += [f"  note: {warning}" for warning in report.warnings]
    lines += [f"  error: {error}" for error in report.errors]
    return lines


def _target(config: Config, name: str, host: str, identity: Optional[str]) -> DrillTarget:
    from agent.drill import DrillTarget

    try:
        job = config.job(name)
    except KeyError:  # a job of another host (--repository --host): its policy is not known here
        every = config.drill_every
        return DrillTarget(name, host, every, every, every, identity=identity)
    return DrillTarget(name, host, job.every.low, job.every.high, config.drill_every_of(job), job.type, identity)


def _host_jobs(config: Config, repo_location: str, host: str) -> List[str]:
    """The jobs of which `host` has snapshots in the repository, by name (at least one). Documents that
    cannot be read are named (whose they are is not known): if no snapshot of `host` can be read beside
    them, CommandFailed; if there is none at all, UsageError. Raises RepositoryError or BackendError if the
    repository cannot be opened or listed: there is then no job to report on."""
    from agent.cli.snapshot_ref import unreadable

    repo = open_repository(config, location=repo_location)
    try:
        histories, damaged = repo.histories(host)
    finally:
        repo.close()
    if not histories:
        failure = CommandFailed if damaged else UsageError
        raise failure(f"host {host} has no {'readable ' if damaged else ''}snapshot in {repo_location}"
                      f"{unreadable(damaged)}")
    for document in damaged:
        warning(f"{document.reason} (a job of {host} whose snapshots are all such documents is not drilled)")
    return sorted(histories)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.all and args.jobs:
        raise UsageError("give job names or --all, not both")
    if not args.all and not args.jobs:
        raise UsageError("name the jobs to drill, or give --all")
    if args.identity and not os.access(args.identity, os.R_OK):
        raise UsageError(f"--identity {args.identity}: cannot be read")
    if args.repository or args.host:  # another host's jobs, or another repository: what it holds counts
        location, host = args.repository or config.repository, args.host or config.host
        names: List[str] = _host_jobs(with_identity(config, args.identity), location, host) if args.all \
            else args.jobs
    else:
        names = [job.name for job in config.jobs] if args.all else args.jobs
        check_jobs(config, names)
    return drill(config, names, args.json, args.identity, args.repository, args.host)
