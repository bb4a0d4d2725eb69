"""`type = "mysql"`: consistent dumps of MySQL/MariaDB databases with mariadb-dump or mysqldump.

The password reaches the tool only through the options file (`--defaults-extra-file`), never argv or
the environment. A dump is good only if the tool exited 0, printed no error, and its output ends with
the completion trailer ("-- Dump completed"): a dump cut short by a lost server or a kill has none.
"""

from __future__ import annotations

import configparser
import os
from typing import List, Optional

from agent.config import Job
from agent.execute import Finished, which

TRAILER = b"-- Dump completed"
DUMP_TOOLS = ["mariadb-dump", "mysqldump"]
CLIENTS = ["mariadb", "mysql"]


class ToolMissing(Exception):
    pass


def _tool(job: Job, names: List[str]) -> str:
    if job.dump_command and names is DUMP_TOOLS:
        return job.dump_command
    found = which(names)
    if found is None:
        raise ToolMissing(f"none of {', '.join(names)} is installed")
    return found


def _defaults(options_file: Optional[str]) -> List[str]:
    # must be the first option of a MySQL client program
    return [f"--defaults-extra-file={options_file}"] if options_file else []


def dump_argv(job: Job) -> List[str]:
    return [_tool(job, DUMP_TOOLS), *_defaults(job.options_file),
            "--single-transaction",   # a consistent InnoDB snapshot without locking writers
            "--routines", "--triggers", "--events",
            "--hex-blob",             # binary columns survive any client charset
            "--quick",                # row by row: memory stays flat for big tables
            "--skip-dump-date",       # an unchanged database dumps to identical bytes: better dedup
            "--default-character-set=utf8mb4",
            "--skip-add-locks",       # LOCK TABLES t WRITE breaks the load of a table whose default draws
                                      # from a sequence (ERROR 1100); it only ever sped up MyISAM loads
            *job.extra_args,
            # the dump creates the database with its default character set and collation, so routines,
            # triggers, events and sequences restored into it get them (see dumps/retarget.py)
            "--databases", str(job.database)]


def client_argv(job: Job, options_file: Optional[str], database: Optional[str] = None,
                query: Optional[str] = None) -> List[str]:
    argv = [_tool(job, CLIENTS), *_defaults(options_file or job.options_file), "--default-character-set=utf8mb4"]
    if query is not None:
        argv += ["--batch", "--skip-column-names", "-e", query]
    if database:
        argv.append(f"--database={database}")  # as an option: a name may start with '-'
    return argv


def secrets(job: Job) -> List[str]:
    """The password in the job's options file, so that no message ever repeats it."""
    return passwords_in(job.options_file)


def passwords_in(options_file: Optional[str]) -> List[str]:
    """Every password an options file holds (any section), for masking."""
    found: List[str] = []
    if not options_file or not os.path.exists(options_file):
        return found
    parser = configparser.ConfigParser(strict=False, allow_no_value=True, interpolation=None)
    try:
        parser.read(options_file)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return found
    for section in parser.sections():
        for key in ("password", "pass"):
            value = parser.get(section, key, fallback=None)
            if value:
                found.append(value.strip().strip("'\""))
    return found


def judge(finished: Finished, tail: bytes) -> List[str]:
    errors = []
    if not finished.ok:
        errors.append(finished.describe())
    elif any(word in finished.output.lower() for word in ("error", "got errno", "lost connection")):
        errors.append(f"the dump tool reported an error: {finished.output.strip()[-2000:]}")
    if TRAILER not in tail:
        errors.append("the dump has no completion trailer: it was cut short")
    return errors


def dump_name(job: Job) -> str:
    return f"{job.database}.sql"
