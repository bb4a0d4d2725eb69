"""Proving dump snapshots: `command` byte-exact, `sqlite` by `PRAGMA integrity_check` of the restored copy,
`mysql` by loading the dump into a throwaway server (server.py) and checking every table.

Every blob is checked against its id as it is read (Repository.read_blob), and the stream's length
against the manifest's, so a damaged or missing pack is named before anything else is concluded.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Iterator, List, Optional, Tuple

from agent.drill.proof import Proof
from agent.drill.server import ServerError, ThrowawayServer
from agent.drill.tree import content_problem
from agent.dumps.mysql import TRAILER
from agent.dumps.restore import dump_content, dump_entry, restore_to_file
from agent.report.model import TableRows
from agent.store import Repository, Snapshot
from agent.store.manifest import Entry

_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


class _Stream:
    """A dump entry's bytes from the repository, counted as they pass; `tail` keeps the last TAIL bytes
    (where the trailer is), however the chunks cut them. Each chunk is hashed once, by read_blob: no
    digest of the whole stream is kept, and no chunk is copied (the drill runs beside the load it feeds,
    on the same cores)."""

    TAIL = 256

    def __init__(self, repo: Repository, entry: Entry) -> None:
        self.repo, self.entry = repo, entry
        self.length = 0
        self.tail = b""

    def __iter__(self) -> Iterator[bytes]:
        for data in dump_content(self.repo, self.entry):
            self.length += len(data)
            self.tail = (self.tail + data[-self.TAIL:])[-self.TAIL:]
            yield data

    def length_problem(self) -> Optional[str]:
        if self.length != self.entry.size:
            return f"the dump restores {self.length} bytes, the manifest says {self.entry.size}"
        return None


def prove_command(repo: Repository, snapshot: Snapshot, directory: str) -> Proof:
    """Restore the stream to a file in `directory` and check its length and every chunk's digest."""
    return _prove_file(repo, snapshot, directory)[0]


def prove_sqlite(repo: Repository, snapshot: Snapshot, directory: str) -> Proof:
    """Restore the database file into `directory` and run `PRAGMA integrity_check` on the copy."""
    proof, path = _prove_file(repo, snapshot, directory)
    if not proof.ok or path is None:
        return proof
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
            rows = [str(row[0]) for row in database.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        return Proof(errors=(f"the restored database cannot be opened: {exc}",), files=1, bytes=proof.bytes)
    database.close()
    if rows != ["ok"]:
        return Proof(errors=tuple(f"integrity_check: {row}" for row in rows), files=1, bytes=proof.bytes)
    return proof


def _prove_file(repo: Repository, snapshot: Snapshot, directory: str) -> Tuple[Proof, Optional[str]]:
    entry = dump_entry(repo, snapshot)
    path = os.path.join(directory, os.path.basename(entry.path) or "dump")
    size = restore_to_file(repo, snapshot, path, force=False).size  # every blob checked as it is read
    problem = (f"{size} bytes restored, the manifest says {entry.size}" if os.path.getsize(path) != entry.size
               else content_problem(repo, path, entry))
    return Proof(errors=(f"{entry.path}: {problem}",) if problem else (), files=1, bytes=size), path


def prove_mysql(repo: Repository, snapshot: Snapshot, directory: str) -> Proof:
    """Load the dump into a throwaway server set up in `directory`; every table must pass CHECK TABLE,
    and each table's exact row count (COUNT(*)) goes into the proof. Raises DamagedBlobError (the load
    was cut) and ServerError (no server could be set up), both for the caller to report."""
    entry = dump_entry(repo, snapshot)
    stream = _Stream(repo, entry)
    with ThrowawayServer(directory) as server:
        server.start()
        done = server.load(stream)
        problems: List[str] = []
        length = stream.length_problem()
        if length:
            problems.append(length)
        if TRAILER not in stream.tail:
            problems.append("the dump ends without its '-- Dump completed' trailer: it is cut short")
        if not done.ok:
            problems.append(f"the dump does not load: {done.describe()}")
        if problems:
            return Proof(errors=tuple(problems), files=1, bytes=stream.length)
        tables, failing = _check_tables(server)
    return Proof(errors=tuple(failing), files=1, bytes=stream.length, tables=tuple(tables))


def _check_tables(server: ThrowawayServer) -> Tuple[List[TableRows], List[str]]:
    """Every base table of the loaded databases: CHECK TABLE, then COUNT(*)."""
    excluded = ", ".join(f"'{name}'" for name in _SYSTEM_SCHEMAS)
    names = server.query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = "
                         f"'BASE TABLE' AND TABLE_SCHEMA NOT IN ({excluded}) ORDER BY TABLE_SCHEMA, TABLE_NAME")
    tables: List[TableRows] = []
    failing: List[str] = []
    if not names:
        failing.append("the dump loaded no table")
    for schema, table in names:
        quoted = f"{_quote(schema)}.{_quote(table)}"
        try:
            checked = server.query(f"CHECK TABLE {quoted}")
            verdicts = [row[3] for row in checked if len(row) >= 4 and row[2].lower() in ("status", "error")]
            if not verdicts or verdicts[-1] != "OK":
                failing.append(f"table {schema}.{table} fails CHECK TABLE: {'; '.join(verdicts) or 'no verdict'}")
            rows = server.query(f"SELECT COUNT(*) FROM {quoted}")
            tables.append(TableRows(f"{schema}.{table}", int(rows[0][0])))
        except (ServerError, IndexError, ValueError) as exc:
            failing.append(f"table {schema}.{table} cannot be checked: {exc}")
    return tables, failing


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
