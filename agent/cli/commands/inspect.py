"""`ls`, `diff` and `find`: what a snapshot holds, what changed between two snapshots of a job (a
deployment), and which snapshots hold a path. Read-only; they read manifests through agent.store.tree
and compare them with agent.store.diff."""

from __future__ import annotations

import argparse
import fnmatch
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import agent.cli.render as render
from agent.cli import snapshot_ref
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandFailed,
    UsageError,
    check_jobs,
    error,
    load_config,
    open_repository,
    print_json,
    repository_exists,
    warning,
)

if TYPE_CHECKING:
    from agent.store import Repository, Snapshot
    from agent.store.manifest import Entry


def manifest_path(snapshot: Snapshot, path: Optional[str]) -> Optional[str]:
    """PATH as the manifest names it: relative to the job's path ("." for the job's path itself); an
    absolute PATH must lie under the job's path. None stays None (everything). Raises UsageError."""
    if path is None:
        return None
    rel = os.path.normpath(path)
    if rel.startswith("/"):
        root = snapshot.source[0].rstrip("/") if snapshot.source else None
        if root is None or not (rel == (root or "/") or rel.startswith(root + "/")):
            raise UsageError(f"{path}: not under the job's path {snapshot.source[0] if snapshot.source else '?'}")
        rel = rel[len(root):]
    rel = rel.strip("/") or "."
    if rel == ".." or rel.startswith("../"):
        raise UsageError(f"{path}: not a path inside the snapshot")
    return rel


def manifest(repo: Repository, snapshot: Snapshot) -> bytes:
    """The snapshot's encoded manifest. Raises CommandFailed naming the snapshot if it is damaged or the
    storage does not serve it."""
    from agent.backend import BackendError
    from agent.store import RepositoryError
    from agent.store.tree import read_encoded

    try:
        return read_encoded(repo, snapshot.tree)
    except (RepositoryError, BackendError) as exc:
        raise _damaged(snapshot, exc) from None


def entries(repo: Repository, snapshot: Snapshot) -> List[Entry]:
    """The snapshot's entries in manifest order. Raises CommandFailed naming the snapshot if it is damaged."""
    from agent.store.manifest import decode_manifest

    data = manifest(repo, snapshot)
    try:
        return list(decode_manifest(data))
    except (ValueError, KeyError) as exc:
        raise _damaged(snapshot, exc) from None


def _damaged(snapshot: Snapshot, exc: Exception) -> CommandFailed:
    return CommandFailed(f"snapshot {snapshot.id[:12]} ({snapshot.job}, {snapshot.time}) cannot be read: {exc}")


def entry_json(entry: Entry) -> Dict:
    """`ls --json`'s row: {"path", "type", "mode" (octal text), "uid", "gid", "size", "mtime", "target"}."""
    return {"path": entry.path, "type": entry.type, "mode": f"{entry.mode:04o}", "uid": entry.uid, "gid": entry.gid,
            "size": entry.size, "mtime": render.iso_ns(entry.mtime_ns), "target": entry.target or None}


def ls(config, ref: str, path: Optional[str] = None, as_json: bool = False) -> int:
    from agent.store.diff import under

    repo = open_repository(config)
    snapshot = snapshot_ref.resolve(config, repo, ref)
    prefix = manifest_path(snapshot, path)
    rows = [entry_json(entry) for entry in entries(repo, snapshot) if under(entry.path, prefix)]
    if prefix is not None and not rows:
        raise UsageError(f"{path}: not in snapshot {snapshot.id[:12]} ({snapshot.job}, {snapshot.time})")
    if as_json:
        print_json(rows)
    else:
        render.show(render.listing(rows))
    return EXIT_OK


def diff(config, ref_a: str, ref_b: str, path: Optional[str] = None, as_json: bool = False) -> int:
    from agent.store.diff import diff_manifests

    repo = open_repository(config)
    old = snapshot_ref.resolve(config, repo, ref_a)
    new = snapshot_ref.resolve(config, repo, ref_b)
    old_manifest, new_manifest = manifest(repo, old), manifest(repo, new)
    try:
        result = diff_manifests(old_manifest, new_manifest, manifest_path(old, path))
    except (ValueError, KeyError) as exc:
        raise CommandFailed(f"snapshot {old.id[:12]} or {new.id[:12]} holds a damaged entry: {exc}") from None
    if as_json:
        print_json(result.to_json())
    else:
        render.show(render.diff(result, old, new))
    return EXIT_OK


def find(config, pattern: str, job: Optional[str] = None, as_json: bool = False) -> int:
    """Every snapshot (of `job`, if given) holding a path that matches the glob `pattern`; a pattern
    without '/' matches the name at any depth, one with '/' the whole path (relative to the job's path,
    or absolute). A snapshot that cannot be read is named and the others searched; exit status 1 then
    (the answer may be incomplete), except for a damaged document, which is only named (as `snapshots`
    does)."""
    if job:
        check_jobs(config, [job])
    found: List[Dict] = []
    status = EXIT_OK
    if repository_exists(config):
        repo = open_repository(config)
        readable, damaged = repo.all_snapshots()
        for document in damaged:
            warning(document.reason)
            status = EXIT_FAILED if document.unserved else status
        # Snapshots of a job share nearly all their lines: each distinct line is decoded and matched once
        # (per job path, which an absolute pattern depends on).
        verdicts: Dict[Tuple[str, bytes], Optional[Dict]] = {}
        for snapshot in (snap for snap in readable if job is None or snap.job == job):
            root = snapshot.source[0] if snapshot.source else "/"
            try:
                lines = manifest(repo, snapshot).split(b"\n")
            except CommandFailed as exc:
                error(str(exc))
                status = EXIT_FAILED
                continue
            for line in lines:
                if not line:
                    continue
                key = (root, line)
                if key not in verdicts:
                    verdicts[key] = _match(pattern, snapshot, line)
                if verdicts[key] is not None:
                    found.append({"snapshot": snapshot.id, "job": snapshot.job, "time": snapshot.time,
                                  **verdicts[key]})
    if as_json:
        print_json(found)
    else:
        render.show(render.found(found, pattern))
    return status


def _match(pattern: str, snapshot: Snapshot, line: bytes) -> Optional[Dict]:
    """The entry of a manifest line as `ls --json` shows it, if its path matches `pattern`; else None."""
    from agent.store.manifest import decode_entry

    try:
        entry = decode_entry(line)
    except (ValueError, KeyError) as exc:
        raise _damaged(snapshot, exc) from None
    return entry_json(entry) if _matches(pattern, snapshot, entry.path) else None


def _matches(pattern: str, snapshot: Snapshot, path: str) -> bool:
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    if pattern.startswith("/"):
        root = snapshot.source[0] if snapshot.source else "/"
        path = root if path == "." else os.path.join(root, path)
    return fnmatch.fnmatchcase(path, pattern.rstrip("/"))


def run_ls(args: argparse.Namespace) -> int:
    return ls(load_config(args.config), args.snapshot, args.path, args.json)


def run_diff(args: argparse.Namespace) -> int:
    return diff(load_config(args.config), args.snapshot_a, args.snapshot_b, args.path, args.json)


def run_find(args: argparse.Namespace) -> int:
    return find(load_config(args.config), args.pattern, args.job, args.json)


