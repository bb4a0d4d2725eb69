"""Database dumps: one module per engine, each with the same small set of functions.

    dump_argv(job) -> argv            the program whose stdout is the backup
    judge(finished, tail) -> errors   why a finished dump is not good (empty list: good)
    secrets(job) -> list[str]         strings to mask in anything kept from its output

`engine(job.type)` picks the module; the runner streams stdout into the repository and commits a
snapshot only when `judge` finds nothing wrong.
"""

from __future__ import annotations

from types import ModuleType


def engine(job_type: str) -> ModuleType:
    if job_type == "mysql":
        from agent.dumps import mysql

        return mysql
    if job_type == "command":
        from agent.dumps import command

        return command
    raise KeyError(job_type)
