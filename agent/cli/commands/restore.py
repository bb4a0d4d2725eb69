"""`restore SNAPSHOT --target DIR [PATH...] [--overwrite never|if-changed|always] [--delete] [--dry-run]
[--json]`: a tree snapshot into a directory, a dump snapshot into a file or (mysql) a database.
`restore --all --target DIR`: the latest snapshot of every job into DIR/JOB, in one run (a lost node)."""

from __future__ import annotations

import argparse
import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import agent.cli.render as render
from agent.cli import snapshot_ref
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    PREFIX,
    UsageError,
    err,
    error,
    load_config,
    open_repository,
    print_json,
    require_identity,
    warning,
    with_identity,
)
from agent.cli.progress import progress
from agent.text import plural

if TYPE_CHECKING:
    from agent.config import Config
    from agent.restorer import RestoreResult
    from agent.store import Snapshot

SHOWN_CONFLICTS = 20
_TARGET_ERRNOS = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOENT,
                  errno.ENAMETOOLONG, errno.ELOOP)


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore and where: `snapshot` is an id, a unique id prefix or JOB:latest; `paths` are
    relative to the job's path or absolute under it (empty: everything); `overwrite`, `delete` and
    `dry_run` apply to tree snapshots (see agent/restorer), `force` to dumps. `every_job`: the latest
    snapshot of every job that has one, each into `target`/JOB (`snapshot` and `paths` then empty)."""

    snapshot: str
    target: Optional[str] = None
    every_job: bool = False
    paths: Tuple[str, ...] = ()
    to_database: Optional[str] = None
    options_file: Optional[str] = None
    force: bool = False
    overwrite: str = "never"
    delete: bool = False
    dry_run: bool = False
    json: bool = False


def restore(config, options: RestoreOptions) -> int:
    """Exit status 0 if everything was restored, 1 if something failed or was refused. `restore --all` of
    a repository that cannot be opened or listed names that for every job (--json: a document each)."""
    from agent.backend import BackendError
    from agent.store import RepositoryError
    from agent.text import in_words

    if options.every_job:
        if options.snapshot or options.paths or options.to_database:
            raise UsageError("--all restores every job's latest snapshot whole: give no SNAPSHOT, PATH or "
                             "--to-database")
        if not options.target:
            raise UsageError("give --target DIR (each job is restored into DIR/JOB)")
        if os.path.lexists(options.target) and not os.path.isdir(options.target):
            # before the repository is opened: nothing of any job could go there
            what = "a symlink to nothing" if not os.path.exists(options.target) else "not a directory"
            raise UsageError(f"--target: {options.target} is {what} (each job is restored into DIR/JOB)")
    elif not options.snapshot:
        raise UsageError("give a SNAPSHOT (an id, JOB:latest, ...) or --all")
    try:
        repo = open_repository(config)
    except (RepositoryError, BackendError) as exc:
        if not options.every_job:
            raise
        return _none_restored(config, options, f"the repository cannot be opened: {in_words(exc)}")
    require_identity(repo, config, required=True)
    with repo.lock(exclusive=False, purpose="restore"), _index_warnings(repo):
        if not options.every_job:
            return _restore_one(config, repo, snapshot_ref.resolve(config, repo, options.snapshot), options)
        try:
            histories, damaged = repo.histories(config.host)
        except (RepositoryError, BackendError) as exc:
            return _none_restored(config, options, f"the snapshots cannot be listed: {in_words(exc)}")
        latest = {job.name: histories.get(job.name, [])[-1:] for job in config.jobs}
        if not any(latest.values()) and not damaged:
            raise UsageError(f"no job of host {config.host} has a snapshot yet")
        snapshot_ref.warn_damaged(damaged)
        missing = snapshot_ref.unreadable(damaged)  # why a job may have no readable snapshot
        from agent.dumps.restore import STREAM_TYPES

        by_job: Dict[str, List[dict]] = {job: [] for job in latest}
        trees: List[Tuple[Snapshot, RestoreOptions]] = []
        worst = EXIT_OK
        for job, found in latest.items():
            if found and found[0].type not in STREAM_TYPES:  # restored together below: shared packs read once
                trees.append((found[0], _job_options(options, job)))
            else:
                worst = max(worst, _restore_job(config, repo, job, found, options, by_job[job], missing))
        worst = max(worst, _restore_trees(config, repo, trees, by_job))
    if options.json:
        print_json([document for job in latest for document in by_job[job]])
    return worst


def _none_restored(config, options: RestoreOptions, problem: str) -> int:
    """`restore --all` where nothing can be restored (`problem`: why): said once, and with --json a
    document per job, as for a job without a readable snapshot. Exit status 1."""
    error(problem)
    if options.json:
        print_json([_failed(None, job.name, _job_options(options, job.name).target, problem)
                    for job in config.jobs])
    return EXIT_FAILED


def _job_options(options: RestoreOptions, job: str) -> RestoreOptions:
    """`restore --all`'s options for one job: into DIR/JOB; an --overwrite other than `never` replaces a
    dump file as it replaces the files of a tree."""
    return replace(options, target=os.path.join(options.target or "", job),
                   force=options.force or options.overwrite != "never")


def _restore_job(config, repo, job: str, found: List[Snapshot], options: RestoreOptions,
                 documents: List[dict], missing: str = "") -> int:
    """`restore --all`'s part for a job without a snapshot or with a dump: its latest snapshot into DIR/JOB.
    A job without a readable snapshot (`missing`: the documents that cannot be read, see
    snapshot_ref.unreadable), or whose DIR/JOB cannot be used, is an error of this job (exit 1); the others
    go on."""
    one = _job_options(options, job)
    if not found:
        problem = f"{job}: no readable snapshot of host {config.host}{missing}; nothing restored to {one.target}"
        error(problem)
        documents.append(_failed(None, job, one.target, problem))
        return EXIT_FAILED
    from agent.backend import BackendError
    from agent.store import RepositoryError

    try:
        return _restore_one(config, repo, found[0], one, documents)
    except UsageError as exc:  # this job's DIR/JOB cannot be used
        error(f"{job}: {exc}")
        documents.append(_failed(found[0].id, job, one.target, str(exc)))
        return EXIT_FAILED
    except (BackendError, RepositoryError) as exc:  # this job's data cannot be read (a dump cut short)
        error(f"{job}: not restored: {exc}")
        documents.append(_failed(found[0].id, job, one.target, f"not restored: {exc}"))
        return EXIT_FAILED


def _failed(snapshot_id: Optional[str], job: str, target: Optional[str], problem: str) -> dict:
    """`restore --all --json`'s document for a job that was not restored."""
    return {"snapshot": snapshot_id, "job": job, "target": target, "errors": [problem]}


