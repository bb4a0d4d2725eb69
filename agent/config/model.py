"""The validated configuration: frozen values shared by the CLI, the runner and the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from agent.config.durations import Interval, format_duration
from agent.crypt.settings import EncryptionSettings

JOB_TYPES = ("fs", "mysql", "riak", "command", "sqlite")
DEFAULT_DRILL_EVERY = 7 * 86400.0  # seconds between restore drills of a job, unless configured
DEFAULT_PRUNE_EVERY = 86400.0      # seconds between the daemon's prunes, unless configured
# Names as the run report's contract (agent.report.schema) and the collector's tokens accept them
JOB_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
HOST_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}"


@dataclass(frozen=True)
class Retention:
    keep_last: int = 3
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6


@dataclass(frozen=True)
class Job:
    name: str
    type: str
    every: Interval
    source: str  # the file that defined the job, for messages
    retention: Retention = field(default_factory=Retention)
    # fs and sqlite: the tree or database file; riak: several trees in `paths`
    path: Optional[str] = None
    paths: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    on_change: bool = False
    quiet: float = 30.0
    max_delay: float = 600.0
    before: Tuple[str, ...] = ()
    after: Tuple[str, ...] = ()
    timeout: float = 3600.0
    # mysql
    database: Optional[str] = None
    options_file: Optional[str] = None
    dump_command: Optional[str] = None
    extra_args: Tuple[str, ...] = ()
    # command
    argv: Tuple[str, ...] = ()
    # seconds between restore drills; None: the configuration's top-level drill_every
    drill_every: Optional[float] = None

    @property
    def target(self) -> str:
        """What the job backs up, in one short phrase for listings."""
        if self.type in ("fs", "sqlite"):
            return str(self.path)
        if self.type == "riak":
            return ", ".join(self.paths)
        if self.type == "mysql":
            return f"database {self.database}"
        return " ".join(self.argv)

    @property
    def schedule(self) -> str:
        text = f"every {self.every.text}"
        if self.on_change:
            text += f", on change (quiet {format_duration(self.quiet)}, max delay {format_duration(self.max_delay)})"
        return text


@dataclass(frozen=True)
class CollectorSettings:
    url: str
    token_file: Optional[str] = None
    ca_file: Optional[str] = None
    max_backoff: float = 300.0           # longest wait between two delivery attempts (401/403: 3x this)
    spool_max_reports: int = 10_000      # the spool's bounds; beyond them the oldest successful
    spool_max_bytes: int = 64 * 1024 * 1024  # reports are dropped (never a failed run, never a job's newest)


@dataclass(frozen=True)
class S3Settings:
    """The `[s3]` table: how to reach an `s3:` repository (agent.backend.s3)."""

    credentials_file: Optional[str] = None  # AWS shared-credentials format, [default] keys, mode 0600
    region: Optional[str] = None
    ca_file: Optional[str] = None           # a private CA for https


@dataclass(frozen=True)
class Config:
    path: str
    host: str
    repository: str
    state_dir: str
    jobs_dir: str
    retention: Retention
    jobs: Tuple[Job, ...]
    collector: Optional[CollectorSettings] = None
    s3: Optional[S3Settings] = None
    max_concurrent_runs: int = 1
    poll_interval: float = 30.0
    drill_every: float = DEFAULT_DRILL_EVERY  # the default of jobs that set none
    prune_every: float = DEFAULT_PRUNE_EVERY
    warnings: Tuple[str, ...] = ()  # said by every command that loads the configuration
    advice: Tuple[str, ...] = ()  # said by check-config and the daemon's start only (a setting chosen knowingly)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)

    def drill_every_of(self, job: Job) -> float:
        """Seconds between restore drills of `job`: its own drill_every, else the top-level one."""
        return self.drill_every if job.drill_every is None else job.drill_every

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)
