"""`verify` and `prune`: the repository-wide checks and clean-up."""

from __future__ import annotations

import argparse
import tempfile

import agent.cli.render as render
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    err,
    load_config,
    open_repository,
    print_json,
    repository_exists,
    require_identity,
    warning,
    with_identity,
)
from agent.cli.progress import progress


def verify(config, read_data: bool = False, as_json: bool = False) -> int:
    """Exit status 0 if every snapshot is complete (and, with `read_data`, every object intact), else 1."""
    from agent.checker import verify_repository
    if not repository_exists(config):
        err(f"{config.repository}: no repository yet, nothing to verify")
        if as_json:
            print_json({"ok": True, "snapshots": 0, "packs": 0, "blobs": 0, "damaged": [], "problems": []})
        return EXIT_OK
    # what is stored is checked, not the copies in the local cache: an empty cache of verify's own, so
    # that each object is fetched once (restic's check uses a fresh temporary cache too)
    with tempfile.TemporaryDirectory(prefix="verify-cache-") as fresh:
        repo = open_repository(config, cache=fresh)
        require_identity(repo, config, required=False)
        with repo.lock(exclusive=False, purpose="verify"), \
                progress("verify", as_json or not read_data, unit="pack") as shown:
            result = verify_repository(repo, read_data=read_data, progress=shown)
    if as_json:
        print_json({"ok": result.ok, "snapshots": result.snapshots, "packs": result.packs,
                    "blobs": result.blobs, "problems": result.problems, "recorded": result.recorded,
                    "damaged": [{"object": key, "reason": reason, "affects": result.affected.get(key, [])}
                                for key, reason in sorted(result.damaged.items())]})
    else:
        render.show(render.verify(result, read_data))
    return EXIT_OK if result.ok else EXIT_FAILED


def prune(config, dry_run: bool = False, as_json: bool = False) -> int:
    from agent.pruner import prune_repository

    repo = open_repository(config)
    policies = {job.name: job.retention for job in config.jobs}
    with repo.lock(exclusive=True, purpose="prune"):
        result = prune_repository(repo, policies, dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run,
                    "removed": [snap.id for snap in result.removed], "kept": [snap.id for snap in result.kept],
                    "unknown_jobs": result.unknown_jobs, "damaged": result.damaged,
                    "packs_deleted": result.packs_deleted,
                    "packs_rewritten": result.packs_rewritten, "bytes_freed": result.bytes_freed})
    else:
        render.show(render.prune(result, dry_run))
    for reason in result.damaged:
        warning(f"{reason} (kept, not pruned)")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    return verify(with_identity(load_config(args.config), args.identity), args.read_data, args.json)


def run_prune(args: argparse.Namespace) -> int:
    return prune(with_identity(load_config(args.config), args.identity), args.dry_run, args.json)