def _restore_one(config, repo, snapshot: Snapshot, options: RestoreOptions,
                 documents: Optional[List[dict]] = None) -> int:
    """Restore one snapshot as `options` say; with `documents` (restore --all), the JSON document is
    appended there instead of printed."""
    from agent.dumps.restore import STREAM_TYPES

    if snapshot.type in STREAM_TYPES:
        tree_only = [name for name, given in (("--overwrite", options.overwrite != "never"),
                                              ("--delete", options.delete), ("--dry-run", options.dry_run),
                                              ("PATH", bool(options.paths))) if given]
        if tree_only and documents is None:
            raise UsageError(f"{', '.join(tree_only)}: for file trees; {snapshot.id[:12]} is a "
                             f"{snapshot.type} dump (--force replaces an existing --target FILE)")
        status = (_dry_run_dump(repo, snapshot, options) if options.dry_run
                  else _restore_dump(config, repo, snapshot, options))
        if documents is not None:
            documents.append({"snapshot": snapshot.id, "job": snapshot.job, "target": options.target,
                              "dump": True, "dry_run": options.dry_run,
                              "errors": [] if status == EXIT_OK else ["not restored (see stderr)"]})
        return status
    if options.to_database:
        raise UsageError(f"--to-database restores mysql snapshots; {snapshot.id[:12]} is {snapshot.type}")
    if not options.target:
        raise UsageError("give --target DIR")
    return _restore_trees(config, repo, [(snapshot, options)])


