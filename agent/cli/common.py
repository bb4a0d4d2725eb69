"""What every command shares: exit codes, the usage error, loading the configuration, opening the
repository, and the two output channels (JSON on stdout, messages on stderr)."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:
    from agent.config import Config
    from agent.store import Repository

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A wrong command line or configuration: printed with the command's prefix, exit status 2."""


PREFIX = "backup-agent: "


class CommandFailed(Exception):
    """The command could not do its work (a damaged snapshot, say): printed with the prefix, exit status 1."""


def err(message: str) -> None:
    """A line on stderr as it is (progress-like notes, what a restore did)."""
    print(message, file=sys.stderr)


def error(message: str) -> None:
    """An error on stderr, with the one prefix every error of the command has."""
    print(f"{PREFIX}error: {message}", file=sys.stderr)


def warning(message: str) -> None:
    print(f"{PREFIX}warning: {message}", file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def load_config(path: Optional[str]) -> Config:
    """The configuration at `path` (None: the default location); its warnings go to stderr.

    Raises agent.config.ConfigError with every problem found."""
    from agent.config import default_config_path
    from agent.config import load_config as load

    chosen = os.path.abspath(path or default_config_path())
    if not os.path.exists(chosen):
        how = ("--config" if path else "$BACKUP_AGENT_CONFIG" if os.environ.get("BACKUP_AGENT_CONFIG")
               else "the default location")
        raise UsageError(f"{chosen}: no such configuration file (from {how}); name another with --config FILE "
                         "(before or after the command) or $BACKUP_AGENT_CONFIG")
    config = load(chosen)
    for text in config.warnings:
        warning(text)
    return config


def unknown_job(config: Config, name: str) -> UsageError:
    """The one answer every command gives for a job name that is not configured."""
    known = ", ".join(job.name for job in config.jobs) or "none configured"
    return UsageError(f"unknown job {name!r} (known: {known})")


def check_jobs(config: Config, names: Iterable[str]) -> None:
    """Raises the unknown-job UsageError for the first name in `names` that is not a configured job."""
    known = {job.name for job in config.jobs}
    for name in names:
        if name not in known:
            raise unknown_job(config, name)


def open_repository(config: Config) -> Repository:
    """The configured repository; a missing or unreadable one is a UsageError."""
    from agent.store import Repository, RepositoryError

    try:
        return Repository.open(config.repository)
    except RepositoryError as exc:
        raise UsageError(str(exc)) from None
