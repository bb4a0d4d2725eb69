"""`drill JOB... | --all [--json] [--identity FILE] [--repository URL --host NODE]`: prove that each job's
latest snapshot restores (agent.drill), one report per job (`"trigger": "drill"`), spooled and sent
like a backup's; exit 0 when every drill passed, 1 when one failed."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, List, Optional, Sequence

import agent.cli.render as render
from agent.cli.commands.backup import deliver_briefly
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    check_jobs,
    err,
    load_config,
    print_json,
    require_identity,
    with_identity,
)
from agent.text import plural

if TYPE_CHECKING:
    from agent.config import Config
    from agent.drill import DrillTarget
    from agent.report import RunReport
    from agent.store import Repository


def drill(config: Config, names: Sequence[str], as_json: bool = False, identity: Optional[str] = None,
          repository: Optional[str] = None, host: Optional[str] = None) -> int:
    """Drill the jobs `names` of `host` (default: this host) in `repository` (default: the configured
    one); exit status 0 if every drill passed, else 1."""
    from agent.drill import drill as drill_one
    from agent.runner import repository_backend, spool_for
    from agent.store import Repository, RepositoryError

    config = with_identity(config, identity)
    try:
        repo = Repository.open(repository_backend(config, repository), encryption=config.encryption)
    except RepositoryError as exc:
        raise UsageError(str(exc)) from None
    try:
        require_identity(repo, config, required=True)  # an encrypted repository's contents need one
        targets = [_target(config, repo, name, host or config.host, identity) for name in names]
        spool = spool_for(config)
        reports = []
        for target in targets:
            if not as_json:
                err(f"drilling {target.job} ...")
            report = drill_one(repo, target, config.state_dir, spool)
            reports.append(report)
            if not as_json:
                render.show(drill_lines(report))
    finally:
        repo.close()
    if as_json:
        print_json([report.to_json() for report in reports])
    if config.collector is not None:
        deliver_briefly(config)
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def drill_lines(report: RunReport) -> List[str]:
    """One drill report for a terminal: the verdict, what was proven, the tables, notes and errors."""
    snap = f"snapshot {report.snapshot[:12]}" if report.snapshot else "no snapshot"
    verdict = "restorable" if report.ok else "FAILED"
    lines = [f"{report.job}: {verdict}: {snap}, {plural(report.files, 'file')}, {render.size(report.bytes)}"]
    lines += [f"  table {name}: {plural(rows, 'row')}" for name, rows in report.tables or ()]
    lines += [f"  note: {warning}" for warning in report.warnings]
    lines += [f"  error: {error}" for error in report.errors]
    return lines


def _target(config: Config, repo: Repository, name: str, host: str, identity: Optional[str]) -> DrillTarget:
    from agent.drill import DrillTarget

    try:
        job = config.job(name)
    except KeyError:  # a job of another host (--repository --host): its policy is not known here
        every = config.drill_every
        return DrillTarget(name, host, every, every, every, identity=identity)
    return DrillTarget(name, host, job.every.low, job.every.high, config.drill_every_of(job), job.type, identity)


def _host_jobs(config: Config, repo_location: str, host: str) -> List[str]:
    """The jobs of which `host` has snapshots in the repository, by name."""
    from agent.runner import repository_backend
    from agent.store import Repository, RepositoryError

    try:
        repo = Repository.open(repository_backend(config, repo_location), encryption=config.encryption)
    except RepositoryError as exc:
        raise UsageError(str(exc)) from None
    try:
        return sorted({snapshot.job for snapshot in repo.snapshots() if snapshot.host == host})
    finally:
        repo.close()


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
        if args.all and not names:
            raise UsageError(f"host {host} has no snapshot in {location}")
    else:
        names = [job.name for job in config.jobs] if args.all else args.jobs
        check_jobs(config, names)
    return drill(config, names, args.json, args.identity, args.repository, args.host)
