"""`type = "command"`: any program whose stdout is the backup (pg_dump, ...), judged by exit status."""

from __future__ import annotations

from typing import List

from agent.config import Job
from agent.execute import Finished


def dump_argv(job: Job) -> List[str]:
    return list(job.argv)


def secrets(job: Job) -> List[str]:
    return []


def judge(finished: Finished, tail: bytes) -> List[str]:
    return [] if finished.ok else [finished.describe()]


def dump_name(job: Job) -> str:
    return "stdout"
