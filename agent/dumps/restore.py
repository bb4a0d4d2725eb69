"""Restoring dump snapshots: to a file, or loaded into a database through the engine's client."""

from __future__ import annotations

import os
from typing import Iterator, List, Optional

from agent.config import Job
from agent.dumps import mysql
from agent.durable import write_temp
from agent.execute import feed_command, run_hook
from agent.store import Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree

STREAM_TYPES = ("mysql", "command", "sqlite")


class RestoreRefused(Exception):
    pass


def dump_entry(repo: Repository, snapshot: Snapshot) -> Entry:
    files = [entry for entry in read_tree(repo, snapshot.tree) if entry.type == "file"]
    if len(files) != 1:
        raise RestoreRefused(f"snapshot {snapshot.id[:12]} is not a dump snapshot")
    return files[0]


def _content(repo: Repository, entry: Entry) -> Iterator[bytes]:
    for chunk in entry.chunks:
        yield repo.read_blob(chunk)


def restore_to_file(repo: Repository, snapshot: Snapshot, target: str, force: bool) -> int:
    entry = dump_entry(repo, snapshot)
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(entry.path))
    if os.path.lexists(target) and not force:
        raise RestoreRefused(f"{target} exists (give --force to replace it)")
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    os.rename(write_temp(directory, _content(repo, entry), prefix=".restore-"), target)
    return entry.size


def _query(job: Job, options_file: Optional[str], query: str) -> List[str]:
    done = run_hook(mysql.client_argv(job, options_file, query=query), 300, mysql.secrets(job))
    if not done.ok:
        raise RestoreRefused(done.describe())
    return [line for line in done.output.splitlines() if line.strip()]


def restore_to_database(repo: Repository, snapshot: Snapshot, job: Job, database: str,
                        options_file: Optional[str], force: bool) -> int:
    if snapshot.type != "mysql":
        raise RestoreRefused(f"--to-database needs a mysql snapshot; this one is {snapshot.type}")
    if not all(ch.isalnum() or ch in "_$" for ch in database):
        raise RestoreRefused(f"{database!r}: use a plain database name (letters, digits, _ and $)")
    entry = dump_entry(repo, snapshot)
    tables = _query(job, options_file, "SELECT COUNT(*) FROM information_schema.tables "
                                       f"WHERE table_schema = '{database}'")
    if tables and tables[-1].strip() != "0" and not force:
        raise RestoreRefused(f"database {database} is not empty ({tables[-1].strip()} tables); "
                             "give --force to load the dump into it anyway")
    _query(job, options_file, f"CREATE DATABASE IF NOT EXISTS `{database}`")
    done = feed_command(mysql.client_argv(job, options_file, database=database), _content(repo, entry),
                        timeout=max(job.timeout, 3600), secrets=mysql.secrets(job))
    if not done.ok:
        raise RestoreRefused(f"loading the dump failed: {done.describe()}")
    return entry.size
