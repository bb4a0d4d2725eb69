"""What a SNAPSHOT argument may be, in every command that takes one: a snapshot id, a unique id prefix,
`JOB:latest`, or `JOB:latest~N` (the N-th snapshot before the latest of JOB, as git's `HEAD~N`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

from agent.cli.common import CommandFailed, UsageError, unknown_job
from agent.text import plural

if TYPE_CHECKING:
    from agent.config import Config
    from agent.store import DamagedSnapshot, Repository, Snapshot

_LATEST = re.compile(r"(?P<job>.+):latest(?:~(?P<back>[0-9]+))?")


def warn_damaged(damaged: Sequence[DamagedSnapshot]) -> None:
    """Say so when snapshot documents cannot be read: JOB:latest is then the latest *readable* one, which
    may be older than the latest made."""
    from agent.cli.common import warning

    if damaged:
        warning(f"{plural(len(damaged), 'snapshot document')} cannot be read ({damaged[0].reason}"
                f"{', ...' if len(damaged) > 1 else ''}): JOB:latest means the latest readable snapshot; "
                "`backup-agent verify` names them all")


def unreadable(damaged: Sequence[DamagedSnapshot]) -> str:
    """The documents that cannot be read, for a message that says why a snapshot may be missing: `` (2
    snapshot documents cannot be read: REASON; REASON)``; empty when there are none."""
    if not damaged:
        return ""
    return f" ({plural(len(damaged), 'snapshot document')} cannot be read: " \
        f"{'; '.join(document.reason for document in damaged)})"


def resolve(config: Config, repo: Repository, ref: str) -> Snapshot:
    """The snapshot `ref` names. Raises UsageError: an unknown job (the same message as every command),
    a job without snapshots, N beyond the job's history, no or several snapshots with that id prefix;
    CommandFailed (exit 1, damage is no usage error) where the snapshot asked for may be among documents
    that cannot be read, and RepositoryError for a document named by id that cannot be read."""
    from agent.store import RepositoryError, SnapshotUnreadable

    match = _LATEST.fullmatch(ref)
    if match is None:
        try:
            return repo.find_snapshot(ref)
        except SnapshotUnreadable:
            raise
        except RepositoryError as exc:
            raise UsageError(str(exc)) from None
    job, back = match["job"], int(match["back"] or 0)
    # this host's: hosts sharing a repository name their jobs alike. Oldest first, as far as a wrong
    # clock allows (Repository.history)
    histories, damaged = repo.histories(config.host)
    found = histories.get(job, [])
    if not found and job not in {known.name for known in config.jobs}:
        raise unknown_job(config, job)
    failure = CommandFailed if damaged else UsageError
    if not found:
        raise failure(f"job {job!r} has no readable snapshot of host {config.host}{unreadable(damaged)}")
    if back >= len(found):
        raise failure(f"{ref}: job {job!r} has only {plural(len(found), 'readable snapshot')} of host "
                      f"{config.host}{unreadable(damaged)}")
    warn_damaged(damaged)
    return found[-1 - back]
