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


def escape_names_in_output() -> None:
    """Make stdout and stderr write a name that is not UTF-8 (os.fsdecode's surrogate escapes, from a file
    named b'd\\xfe') as `d\\xfe`, as reports and logs do, whatever the locale: a strict UTF-8 stdout
    would raise, a C one would pass the raw byte to the terminal."""
    import codecs

    try:
        codecs.lookup_error(_ESCAPE_ERRORS)
    except LookupError:
        codecs.register_error(_ESCAPE_ERRORS, _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on a replaced stream (a test's capture)
        if reconfigure is not None:
            reconfigure(errors=_ESCAPE_ERRORS)


_ESCAPE_ERRORS = "backup-agent-escape"


def _escape_unencodable(exc: UnicodeError) -> tuple:
    """The codec error handler of escape_names_in_output: `\\xNN` for an undecodable byte's surrogate
    (U+DC80..U+DCFF), `\\uNNNN` for any other character the stream cannot encode."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(char) - 0xDC00:02x}" if "\udc80" <= char <= "\udcff" else f"\\u{ord(char):04x}"
                   for char in bad), exc.end


def err(message: str) -> None:
    """A line on stderr as it is (progress-like notes, what a restore did)."""
    print(message, file=sys.stderr)


def error(message: str) -> None:
    """An error on stderr, with the one prefix every error of the command has."""
    print(f"{PREFIX}error: {message}", file=sys.stderr)


def warning(message: str) -> None:
    print(f"{PREFIX}warning: {message}", file=sys.stderr)


def print_json(data: Any) -> None:
    """`data` as indented JSON on stdout; every text in it valid UTF-8 (names that are not: `\\xff`)."""
    json.dump(_escaped(data), sys.stdout, indent=2)
    sys.stdout.write("\n")


def _escaped(data: Any) -> Any:
    from agent.report.schema import escape

    if isinstance(data, str):
        return escape(data)
    if isinstance(data, dict):
        return {_escaped(key): _escaped(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_escaped(item) for item in data]
    return data


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


def repository_exists(config: Config, location: Optional[str] = None) -> bool:
    """Whether the configured repository (or the one at `location`) has been created (by a first backup)."""
    from agent.runner import repository_backend
    from agent.store import Repository

    return Repository(repository_backend(config, location)).exists()


def open_repository(config: Config, cache: Optional[str] = None, location: Optional[str] = None) -> Repository:
    """The configured repository (or the one at `location`, reached with the same settings). A missing one
    is a UsageError (exit 2: the configuration names the wrong place), and so is an encrypted one this node
    has no key or identity for; a damaged one (its config.json unreadable or not authentic) raises
    RepositoryError naming it, storage that cannot be reached BackendError (exit 1). `cache`: where an
    object store's index files and snapshot documents are kept (see agent.runner.repository_backend)."""
    from agent.backend import BackendError
    from agent.runner import repository_backend
    from agent.store import KeyUnusable, Repository, RepositoryError

    try:
        backend = repository_backend(config, location, cache)
    except BackendError as exc:  # a location the settings cannot reach (a malformed URL): theirs to fix
        raise UsageError(str(exc)) from None
    try:
        return Repository.open(backend, encryption=config.encryption)
    except KeyUnusable as exc:
        raise UsageError(str(exc)) from None
    except RepositoryError as exc:
        damaged = exc
    try:
        exists = repository_exists(config, location)
    except (BackendError, OSError):  # the storage fails now: what it said first is the news
        raise damaged from None
    if exists:
        raise damaged
    raise UsageError(str(damaged)) from None


def with_identity(config: Config, identity: Optional[str]) -> Config:
    """`config` with `--identity FILE` (if given) in place of [encryption] identity_file."""
    if not identity:
        return config
    from dataclasses import replace

    return replace(config, encryption=replace(config.encryption, identity_file=os.path.abspath(identity)))


def require_identity(repo: Repository, config: Config, required: bool) -> None:
    """Read the identity an encrypted repository's contents need now, so that a missing, malformed or
    wrong one is a UsageError before anything is done; `required`: its absence is one too (restore)."""
    if repo.cipher is None:
        return
    from agent.crypt.keys import KeyFileError

    if repo.cipher.identity_file is None:
        if required:
            raise UsageError(f"{repo.location} is encrypted: reading file contents and dumps needs an identity; "
                             f"give --identity FILE, or set identity_file in the [encryption] table of {config.path}")
        return
    try:
        if not repo.cipher.identities:
            raise UsageError(f"{repo.cipher.identity_file}: holds no identity")
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
