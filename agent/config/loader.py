"""Load agent.toml and the job files of jobs_dir, collecting every problem before reporting any.

Each problem reads `FILE: jobs.NAME.KEY: what is wrong`, so an operator can fix all of them in one pass.
Paths that do not exist yet are warnings, not errors: the daemon picks them up when they appear.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from agent.config.durations import parse_duration, parse_interval
from agent.config.model import (
    DEFAULT_DRILL_EVERY,
    DEFAULT_PRUNE_EVERY,
    HOST_PATTERN,
    JOB_NAME_PATTERN,
    JOB_TYPES,
    CollectorSettings,
    Config,
    Job,
    Retention,
    S3Settings,
)
from agent.config.token import TokenFileError, read_token
from agent.crypt.settings import EncryptionSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older interpreters only
    import tomli as tomllib

DEFAULT_CONFIG = "/etc/backup-agent/agent.toml"
_T = TypeVar("_T")


class ConfigError(Exception):
    """The configuration is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def default_config_path() -> str:
    return os.environ.get("BACKUP_AGENT_CONFIG") or DEFAULT_CONFIG


# --- value checkers: each returns the parsed value or raises ValueError with a short reason ---------------


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _abspath(value: Any) -> str:
    text = _string(value)
    if not os.path.isabs(text):
        raise ValueError(f"must be an absolute path, not {text!r}")
    return os.path.normpath(text)


