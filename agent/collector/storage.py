"""Where the collector keeps reports: SQLite (one collector, the default) or PostgreSQL (several
collector processes sharing one database). One SQL text serves both; only connecting, the parameter
style and the migration lock differ.

Besides every report, two small summary tables are kept up to date in the same transaction, so that the
fleet view costs one read of (hosts x jobs) rows however many reports are stored:
  jobs   per host/job: newest run (time, status, first error), newest success, the policy
  hosts  per host: last time anything arrived, and sequence numbers seen (min, max, count: the gaps)

Writes go through `insert_many`, which commits a whole batch at once (the collector's writer groups
concurrent posts): one fsync for many reports keeps SQLite durable and fast.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from agent.collector.schema import Report

SCHEMA_VERSION = 5

REPORT_COLUMNS = """id TEXT NOT NULL, host TEXT NOT NULL, job TEXT NOT NULL, seq BIGINT NOT NULL,
            status TEXT NOT NULL, trigger_name TEXT NOT NULL, job_type TEXT NOT NULL,
            started_ts DOUBLE PRECISION NOT NULL, finished_ts DOUBLE PRECISION NOT NULL,
            files BIGINT NOT NULL, bytes BIGINT NOT NULL, new_bytes BIGINT NOT NULL,
            received_ts DOUBLE PRECISION NOT NULL, body TEXT NOT NULL"""

# Versioned migrations: index i holds the statements that take the schema from version i to i+1.
MIGRATIONS: List[List[str]] = [
    [
        """CREATE TABLE reports (
            id TEXT PRIMARY KEY, host TEXT NOT NULL, job TEXT NOT NULL, seq BIGINT NOT NULL,
            status TEXT NOT NULL, trigger_name TEXT NOT NULL, job_type TEXT NOT NULL,
            started_ts DOUBLE PRECISION NOT NULL, finished_ts DOUBLE PRECISION NOT NULL,
            files BIGINT NOT NULL, bytes BIGINT NOT NULL, new_bytes BIGINT NOT NULL,
            received_ts DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)""",
        "CREATE INDEX reports_by_job ON reports (host, job, finished_ts)",
        """CREATE TABLE jobs (
            host TEXT NOT NULL, job TEXT NOT NULL, job_type TEXT NOT NULL,
            last_run_ts DOUBLE PRECISION NOT NULL, last_status TEXT NOT NULL, last_error TEXT,
            last_trigger TEXT NOT NULL, last_ok_ts DOUBLE PRECISION,
            every_low DOUBLE PRECISION NOT NULL, every_high DOUBLE PRECISION NOT NULL,
            runs BIGINT NOT NULL, PRIMARY KEY (host, job))""",
        """CREATE TABLE hosts (
            host TEXT PRIMARY KEY, last_seen_ts DOUBLE PRECISION NOT NULL,
            min_seq BIGINT NOT NULL, max_seq BIGINT NOT NULL, seq_count BIGINT NOT NULL)""",
    ],
    [   # 2: when each summary row last changed (collector clock), so readers fetch only what changed
        "ALTER TABLE jobs ADD COLUMN changed_ts DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE hosts ADD COLUMN changed_ts DOUBLE PRECISION NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_by_change ON jobs (changed_ts)",
        "CREATE INDEX hosts_by_change ON hosts (changed_ts)",
    ],
    [   # 3: reports keyed by host and id: one host's report id never shadows another host's
        f"CREATE TABLE reports_v3 ({REPORT_COLUMNS}, PRIMARY KEY (host, id))",
        "INSERT INTO reports_v3 SELECT * FROM reports",
        "DROP TABLE reports",
        "ALTER TABLE reports_v3 RENAME TO reports",
        "CREATE INDEX reports_by_job ON reports (host, job, finished_ts)",
    ],
    [   # 4: per host and job, the last restore drill and the last one that passed
        """CREATE TABLE drills (
            host TEXT NOT NULL, job TEXT NOT NULL, last_drill_ts DOUBLE PRECISION NOT NULL,
            last_status TEXT NOT NULL, last_error TEXT, last_ok_ts DOUBLE PRECISION,
            drill_every DOUBLE PRECISION NOT NULL, changed_ts DOUBLE PRECISION NOT NULL, PRIMARY KEY (host, job))""",
        "CREATE INDEX drills_by_change ON drills (changed_ts)",
    ],
    [   # 5: per host, the last prune and the repository's size after it
        """CREATE TABLE prunes (
            host TEXT PRIMARY KEY, last_prune_ts DOUBLE PRECISION NOT NULL, last_status TEXT NOT NULL,
            repository_bytes BIGINT)""",
    ],
]

# Runs that are not backups: stored and listed, but they neither refresh nor fail a job's backup state
NOT_BACKUPS = ("prune", "drill")

# Rows changed this long before the previous read are read again: a batch stamped just before that read
# may commit just after it (and clocks of collector machines sharing PostgreSQL differ a little: keep
# them in NTP sync).
CHANGE_OVERLAP = 120.0

INSERT_REPORT = """INSERT INTO reports (id, host, job, seq, status, trigger_name, job_type, started_ts, finished_ts,
    files, bytes, new_bytes, received_ts, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (host, id) DO NOTHING"""

def _newer_wins(table: str, stamp: str, columns: Tuple[str, ...]) -> str:
    """SET clauses of an upsert into `table`: each of `columns`, and `stamp` itself, takes the incoming
    value only if the incoming row's `stamp` is not older than the stored one. (In SQLite and PostgreSQL
    every SET expression reads the stored row, so the order of the clauses does not matter.)"""
    return ",\n".join(f"      {column} = CASE WHEN excluded.{stamp} >= {table}.{stamp} THEN excluded.{column} "
                      f"ELSE {table}.{column} END" for column in (*columns, stamp))


def _ok_moves_forward(table: str) -> str:
    """The SET clause of `table`'s last_ok_ts: only a later success moves it."""
    return (f"      last_ok_ts = CASE WHEN excluded.last_ok_ts IS NOT NULL AND ({table}.last_ok_ts IS NULL "
            f"OR excluded.last_ok_ts > {table}.last_ok_ts) THEN excluded.last_ok_ts ELSE {table}.last_ok_ts END")


