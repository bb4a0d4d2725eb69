"""`snapshots [JOB]`: the repository's snapshots, oldest first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import agent.cli.render as render
from agent.cli import snapshot_ref
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    check_jobs,
    load_config,
    open_repository,
    print_json,
    repository_exists,
    warning,
)
from agent.text import plural

if TYPE_CHECKING:
    from agent.store import DamagedSnapshot, Snapshot


def _rows(found: Sequence[Snapshot]) -> List[Dict]:
    """`snapshots --json`'s rows, oldest first: {"id", "job", "host" (hosts may share a repository), "time",
    "trigger", "files", "bytes", "partial" (a file could not be read), "changes" ({"added", "removed",
    "changed"} entries since the job's previous snapshot, for change-triggered snapshots; else null)}."""
    return [{"id": snap.id, "job": snap.job, "host": snap.host, "time": snap.time, "trigger": snap.trigger,
             "files": snap.files, "bytes": snap.bytes, "partial": snap.partial, "changes": snap.changes}
            for snap in found]


def snapshots(config, job: Optional[str] = None, as_json: bool = False) -> int:
    """Exit status 0; 1 when a snapshot document was not served by the storage (the listing is then known
    to be incomplete: a damaged one is named too, but what it held is lost, not missing from the list)."""
    readable: List[Snapshot] = []
    damaged: List[DamagedSnapshot] = []
    if repository_exists(config):
        # opened once and listed once: on object storage every opening and every document costs requests
        readable, damaged = open_repository(config).all_snapshots()
    rows = _rows([snap for snap in readable if job is None or snap.job == job])
    if job and not rows:
        check_jobs(config, [job])  # a job that is gone from the configuration still lists its snapshots
    for document in damaged:  # it may be any job's: named whatever was asked for
        warning(document.reason)  # "snapshot X is damaged: FILE is ...", "snapshot X cannot be read: ..."
    if as_json:
        print_json(rows)
    else:
        render.show(render.snapshots(rows, config.host))
    return EXIT_FAILED if any(document.unserved for document in damaged) else EXIT_OK


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