def _string_list(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _argv(value: Any) -> Tuple[str, ...]:
    items = _string_list(value)
    if not items or not items[0]:
        raise ValueError("must be a non-empty list: the program and its arguments (no shell)")
    return items


def _abspath_list(value: Any) -> Tuple[str, ...]:
    items = _string_list(value)
    if not items:
        raise ValueError("must list at least one path")
    return tuple(_abspath(item) for item in items)


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be a duration such as \"30s\" or \"10m\", not {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("must be longer than zero")
        return float(value)
    return parse_duration(value)


def _interval(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a duration such as \"24h\" or a range such as \"4h..6h\", not {value!r}")
    return parse_interval(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0, not {value!r}")
    return value


def _positive(value: Any) -> int:
    if _count(value) < 1:
        raise ValueError("must be at least 1")
    return value


Checker = Callable[[Any], Any]

_HOOKS: Dict[str, Checker] = {"before": _argv, "after": _argv, "timeout": _duration}
_COMMON: Dict[str, Checker] = {"type": _string, "every": _interval, "retention": dict, "drill_every": _duration}
JOB_KEYS: Dict[str, Dict[str, Checker]] = {
    "fs": {
        "path": _abspath, "on_change": _bool, "quiet": _duration, "max_delay": _duration,
        "exclude": _string_list, **_HOOKS,
    },
    "mysql": {
        "database": _string, "options_file": _abspath, "dump_command": _string,
        "extra_args": _string_list, "timeout": _duration,
    },
    "riak": {"paths": _abspath_list, "exclude": _string_list, **_HOOKS},
    "command": {"argv": _argv, "timeout": _duration},
    "sqlite": {"path": _abspath},
}
REQUIRED_KEYS: Dict[str, Tuple[str, ...]] = {
    "fs": ("path",), "mysql": ("database",), "riak": ("paths",), "command": ("argv",), "sqlite": ("path",),
}
# Job names become file names in state_dir and labels at the collector
JOB_NAME = re.compile(JOB_NAME_PATTERN)
HOST_NAME = re.compile(HOST_PATTERN)
_RETENTION_KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
_AGENT_KEYS = ("host", "repository", "state_dir", "jobs_dir", "retention", "collector", "s3", "jobs",
               "max_concurrent_runs", "poll_interval", "drill_every", "prune_every", "encryption")
_ENCRYPTION_KEYS: Dict[str, Checker] = {"recipients": _string_list, "identity_file": _abspath,
                                         "node_key_file": _abspath, "disabled": _bool}
_COLLECTOR_KEYS = {"url": _string, "token_file": _abspath, "ca_file": _abspath, "max_backoff": _duration,
                   "spool_max_reports": _positive, "spool_max_bytes": _positive}


@dataclass
class _Problems:
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    advice: List[str] = field(default_factory=list)

    def error(self, source: str, where: str, message: str) -> None:
        self.errors.append(f"{source}: {where}: {message}")

    def warn(self, source: str, where: str, message: str) -> None:
        self.warnings.append(f"{source}: {where}: {message}")

    def advise(self, source: str, where: str, message: str) -> None:
        """A warning about a setting chosen knowingly: said by check-config and the daemon's start, not
        by every command (a cron'd backup would mail it every night)."""
        self.advice.append(f"{source}: {where}: {message}")


def _read_toml(path: str, problems: _Problems) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        problems.errors.append(f"{path}: file not found")
    except PermissionError:
        problems.errors.append(f"{path}: permission denied")
    except tomllib.TOMLDecodeError as exc:
        problems.errors.append(f"{path}: invalid TOML: {exc}")
    return None


def _retention(table: Any, base: Retention, source: str, where: str, problems: _Problems) -> Retention:
    if not isinstance(table, dict):
        problems.error(source, where, "must be a table")
        return base
    values = {}
    for key, value in table.items():
        if key not in _RETENTION_KEYS:
            problems.error(source, f"{where}.{key}", f"unknown key (known: {', '.join(_RETENTION_KEYS)})")
            continue
        try:
            values[key] = _count(value)
        except ValueError as exc:
            problems.error(source, f"{where}.{key}", str(exc))
    return replace(base, **values)


def _job(name: str, table: Any, source: str, defaults: Retention, problems: _Problems) -> Optional[Job]:
    where = f"jobs.{name}"
    if not isinstance(table, dict):
        problems.error(source, where, "must be a table")
        return None
    job_type = table.get("type")
    if job_type not in JOB_TYPES:
        problems.error(source, f"{where}.type", f"must be one of {', '.join(JOB_TYPES)}, not {job_type!r}"
                       if job_type is not None else f"missing (one of {', '.join(JOB_TYPES)})")
        return None
    checkers = {**_COMMON, **JOB_KEYS[job_type]}
    values: Dict[str, Any] = {}
    for key, value in table.items():
        if key == "type":
            continue
        if key not in checkers:
            problems.error(source, f"{where}.{key}",
                           f"unknown key for a {job_type} job (known: {', '.join(sorted(checkers))})")
            continue
        if key == "retention":
            values[key] = _retention(value, defaults, source, f"{where}.retention", problems)
            continue
        try:
            values[key] = checkers[key](value)
        except ValueError as exc:
            problems.error(source, f"{where}.{key}", str(exc))
    ok = True
    for key in ("every", *REQUIRED_KEYS[job_type]):
        if key not in table:
            problems.error(source, f"{where}.{key}", "missing")
            ok = False
    if not ok or any(key not in values for key in table if key != "type" and key in checkers):
        return None
    if "paths" in values:
        values["paths"] = tuple(values["paths"])
    job = Job(name=name, type=job_type, source=source, retention=values.pop("retention", defaults), **values)
    if job.on_change and job.quiet > job.max_delay:
        problems.error(source, f"{where}.quiet", "must not be longer than max_delay")
        return None
    if not _check_paths(job, problems):
        return None
    return job


def _check_paths(job: Job, problems: _Problems) -> bool:
    """Each path of `job` against the kind it must be (a tree for fs and riak, a file for sqlite and
    options files); False after an error. One that does not exist yet is only a warning: the daemon picks
    it up when it appears. Symbolic links are followed, as the run follows them."""
    where = f"jobs.{job.name}"
    wanted = [("path", job.path, job.type != "sqlite"), ("options_file", job.options_file, False)]
    wanted += [("paths", path, True) for path in job.paths]
    ok = True
    for key, path, tree in wanted:
        if not path:
            continue
        if not os.path.exists(path):
            problems.warn(job.source, f"{where}.{key}", f"{path} does not exist (yet)")
        elif tree and not os.path.isdir(path):
            problems.error(job.source, f"{where}.{key}", f"{path} is not a directory")
            ok = False
        elif not tree and os.path.isdir(path):
            problems.error(job.source, f"{where}.{key}", f"{path} is a directory, not a file")
            ok = False
    for key, message in job_warnings(job):
        problems.warn(job.source, f"{where}.{key}", message)
    return ok


def secret_file_warning(path: str, holds: str = "a password") -> Optional[str]:
    """Why a file holding a secret (`holds`: a password, a token) is unsafe, or None: readable by every
    user."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # whoever reads it says why it cannot
    if mode & 0o004:
        return f"{path} is readable by every user: it holds {holds} (chmod 600)"
    return None


def job_warnings(job: Job) -> List[Tuple[str, str]]:
    """(key, message) for what is wrong with `job` but does not stop it, as things stand now: the
    loader prints them, and every run puts them in its report (the daemon read its configuration
    long before, and a file's mode may have changed since)."""
    found = []
    if job.options_file:
        problem = secret_file_warning(job.options_file)
        if problem:
            found.append(("options_file", problem))
    return found


TOKEN_SECRET = "the collector token"


def _table_values(table: Dict[str, Any], name: str, keys: Dict[str, Callable[[Any], Any]], source: str,
                  problems: _Problems) -> Dict[str, Any]:
    """The table's known keys, each converted; unknown keys and bad values are problems naming NAME.KEY."""
    values: Dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            problems.error(source, f"{name}.{key}", f"unknown key (known: {', '.join(keys)})")
            continue
        try:
            values[key] = keys[key](value)
        except ValueError as exc:
            problems.error(source, f"{name}.{key}", str(exc))
    return values


def _collector(table: Any, source: str, problems: _Problems) -> Optional[CollectorSettings]:
    if not isinstance(table, dict):
        problems.error(source, "collector", "must be a table")
        return None
    values = _table_values(table, "collector", _COLLECTOR_KEYS, source, problems)
    if "url" not in table:
        problems.error(source, "collector.url", "missing")
        return None
    url = values.get("url", "")
    if url and not url.startswith(("http://", "https://")):
        problems.error(source, "collector.url", "must start with http:// or https://")
        return None
    token_file = values.get("token_file")
    note = secret_file_warning(token_file, TOKEN_SECRET) if token_file else None
    if note:
        problems.warn(source, "collector.token_file", note)
    if token_file and os.path.exists(token_file):
        try:
            read_token(token_file)
        except TokenFileError as exc:  # a warning: reports wait in the spool, backups go on
            problems.warn(source, "collector.token_file", str(exc)[len("collector.token_file "):])
    return CollectorSettings(**values) if "url" in values else None


def _encryption(table: Any, source: str, state_dir: str, problems: _Problems) -> EncryptionSettings:
    """[encryption]: recipients (age1… strings), identity_file, node_key_file (absolute), disabled."""
    node_key_file = os.path.join(state_dir, "node.key")
    if not isinstance(table, dict):
        problems.error(source, "encryption", "must be a table")
        return EncryptionSettings(node_key_file=node_key_file)
    values: Dict[str, Any] = {"node_key_file": node_key_file,
                              **_table_values(table, "encryption", _ENCRYPTION_KEYS, source, problems)}
    for number, text in enumerate(values.get("recipients", ())):
        if not re.fullmatch(r"age1[02-9ac-hj-np-z]{58}", text):
            problems.error(source, f"encryption.recipients[{number}]",
                           f"{text!r} is not an age X25519 recipient (age1… as `backup-agent key generate` prints)")
    if "recipients" in values and not values["recipients"] and not values.get("disabled"):
        problems.error(source, "encryption.recipients", "empty: name at least one recipient, or set disabled = true")
    identity = values.get("identity_file")
    note = secret_file_warning(identity, "an identity") if identity else None
    if note:
        problems.warn(source, "encryption.identity_file", note)
    return EncryptionSettings(**values)


S3_SECRET = "the S3 secret key"
_S3_KEYS = {"credentials_file": _abspath, "region": _string, "ca_file": _abspath}


def _repository(value: Any, table: Any, source: str, problems: _Problems) -> Tuple[str, Optional[S3Settings]]:
    """`repository` (an absolute path, or `s3:ENDPOINT/BUCKET[/PREFIX]`) and the `[s3]` table it needs."""
    from agent.backend.s3 import is_s3, parse_location  # the client library itself loads only when used

    if not isinstance(value, str) or not is_s3(value):
        if table is not None:
            problems.warn(source, "s3", "ignored: the repository is not an s3: location")
        try:
            return _abspath(value), None
        except ValueError as exc:
            problems.error(source, "repository", f"{exc} (or s3:https://HOST[:PORT]/BUCKET[/PREFIX])")
            return "", None
    try:
        where = parse_location(value)
    except ValueError as exc:
        problems.error(source, "repository", str(exc))
        return "", None
    if not where.secure:
        problems.advise(source, "repository", "plain http: the keys' signatures and all data cross the network "
                                            "unencrypted (use https outside a trusted network)")
    if not isinstance(table, dict):
        problems.error(source, "s3", "an s3 repository needs an [s3] table with credentials_file")
        return value, None
    values = _table_values(table, "s3", _S3_KEYS, source, problems)
    credentials = values.get("credentials_file")
    if "credentials_file" not in table:
        problems.error(source, "s3.credentials_file", "missing (an AWS shared-credentials file, mode 0600)")
    elif credentials and not os.path.exists(credentials):
        problems.warn(source, "s3.credentials_file", f"{credentials} does not exist (yet)")
    elif credentials:
        note = secret_file_warning(credentials, S3_SECRET)
        if note:
            problems.warn(source, "s3.credentials_file", note)
    return value, S3Settings(**values)


def _collect_jobs(tables: Any, source: str, defaults: Retention, seen: Dict[str, str],
                  problems: _Problems) -> List[Job]:
    jobs: List[Job] = []
    if not isinstance(tables, dict):
        problems.error(source, "jobs", "must be a table of [jobs.NAME] tables")
        return jobs
    for name, table in tables.items():
        if not JOB_NAME.fullmatch(name):
            problems.error(source, f"jobs.{name}", "a job name is 1-64 letters, digits, '.', '_' or '-', "
                                                   "starting with a letter or digit")
            continue
        if name in seen:
            problems.error(source, f"jobs.{name}", f"defined twice: here and in {seen[name]}")
            continue
        seen[name] = source
        job = _job(name, table, source, defaults, problems)
        if job is not None:
            jobs.append(job)
    return jobs


def _setting(data: Dict[str, Any], key: str, parse: Callable[[Any], _T], default: _T, source: str,
             problems: _Problems) -> _T:
    """`data[key]` through `parse`, or `default` when the key is absent or its value wrong (recorded)."""
    if key not in data:
        return default
    try:
        return parse(data[key])
    except ValueError as exc:
        problems.error(source, key, str(exc))
        return default


def _host(data: Dict[str, Any], source: str, problems: _Problems) -> str:
    """The configured host name, else the machine's; one the collector would refuse is a problem."""
    host = data.get("host") or os.uname().nodename
    if not isinstance(host, str):
        problems.error(source, "host", "must be a string")
        return os.uname().nodename
    if not HOST_NAME.fullmatch(host):  # the collector would refuse every report of this host
        # a machine name that is not one only warns: backups must not stop over it
        complain = problems.error if data.get("host") else problems.warn
        complain(source, "host", f"{host!r} is not a host name the collector accepts (letters, digits, '.', '_', "
                                 f"':' or '-'): set host = \"...\"")
    return host


def _jobs_dir(data: Dict[str, Any], source: str, problems: _Problems) -> str:
    """The job files' directory, absolute (a relative one is relative to agent.toml's directory)."""
    value = data.get("jobs_dir", "conf.d")
    if not isinstance(value, str) or not value:
        problems.error(source, "jobs_dir", "must be a path (relative to agent.toml or absolute)")
        value = "conf.d"
    return os.path.normpath(os.path.join(os.path.dirname(source), value))


def _job_files(jobs_dir: str, defaults: Retention, seen: Dict[str, str], problems: _Problems) -> List[Job]:
    """The jobs of every jobs_dir/*.toml, in file name order."""
    jobs: List[Job] = []
    for job_file in sorted(glob.glob(os.path.join(jobs_dir, "*.toml"))):
        job_data = _read_toml(job_file, problems)
        if job_data is None:
            continue
        for key in job_data:
            if key != "jobs":
                problems.error(job_file, key, "unknown key (a job file holds only [jobs.NAME] tables)")
        jobs.extend(_collect_jobs(job_data.get("jobs", {}), job_file, defaults, seen, problems))
    return jobs


def load_config(path: Optional[str] = None) -> Config:
    """Read and validate the configuration; raises ConfigError listing every problem."""
    path = os.path.abspath(path or default_config_path())
    problems = _Problems()
    data = _read_toml(path, problems)
    if data is None:
        raise ConfigError(problems.errors)

    for key in data:
        if key not in _AGENT_KEYS:
            problems.error(path, key, f"unknown key (known: {', '.join(_AGENT_KEYS)})")
    host = _host(data, path, problems)
    if "repository" not in data:
        problems.error(path, "repository", "missing")
        repository, s3 = "", None
    else:
        repository, s3 = _repository(data["repository"], data.get("s3"), path, problems)
    state_dir = _setting(data, "state_dir", _abspath, "/var/lib/backup-agent", path, problems)
    jobs_dir = _jobs_dir(data, path, problems)
    retention = _retention(data.get("retention", {}), Retention(), path, "retention", problems)
    collector = _collector(data["collector"], path, problems) if "collector" in data else None
    max_runs = _setting(data, "max_concurrent_runs", _positive, 1, path, problems)
    poll_interval = _setting(data, "poll_interval", _duration, 30.0, path, problems)
    drill_every = _setting(data, "drill_every", _duration, DEFAULT_DRILL_EVERY, path, problems)
    prune_every = _setting(data, "prune_every", _duration, DEFAULT_PRUNE_EVERY, path, problems)
    encryption = _encryption(data.get("encryption", {}), path, state_dir, problems)

    seen: Dict[str, str] = {}
    jobs = _collect_jobs(data.get("jobs", {}), path, retention, seen, problems)
    if os.path.isdir(jobs_dir):
        jobs.extend(_job_files(jobs_dir, retention, seen, problems))
    elif "jobs_dir" in data:
        problems.warn(path, "jobs_dir", f"{jobs_dir} does not exist (yet)")

    if problems.errors:
        raise ConfigError(problems.errors)
    return Config(path=path, host=host, repository=repository, state_dir=state_dir, jobs_dir=jobs_dir,
                  retention=retention, jobs=tuple(jobs), collector=collector, s3=s3,
                  max_concurrent_runs=max_runs, poll_interval=poll_interval, drill_every=drill_every,
                  prune_every=prune_every, warnings=tuple(problems.warnings), advice=tuple(problems.advice),
                  encryption=encryption)