_JOB_COLUMNS = ("job_type", "last_status", "last_error", "last_trigger", "every_low", "every_high")

# A report may arrive after a newer one (the backlog drains after each job's newest): each column
# moves only forward in time.
UPSERT_JOB = f"""INSERT INTO jobs (host, job, job_type, last_run_ts, last_status, last_error, last_trigger, last_ok_ts,
    every_low, every_high, runs, changed_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)
    ON CONFLICT (host, job) DO UPDATE SET
      changed_ts = excluded.changed_ts,
{_newer_wins("jobs", "last_run_ts", _JOB_COLUMNS)},
{_ok_moves_forward("jobs")},
      runs = jobs.runs + 1"""

# Like UPSERT_JOB: a drill report that arrives late moves nothing back in time
UPSERT_DRILL = f"""INSERT INTO drills (host, job, last_drill_ts, last_status, last_error, last_ok_ts, drill_every,
    changed_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (host, job) DO UPDATE SET
      changed_ts = excluded.changed_ts,
{_newer_wins("drills", "last_drill_ts", ("last_status", "last_error", "drill_every"))},
{_ok_moves_forward("drills")}"""

UPSERT_PRUNE = f"""INSERT INTO prunes (host, last_prune_ts, last_status, repository_bytes) VALUES (?, ?, ?, ?)
    ON CONFLICT (host) DO UPDATE SET
      repository_bytes = CASE WHEN excluded.last_prune_ts >= prunes.last_prune_ts
                              AND excluded.repository_bytes IS NOT NULL
                         THEN excluded.repository_bytes ELSE prunes.repository_bytes END,
{_newer_wins("prunes", "last_prune_ts", ("last_status",))}"""

UPSERT_HOST = """INSERT INTO hosts (host, last_seen_ts, min_seq, max_seq, seq_count, changed_ts)
    VALUES (?, ?, ?, ?, 1, ?)
    ON CONFLICT (host) DO UPDATE SET
      changed_ts = excluded.changed_ts,
      last_seen_ts = CASE WHEN excluded.last_seen_ts > hosts.last_seen_ts THEN excluded.last_seen_ts
                     ELSE hosts.last_seen_ts END,
      min_seq = CASE WHEN excluded.min_seq < hosts.min_seq THEN excluded.min_seq ELSE hosts.min_seq END,
      max_seq = CASE WHEN excluded.max_seq > hosts.max_seq THEN excluded.max_seq ELSE hosts.max_seq END,
      seq_count = hosts.seq_count + 1"""


class JobRow(NamedTuple):
    """A named tuple, not a dataclass: the fleet view builds 12,000 of them per page."""

    host: str
    job: str
    type: str
    last_run_ts: float
    last_status: str
    last_error: Optional[str]
    last_trigger: str
    last_ok_ts: Optional[float]
    every_low: float
    every_high: float
    runs: int


