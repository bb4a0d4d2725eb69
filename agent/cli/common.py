"""What every command shares: exit codes, the usage error, loading the configuration, opening the
repository, and the two output channels (JSON on stdout, messages on stderr)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from agent.config import Config
    from agent.store import Repository

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A wrong command line or configuration: printed with the command's prefix, exit status 2."""


def err(message: str) -> None:
    print(message, file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def load_config(path: Optional[str]) -> Config:
    """The configuration at `path` (None: the default location); its warnings go to stderr.

    Raises agent.config.ConfigError with every problem found."""
    from agent.config import load_config as load

    config = load(path)
    for warning in config.warnings:
        err(f"warning: {warning}")
    return config


def open_repository(config: Config) -> Repository:
    """The configured repository; a missing or unreadable one is a UsageError."""
    from agent.store import Repository, RepositoryError

    try:
        return Repository.open(config.repository)
    except RepositoryError as exc:
        raise UsageError(str(exc)) from None
