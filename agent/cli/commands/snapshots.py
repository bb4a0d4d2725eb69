"""`snapshots [JOB]`: the repository's snapshots, oldest first."""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import agent.cli.render as render
from agent.cli.common import EXIT_OK, check_jobs, err, load_config, open_repository, print_json


def snapshot_rows(config, job: Optional[str] = None) -> List[Dict]:
    """`snapshots --json`'s rows: {"id", "job", "time", "trigger", "files", "bytes"}, oldest first."""
    from agent.store import Repository

    if not Repository(config.repository).exists():
        return []
    return [{"id": snap.id, "job": snap.job, "time": snap.time, "trigger": snap.trigger,
             "files": snap.files, "bytes": snap.bytes} for snap in open_repository(config).snapshots(job)]


def snapshots(config, job: Optional[str] = None, as_json: bool = False) -> int:
    rows = snapshot_rows(config, job)
    if rows or not job:
        from agent.store import Repository

        if Repository(config.repository).exists():
            for damaged in open_repository(config).damaged_snapshots():
                err(f"damaged: {damaged.reason}")
    if job and not rows:
        check_jobs(config, [job])  # a job that is gone from the configuration still lists its snapshots
    if as_json:
        print_json(rows)
    else:
        render.show(render.snapshots(rows))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return snapshots(load_config(args.config), args.job, args.json)