class DrillRow(NamedTuple):
    """A host/job's restore drills: the last one (time, status, first error), the last that passed, and
    the drill policy (seconds) its report carried."""

    host: str
    job: str
    last_drill_ts: float
    last_status: str
    last_error: Optional[str]
    last_ok_ts: Optional[float]
    drill_every: float


class PruneRow(NamedTuple):
    """A host's last prune: when, how it ended, and the repository's stored bytes after it (None: unknown)."""

    host: str
    last_prune_ts: float
    last_status: str
    repository_bytes: Optional[int]


class Run(NamedTuple):
    """One run as the history's charts draw it, read from the reports table's columns (no JSON parsed)."""

    started_ts: float
    finished_ts: float
    status: str
    trigger: str
    bytes: int
    new_bytes: int


class HostRow(NamedTuple):
    host: str
    last_seen_ts: float
    min_seq: int
    max_seq: int
    seq_count: int

    @property
    def missing(self) -> int:
        """Reports lost on the way: sequence numbers never received between the first and the newest."""
        return max(self.max_seq - self.min_seq + 1 - self.seq_count, 0)


class StorageError(Exception):
    pass


class StorageUnavailable(StorageError):
    """The database cannot be reached or written now (restarting, locked, read-only): answer 503."""


T = TypeVar("T")
MIN_BACKOFF = 0.25  # seconds between attempts to connect to a database that refused, doubling ...
MAX_BACKOFF = 2.0  # ... up to this: a restarted database is used again within seconds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rollback(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection is broken: the caller replaces it
        pass