def _restore_trees(config, repo, wanted: Sequence[Tuple[Snapshot, RestoreOptions]],
                   documents: Optional[Dict[str, List[dict]]] = None) -> int:
    """Restore tree snapshots, each as its options say, in one pass (agent.restorer.restore_snapshots);
    with `documents` (restore --all), each JSON document is appended to its job's list instead of printed,
    and a job whose target cannot be used is an error of that job instead of a usage error."""
    from agent.restorer import PathError, RestoreRequest, TargetError, restore_snapshots

    if not wanted:
        return EXIT_OK
    # --all's DIR/JOB is ours to derive: a link planted there is refused; `--target DIR` is the operator's own
    requests = [RestoreRequest(snapshot, os.path.abspath(str(one.target)), one.paths, one.overwrite, one.delete,
                               one.dry_run, _excluded_by_job(config, snapshot), follow_target=not one.every_job)
                for snapshot, one in wanted]
    with progress("restore", any(one.json or one.dry_run for _, one in wanted)) as shown:
        outcomes = restore_snapshots(repo, requests, shown, fork_writers=True)
    worst = EXIT_OK
    for (snapshot, one), done in zip(wanted, outcomes):
        failure, result = done.failure, done.result
        if isinstance(failure, (TargetError, PathError)):
            problem = f"--target: {failure}" if isinstance(failure, TargetError) else str(failure)
            if documents is None:
                raise UsageError(problem) from None
            error(f"{snapshot.job}: {problem}")
            documents[snapshot.job].append(_failed(snapshot.id, snapshot.job, one.target, problem))
        elif failure is not None or result is None:  # a damaged blob or manifest line
            error(f"snapshot {snapshot.id[:12]} cannot be read: {failure}")
            if documents is not None:
                documents[snapshot.job].append(_failed(snapshot.id, snapshot.job, one.target,
                                                       f"cannot be read: {failure}"))
        else:
            if documents is not None:
                documents[snapshot.job].append(restore_json(result, snapshot, str(one.target), one.dry_run))
            elif one.json:
                print_json(restore_json(result, snapshot, str(one.target), one.dry_run))
            for line in restore_lines(result, snapshot, str(one.target), one.dry_run):
                err(line)
            if not (result.errors or result.conflicts):
                continue
        worst = EXIT_FAILED
    return worst


@contextmanager
def _index_warnings(repo) -> Iterator[None]:
    """Warn, after the restore, of damaged index files it worked around (see agent.store.index)."""
    try:
        yield
    finally:
        for problem in repo.index_problems():
            warning(problem)


def _excluded_by_job(config: Config, snapshot: Snapshot) -> Optional[Callable[[str, bool], bool]]:
    """What --delete must leave alone: the paths the job excludes (Tomcat's logs/, temp/, work/
    contents) were never in any snapshot, so the snapshot cannot say they should go. None (delete
    everything extra) when the job is no longer configured."""
    from agent.runner import riak_rules
    from agent.snapshot.ignore import IgnoreRules

    try:
        job = config.job(snapshot.job)
    except KeyError:
        return None
    rules = riak_rules(job.paths, job.exclude) if job.type == "riak" else IgnoreRules(job.exclude)
    return lambda path, is_dir: rules.excludes(path, is_dir) or rules.excludes_any_parent(path)


def restore_json(result: RestoreResult, snapshot: Snapshot, target: str, dry_run: bool) -> dict:
    """`{"snapshot", "job", "target", "dry_run", "created", "replaced", "deleted", "unchanged", "files",
    "bytes", "conflicts": [first 20 paths], "conflict_count", "errors", "warnings"}`; counts are entries
    (a deleted directory counts once). A dry run adds
    `"paths": {"created": [...], "replaced": [...], "deleted": [...]}`."""
    document = {
        "snapshot": snapshot.id, "job": snapshot.job, "target": target, "dry_run": dry_run,
        "created": len(result.created), "replaced": len(result.replaced), "deleted": len(result.deleted),
        "unchanged": result.unchanged, "files": result.files, "bytes": result.bytes,
        "conflicts": result.conflicts[:SHOWN_CONFLICTS], "conflict_count": len(result.conflicts),
        "errors": result.errors, "warnings": result.warnings,
    }
    if dry_run:
        document["paths"] = {"created": result.created, "replaced": result.replaced, "deleted": result.deleted}
    return document


