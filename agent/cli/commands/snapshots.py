"""`snapshots [JOB]`: the repository's snapshots, oldest first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import agent.cli.render as render
from agent.cli import snapshot_ref
from agent.cli.common import EXIT_OK, check_jobs, load_config, open_repository, print_json, repository_exists, warning
from agent.text import plural

if TYPE_CHECKING:
    from agent.store import Repository


def snapshot_rows(config, job: Optional[str] = None, repo: Optional[Repository] = None) -> List[Dict]:
    """`snapshots --json`'s rows, oldest first: {"id", "job", "host" (hosts may share a repository), "time",
    "trigger", "files", "bytes", "partial"
    (a file could not be read), "changes" ({"added", "removed", "changed"} entries since the job's previous
    snapshot, for change-triggered snapshots; else null)}. `repo`: the repository already opened."""
    if repo is None:
        if not repository_exists(config):
            return []
        repo = open_repository(config)
    return [{"id": snap.id, "job": snap.job, "host": snap.host, "time": snap.time, "trigger": snap.trigger,
             "files": snap.files, "bytes": snap.bytes, "partial": snap.partial, "changes": snap.changes}
            for snap in repo.snapshots(job)]


def snapshots(config, job: Optional[str] = None, as_json: bool = False) -> int:
    # opened once: on object storage every opening costs requests
    repo = open_repository(config) if repository_exists(config) else None
    rows = snapshot_rows(config, job, repo) if repo is not None else []
    if repo is not None and (rows or not job):
        for damaged in repo.damaged_snapshots():
            warning(damaged.reason)  # "snapshot X is damaged: FILE is ..."
    if job and not rows:
        check_jobs(config, [job])  # a job that is gone from the configuration still lists its snapshots
    if as_json:
        print_json(rows)
    else:
        render.show(render.snapshots(rows, config.host))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return snapshots(load_config(args.config), args.job, args.json)


def forget(config, refs: Sequence[str]) -> int:
    """Remove the snapshots `refs` name (each resolved before any is removed); their data stays until the
    next prune deletes what no snapshot needs."""
    repo = open_repository(config)
    with repo.lock(exclusive=True, purpose="forget"):
        chosen = {}
        for ref in refs:
            snapshot = snapshot_ref.resolve(config, repo, ref)
            chosen[snapshot.id] = snapshot
        for snapshot in chosen.values():
            repo.delete_snapshot(snapshot.id)
            print(f"forgot {snapshot.id[:12]}  {render.when(snapshot.time)}  {snapshot.job}")
    print(f"{plural(len(chosen), 'snapshot')} forgotten; `backup-agent prune` deletes the data no snapshot needs")
    return EXIT_OK


def run_forget(args: argparse.Namespace) -> int:
    return forget(load_config(args.config), args.snapshots)