class Storage:
    """The storage interface the app uses; one implementation per engine below."""

    placeholder = "?"
    unavailable_errors: Tuple[type, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._connections: List[Any] = []
        self._connections_lock = threading.Lock()
        self._fleet_lock = threading.Lock()
        self._jobs_cache: Optional[Dict[Tuple[str, str], JobRow]] = None
        self._hosts_cache: Optional[Dict[str, HostRow]] = None
        self._last_read = 0.0
        self._drills_cache: Optional[Dict[Tuple[str, str], DrillRow]] = None
        self._drills_read = 0.0
        self._down_until = 0.0
        self._backoff = 0.0

    # --- engine specifics --------------------------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _lock_for_migration(self, cursor: Any) -> None:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def connection(self) -> Any:
        """One connection per thread (SQLite connections must stay in their thread). A connection that
        failed is replaced on the next call; while the database refuses connections, calls fail fast
        (StorageUnavailable) for a backoff that doubles from 0.25 s to 2 s."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        now = time.monotonic()
        if now < self._down_until:
            raise StorageUnavailable(f"{self.describe()}: unavailable, retrying shortly")
        try:
            conn = self._connect()
        except (StorageError, *self.unavailable_errors) as exc:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF) if self._backoff else MIN_BACKOFF
            self._down_until = now + self._backoff
            raise StorageUnavailable(_first_line(exc) or self.describe()) from None
        self._backoff = 0.0
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _discard(self) -> None:
        """Forget this thread's connection (it failed): the next call connects again."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is None:
            return
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except Exception:  # closing a broken connection may fail too; it is gone either way
            pass

    def _attempt(self, work: Callable[[Any], T]) -> T:
        """Run `work(connection)` in a transaction that it ends itself; a connection that died (database
        restarted) is replaced and the work tried once more. Raises StorageUnavailable when that fails."""
        for attempt in (1, 2):
            conn = self.connection()
            try:
                return work(conn)
            except self.unavailable_errors as exc:
                self._discard()
                if attempt == 2:
                    raise StorageUnavailable(f"{self.describe()}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except Exception:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; returns the version found before. Refuses a newer one."""
        conn = self.connection()
        cur = conn.cursor()
        self._lock_for_migration(cur)
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cur.execute("SELECT version FROM schema_version")
        row = cur.fetchone()
        found = row[0] if row else 0
        if found > SCHEMA_VERSION:
            conn.rollback()
            raise StorageError(f"{self.describe()}: schema version {found} is newer than this collector "
                               f"understands ({SCHEMA_VERSION}); upgrade the collector")
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                cur.execute(statement)
        if row is None:
            cur.execute(self._sql("INSERT INTO schema_version (version) VALUES (?)"), (SCHEMA_VERSION,))
        elif found != SCHEMA_VERSION:
            cur.execute(self._sql("UPDATE schema_version SET version = ?"), (SCHEMA_VERSION,))
        conn.commit()
        return found

    def describe(self) -> str:
        return self.url.split("@")[-1]  # never the password of a postgresql:// URL

    def insert_many(self, reports: Sequence[Report], received_ts: float) -> List[bool]:
        """Store a batch in one transaction; per report, True if it was new (False: a re-sent id).
        Raises StorageUnavailable (nothing stored) when the database cannot be reached."""

        def work(conn: Any) -> List[bool]:
            cur = conn.cursor()
            try:
                results = [self._insert(cur, report, received_ts) for report in reports]
                conn.commit()
            except BaseException:
                _rollback(conn)
                raise
            return results

        return self._attempt(work)

    def _insert(self, cur: Any, report: Report, received_ts: float) -> bool:
        # A run cannot have finished after it reached us: a host clock that was ahead once (2099) must not
        # pin the job's state, so the times judged and ordered by are capped at the receive time.
        finished_ts = min(report.finished_ts, received_ts)
        started_ts = min(report.started_ts, finished_ts)
        cur.execute(self._sql(INSERT_REPORT), (
            report.id, report.host, report.job, report.seq, report.status, report.trigger, report.type,
            started_ts, finished_ts, report.files, report.bytes, report.new_bytes, received_ts,
            json.dumps(report.body, separators=(",", ":"))))
        if cur.rowcount != 1:
            return False
        if report.seq > 0:  # 0: posted for the host by another (a central drill): its numbers are not the host's
            cur.execute(self._sql(UPSERT_HOST), (report.host, received_ts, report.seq, report.seq, received_ts))
        if report.trigger == "drill":
            cur.execute(self._sql(UPSERT_DRILL), (
                report.host, report.job, finished_ts, report.status, report.first_error,
                finished_ts if report.status == "ok" else None, report.drill_every or report.every_high,
                received_ts))
        if report.trigger == "prune":
            cur.execute(self._sql(UPSERT_PRUNE), (report.host, finished_ts, report.status,
                                                  report.body.get("repository_bytes_after")))
        if report.trigger in NOT_BACKUPS:
            return True
        cur.execute(self._sql(UPSERT_JOB), (
            report.host, report.job, report.type, finished_ts, report.status, report.first_error,
            report.trigger, finished_ts if report.status == "ok" else None, report.every_low,
            report.every_high, received_ts))
        return True

    def _query(self, sql: str, params: Iterable[Any] = ()) -> List[tuple]:
        """Rows of one read; raises StorageUnavailable when the database cannot be reached."""
        values = tuple(params)

        def work(conn: Any) -> List[tuple]:
            cur = conn.cursor()
            try:
                cur.execute(self._sql(sql), values)
                return cur.fetchall()
            finally:
                _rollback(conn)  # end the read transaction: the next read sees new reports

        return self._attempt(work)

    def fleet_rows(self, now: float) -> Tuple[List[JobRow], List[HostRow]]:
        """Every jobs and hosts row. Kept in memory and refreshed with only the rows changed since the
        previous call (`now`: the clock the writer stamps changes with): a fleet page then reads the few
        rows that changed lately, not 12,000."""
        with self._fleet_lock:
            since = self._last_read - CHANGE_OVERLAP if self._jobs_cache is not None else None
            where = "" if since is None else " WHERE changed_ts >= ?"
            params = [] if since is None else [since]
            jobs = self._query("SELECT host, job, job_type, last_run_ts, last_status, last_error, last_trigger, "
                               "last_ok_ts, every_low, every_high, runs, changed_ts FROM jobs" + where, params)
            hosts = self._query("SELECT host, last_seen_ts, min_seq, max_seq, seq_count, changed_ts FROM hosts"
                                + where, params)
            job_cache = self._jobs_cache if self._jobs_cache is not None else {}
            host_cache = self._hosts_cache if self._hosts_cache is not None else {}
            for row in jobs:
                job_cache[(row[0], row[1])] = JobRow._make(row[:11])
            for row in hosts:
                host_cache[row[0]] = HostRow._make(row[:5])
            self._jobs_cache, self._hosts_cache, self._last_read = job_cache, host_cache, now
            return list(job_cache.values()), list(host_cache.values())

    def drill_rows(self, now: float) -> List[DrillRow]:
        """Every drills row, kept in memory and refreshed with the rows changed since the previous call
        (as fleet_rows)."""
        with self._fleet_lock:
            since = self._drills_read - CHANGE_OVERLAP if self._drills_cache is not None else None
            where = "" if since is None else " WHERE changed_ts >= ?"
            rows = self._query("SELECT host, job, last_drill_ts, last_status, last_error, last_ok_ts, drill_every "
                               "FROM drills" + where, [] if since is None else [since])
            cache = self._drills_cache if self._drills_cache is not None else {}
            for row in rows:
                cache[(row[0], row[1])] = DrillRow._make(row)
            self._drills_cache, self._drills_read = cache, now
            return list(cache.values())

    def prune_rows(self) -> List[PruneRow]:
        """Every host's last prune (one row per host: read whole)."""
        return [PruneRow._make(row) for row in self._query(
            "SELECT host, last_prune_ts, last_status, repository_bytes FROM prunes")]

    def jobs(self) -> List[JobRow]:
        return self.fleet_rows(time.time())[0]

    def hosts(self) -> List[HostRow]:
        return self.fleet_rows(time.time())[1]

    def reports(self, host: Optional[str] = None, job: Optional[str] = None, limit: int = 100) -> List[dict]:
        """Stored reports, newest first (by finish time)."""
        where, params = [], []
        if host is not None:
            where.append("host = ?")
            params.append(host)
        if job is not None:
            where.append("job = ?")
            params.append(job)
        sql = "SELECT body, received_ts FROM reports"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY finished_ts DESC, seq DESC LIMIT ?"
        rows = self._query(sql, [*params, limit])
        result = []
        for body, received_ts in rows:
            data = json.loads(body)
            data["received_ts"] = received_ts
            result.append(data)
        return result

    def runs(self, host: str, job: str, since: float, limit: int) -> List[Run]:
        """HOST's runs of JOB that finished at or after `since` (epoch seconds), the newest `limit`."""
        rows = self._query("SELECT started_ts, finished_ts, status, trigger_name, bytes, new_bytes FROM reports "
                           "WHERE host = ? AND job = ? AND finished_ts >= ? ORDER BY finished_ts DESC LIMIT ?",
                           [host, job, since, limit])
        return [Run(*row) for row in rows]

    def missing_seqs(self, host: str, limit: int = 50) -> List[Tuple[int, int]]:
        """Gaps in a host's sequence numbers as (first missing, last missing) ranges, oldest first."""
        rows = self._query("SELECT seq FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev FROM reports "
                           "WHERE host = ? AND seq > 0) AS s WHERE prev IS NOT NULL AND seq > prev + 1 "
                           "ORDER BY seq LIMIT ?",
                           [host, limit])
        gaps = []
        for (seq,) in rows:
            prev = self._query("SELECT MAX(seq) FROM reports WHERE host = ? AND seq > 0 AND seq < ?",
                               [host, seq])[0][0]
            gaps.append((prev + 1, seq - 1))
        return gaps

    def count_reports(self) -> int:
        """Stored reports, from the per-host counters (COUNT(*) would scan millions of rows)."""
        return int(self._query("SELECT COALESCE(SUM(seq_count), 0) FROM hosts")[0][0])

    def ping(self) -> None:
        """Raises StorageUnavailable unless a report could be stored now: a write is tried (a no-op
        update of the schema version, rolled back), so a read-only or unreachable database fails it."""

        def work(conn: Any) -> None:
            cur = conn.cursor()
            try:
                cur.execute("UPDATE schema_version SET version = version")
            finally:
                _rollback(conn)

        self._attempt(work)


class SQLiteStorage(Storage):
    # locked past the busy timeout, disk I/O errors, a read-only file
    unavailable_errors: Tuple[type, ...] = (sqlite3.OperationalError,)

    def __init__(self, path: str, url: str = "") -> None:
        super().__init__(url or f"sqlite://{path}")  # the URL as the operator wrote it, for messages
        self.path = path

    def _connect(self) -> Any:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged report survives a power loss (the agent deletes its copy on our 200)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _lock_for_migration(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")


class PostgresStorage(Storage):
    placeholder = "%s"

    @property
    def unavailable_errors(self) -> Tuple[type, ...]:  # type: ignore[override]
        import psycopg

        # a server restarting or gone (OperationalError), a connection closed under us (InterfaceError),
        # a standby that cannot take writes
        return (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StorageError(f"{self.describe()}: {str(exc).splitlines()[0] if str(exc) else exc}") from None

    def _lock_for_migration(self, cursor: Any) -> None:
        # several collector processes may start at once against one database
        cursor.execute("SELECT pg_advisory_xact_lock(7262531)")


def open_storage(url: str) -> Storage:
    """`sqlite:///ABSOLUTE/PATH` or `postgresql://...`; the schema is migrated on open."""
    if url.startswith("sqlite:///"):
        import os

        path = url[len("sqlite://"):]
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        storage: Storage = SQLiteStorage(path, url)
    elif url.startswith(("postgresql://", "postgres://")):
        storage = PostgresStorage(url)
    else:
        raise StorageError(f"--db: {url.split('@')[-1]!r} is neither sqlite:///PATH nor postgresql://...")
    storage.migrate()
    return storage
