"""Restoring dump snapshots: to a file, or loaded into a database through the engine's client."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Tuple

from agent.config import Job
from agent.config.loader import secret_file_warning
from agent.dumps import mysql
from agent.dumps.retarget import Retarget, quote_name
from agent.durable import remove_quietly, write_temp
from agent.execute import feed_command, run_hook
from agent.leftovers import TEMP_PREFIX, hold, sweep
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


def dump_content(repo: Repository, entry: Entry) -> Iterator[bytes]:
    """The dump's bytes, blob by blob, each checked against its id (DamagedBlobError names blob and pack),
    its packs read ahead."""
    with repo.read_ahead(entry.chunks):
        for chunk in entry.chunks:
            yield repo.read_blob(chunk)


def dump_destination(entry: Entry, target: str, force: bool, follow_target: bool = False) -> str:
    """Where the dump `entry` goes for `--target`: `target`, or the dump's name inside it if it is a
    directory -- a symlink to one only with `follow_target` (the operator named `target`); otherwise a
    link there is a file that the dump replaces (a link planted at `restore --all`'s DIR/JOB never sends
    the dump elsewhere). Raises RestoreRefused if that exists and `force` is false."""
    if os.path.isdir(target) if follow_target else _is_dir(target):
        target = os.path.join(target, os.path.basename(entry.path))
    if os.path.lexists(target) and not force:
        raise RestoreRefused(f"{target} exists (give --force to replace it)")
    return target


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class Restored(NamedTuple):
    path: str  # where the dump went: `target`, or the dump's name inside it when it is a directory
    size: int  # bytes
    warnings: Tuple[str, ...] = ()  # temp files of interrupted restores removed beside it, or left


def restore_to_file(repo: Repository, snapshot: Snapshot, target: str, force: bool,
                    follow_target: bool = False) -> Restored:
    """Write the dump to `target` (into it, under the dump's name, if it is a directory: see
    dump_destination for `follow_target`); raises RestoreRefused if that exists and `force` is false.
    The dump is written under a temp name beside `target` and renamed into place; the temp files that
    killed restores left there go first (agent.leftovers: never one that another restore is writing)."""
    entry = dump_entry(repo, snapshot)
    target = dump_destination(entry, target, force, follow_target)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    warnings = _sweep(directory)
    tmp = write_temp(directory, dump_content(repo, entry), prefix=TEMP_PREFIX, opened=hold)
    try:
        os.rename(tmp, target)
    except BaseException:  # a directory came where the file goes, say: no temp file stays beside it
        remove_quietly(tmp)
        raise
    return Restored(target, entry.size, warnings)


def _sweep(directory: str) -> Tuple[str, ...]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        swept = sweep(fd)
    finally:
        os.close(fd)
    return tuple(swept.notes(lambda name: os.path.join(directory, name)))


class _Client:
    """Queries through the engine's client with one options file; its passwords masked in every message."""

    def __init__(self, job: Job, options_file: Optional[str]) -> None:
        self.job = job
        self.options_file = options_file or job.options_file
        self.secrets = [*mysql.secrets(job), *mysql.passwords_in(self.options_file)]

    def query(self, query: str) -> List[str]:
        done = run_hook(mysql.client_argv(self.job, self.options_file, query=query), 300, self.secrets)
        if not done.ok:
            raise RestoreRefused(done.describe())
        return [_unescape(line) for line in done.output.splitlines() if line.strip()]


def _unescape(value: str) -> str:
    """A value as the client prints it in --batch mode (tab, newline, NUL and backslash escaped)."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "0": "\0"}.get(m.group(1), m.group(1)), value)


def _string(value: str) -> str:
    """A string literal that needs no escaping, whatever the value and the server's sql_mode."""
    return f"CONVERT(0x{value.encode().hex()} USING utf8mb4)" if value else "''"


@dataclass(frozen=True)
class Loaded:
    """What `restore_to_database` did: `size` bytes of dump loaded; `charset` the database defaults
    the dump recorded (None: an older dump without them); `disabled_events` the events that were
    enabled in the source and are disabled in the copy; `warnings` for the operator."""

    size: int
    charset: Optional[str]
    disabled_events: Tuple[str, ...]
    warnings: Tuple[str, ...]


def restore_to_database(repo: Repository, snapshot: Snapshot, job: Job, database: str,
                        options_file: Optional[str], force: bool) -> Loaded:
    """Load a mysql snapshot into `database` (any name the server accepts; created if missing) through
    the engine's client, rewritten by `Retarget` so that the copy is self-contained and inert.
    Raises RestoreRefused: a non-empty database without `force`, or the client's error (a database this
    call created is dropped again, so that the next attempt does not find it half loaded)."""
    if snapshot.type != "mysql":
        raise RestoreRefused(f"--to-database needs a mysql snapshot; this one is {snapshot.type}")
    if not database or "\0" in database:
        raise RestoreRefused(f"{database!r} is not a database name")
    entry = dump_entry(repo, snapshot)
    client = _Client(job, options_file)
    warnings = [f"options file {problem}" for problem in [secret_file_warning(client.options_file or "")]
                if problem]
    name, literal = quote_name(database), _string(database)
    existed = client.query(f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {literal}")
    tables = client.query(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {literal}")
    if tables and tables[-1] != "0" and not force:
        raise RestoreRefused(f"database {database} is not empty ({tables[-1]} tables); "
                             "give --force to load the dump into it anyway")
    client.query(f"CREATE DATABASE IF NOT EXISTS {name}")
    retarget = Retarget(str(job.database), database)
    try:
        done = feed_command(mysql.client_argv(job, client.options_file, database=database),
                            retarget.rewrite(dump_content(repo, entry)), timeout=max(job.timeout, 3600),
                            secrets=client.secrets)
    except BaseException:  # the dump could not be read to its end (a damaged object): the load is cut
        if existed == ["0"]:
            client.query(f"DROP DATABASE IF EXISTS {name}")
        raise
    if not done.ok:
        dropped = ""
        if existed == ["0"]:
            client.query(f"DROP DATABASE IF EXISTS {name}")
            dropped = f" (database {database}, created for it, dropped again)"
        raise RestoreRefused(f"loading the dump failed{dropped}: {done.describe()}")
    disabled = list(retarget.disabled_events)
    # the dump's event statements are rewritten as they pass; anything a future dump format hides from
    # that is disabled here, late but still before it can act for long
    for event in client.query("SELECT EVENT_NAME FROM information_schema.EVENTS "
                              f"WHERE EVENT_SCHEMA = {literal} AND STATUS = 'ENABLED'"):
        client.query(f"ALTER EVENT {name}.{quote_name(event)} DISABLE")
        warnings.append(f"event {event} was enabled by the load and has been disabled")
        disabled.append(event)
    if retarget.charset is None:
        warnings.append("the dump does not record the database's default character set and collation "
                        f"(it predates that); {database} keeps the server's or its own")
    return Loaded(entry.size, retarget.charset, tuple(disabled), tuple(warnings))