def restore_lines(result: RestoreResult, snapshot: Snapshot, target: str, dry_run: bool) -> List[str]:
    """The messages for stderr: errors, warnings, then the conflicts (the first 20 and a count, with the
    option that replaces them), the dry run's list, or what was done."""
    lines = ([f"{PREFIX}error: {problem}" for problem in result.errors]
             + [f"{PREFIX}warning: {note}" for note in result.warnings])
    where = f"snapshot {snapshot.id[:12]} ({snapshot.job}, {snapshot.time})"
    if result.conflicts:
        count = len(result.conflicts)
        verb = "differs" if count == 1 else "differ"
        lines.append(f"{PREFIX}error: {plural(count, 'entry', 'entries')} in {target} {verb} from {where}; nothing "
                     "was restored. Use --overwrite if-changed to replace them (--overwrite always replaces "
                     "every entry; --dry-run shows what either would do):")
        lines.extend(f"  {path}" for path in result.conflicts[:SHOWN_CONFLICTS])
        if count > SHOWN_CONFLICTS:
            lines.append(f"  ... and {count - SHOWN_CONFLICTS} more")
        return lines
    counts = (f"{len(result.created)} created, {len(result.replaced)} replaced, {len(result.deleted)} deleted, "
              f"{result.unchanged} unchanged")
    if dry_run:
        for label, paths in (("create", result.created), ("replace", result.replaced),
                             ("delete", result.deleted)):
            lines.extend(f"would {label}: {path}" for path in paths)
        lines.append(f"dry run of {where} into {target}: would be {counts}; nothing was changed")
        return lines
    lines.append(f"restored {where} into {target}: {counts}; {plural(result.files, 'file')} "
                 f"({render.size(result.bytes)}) written")
    return lines


def _dry_run_dump(repo, snapshot: Snapshot, options: RestoreOptions) -> int:
    """What `restore --all --dry-run` would do with a dump: nothing is written."""
    from agent.dumps.restore import RestoreRefused, dump_destination, dump_entry

    try:
        target = dump_destination(dump_entry(repo, snapshot), os.path.abspath(str(options.target)), options.force,
                                  follow_target=not options.every_job)
    except RestoreRefused:
        error(f"{options.target} exists: the dump of {snapshot.job} would not replace it without --force (or an "
              "--overwrite other than never)")
        return EXIT_FAILED
    verb = "replace" if os.path.lexists(target) else "write"
    err(f"dry run: would {verb} {target} with the dump of {snapshot.job} ({snapshot.time}); nothing was changed")
    return EXIT_OK


def _restore_dump(config, repo, snapshot, options: RestoreOptions) -> int:
    from agent.dumps.restore import RestoreRefused, restore_to_database, restore_to_file
    from agent.store import RepositoryError

    try:
        if options.to_database:
            try:
                job = config.job(snapshot.job)
            except KeyError:
                raise UsageError(f"job {snapshot.job} is not in the configuration: its client settings "
                                 "are needed to load the dump") from None
            loaded = restore_to_database(repo, snapshot, job, options.to_database, options.options_file,
                                         options.force)
            for note in loaded.warnings:
                warning(note)
            err(f"loaded {render.size(loaded.size)} dump of {snapshot.job} ({snapshot.time}) into database "
                f"{options.to_database}" + (f" ({loaded.charset})" if loaded.charset else ""))
            if loaded.disabled_events:
                err(f"events restored disabled, so that the copy acts on nothing: {', '.join(loaded.disabled_events)}"
                    " (ALTER EVENT name ENABLE when it should)")
            return EXIT_OK
        if not options.target:
            raise UsageError("give --target FILE (or --to-database NAME for a mysql snapshot)")
        restored = restore_to_file(repo, snapshot, os.path.abspath(options.target), options.force,
                                   follow_target=not options.every_job)
    except RestoreRefused as exc:
        error(str(exc))
        return EXIT_FAILED
    except RepositoryError as exc:  # a damaged blob of the dump: nothing was put in place
        error(f"snapshot {snapshot.id[:12]} cannot be read: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno in _TARGET_ERRNOS:  # --target under a file, not writable, ...: the operator's to fix
            raise UsageError(f"--target {options.target}: {exc.strerror or exc}") from None
        error(f"{options.target}: {exc.strerror or exc}")  # a full disk, an I/O error
        return EXIT_FAILED
    for note in restored.warnings:
        warning(note)
    err(f"restored the {render.size(restored.size)} dump of {snapshot.job} ({snapshot.time}) to {restored.path}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    config = with_identity(load_config(args.config), args.identity)
    return restore(config, RestoreOptions(snapshot=args.snapshot or "", target=args.target, every_job=args.all,
                                          paths=tuple(args.paths),
                                          to_database=args.to_database, options_file=args.options_file,
                                          force=args.force, overwrite=args.overwrite, delete=args.delete,
                                          dry_run=args.dry_run, json=args.json))
