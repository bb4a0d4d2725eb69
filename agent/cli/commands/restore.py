"""`restore SNAPSHOT --target DIR [PATH...]`: a tree snapshot into a directory, a dump snapshot into a
file or (mysql) a database."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import agent.cli.render as render
from agent.cli.common import EXIT_FAILED, EXIT_OK, UsageError, err, load_config, open_repository


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore and where: `snapshot` is an id, a unique id prefix or JOB:latest; `paths` are
    relative to the job's path (empty: everything)."""

    snapshot: str
    target: Optional[str] = None
    paths: Tuple[str, ...] = ()
    to_database: Optional[str] = None
    options_file: Optional[str] = None
    force: bool = False


def restore(config, options: RestoreOptions) -> int:
    """Exit status 0 if everything was restored, 1 if something failed or was refused."""
    from agent.dumps.restore import STREAM_TYPES
    from agent.restorer import restore_snapshot
    from agent.store import RepositoryError

    repo = open_repository(config)
    with repo.lock(exclusive=False, purpose="restore"):
        try:
            snapshot = repo.find_snapshot(options.snapshot)
        except RepositoryError as exc:
            raise UsageError(str(exc)) from None
        if snapshot.type in STREAM_TYPES:
            return _restore_dump(config, repo, snapshot, options)
        if options.to_database:
            raise UsageError(f"--to-database restores mysql snapshots; {snapshot.id[:12]} is {snapshot.type}")
        if not options.target:
            raise UsageError("give --target DIR")
        result = restore_snapshot(repo, snapshot, os.path.abspath(options.target), list(options.paths))
    for error in result.errors:
        err(f"error: {error}")
    err(f"restored {result.files} files ({render.size(result.bytes)}) of snapshot {snapshot.id[:12]} "
        f"({snapshot.job}, {snapshot.time}) into {options.target}")
    return EXIT_FAILED if result.errors else EXIT_OK


def _restore_dump(config, repo, snapshot, options: RestoreOptions) -> int:
    from agent.dumps.restore import RestoreRefused, restore_to_database, restore_to_file

    try:
        if options.to_database:
            try:
                job = config.job(snapshot.job)
            except KeyError:
                raise UsageError(f"job {snapshot.job} is not in the configuration: its client settings "
                                 "are needed to load the dump") from None
            size = restore_to_database(repo, snapshot, job, options.to_database, options.options_file,
                                       options.force)
            err(f"loaded {render.size(size)} dump of {snapshot.job} ({snapshot.time}) into database "
                f"{options.to_database}")
            return EXIT_OK
        if not options.target:
            raise UsageError("give --target FILE (or --to-database NAME for a mysql snapshot)")
        size = restore_to_file(repo, snapshot, os.path.abspath(options.target), options.force)
    except RestoreRefused as exc:
        err(f"error: {exc}")
        return EXIT_FAILED
    err(f"restored the {render.size(size)} dump of {snapshot.job} ({snapshot.time}) to {options.target}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    return restore(config, RestoreOptions(snapshot=args.snapshot, target=args.target, paths=tuple(args.paths),
                                          to_database=args.to_database, options_file=args.options_file,
                                          force=args.force))
