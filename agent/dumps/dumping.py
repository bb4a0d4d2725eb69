"""The mechanics shared by every dump engine: run the tool, stream its stdout into the repository, judge
the finished dump, commit a snapshot only if it is good."""

from __future__ import annotations

import os
import secrets as random_names
import threading
from typing import Dict, Optional, Tuple

from agent.config import Job
from agent.dumps import engine
from agent.durable import make_private_dirs, remove_quietly
from agent.execute import Finished, StreamingCommand, mask
from agent.progress import Progress
from agent.snapshot.fs import TreeResult
from agent.snapshot.stream import commit_stream, store_stream
from agent.store import Repository
from agent.text import in_words


def backup_dump(repo: Repository, job: Job, stop: Optional[threading.Event], names: Dict[str, str],
                progress: Optional[Progress] = None) -> TreeResult:
    module = engine(job.type)
    secret_values = module.secrets(job)
    try:
        argv = module.dump_argv(job)
    except Exception as exc:  # the tool is missing: a clear failed run
        return TreeResult(None, False, 0, 0, 0, (str(exc),), ())
    try:
        with StreamingCommand(argv, job.timeout, secret_values, stop) as command:
            stored = store_stream(repo, command.stdout, stop, progress)
            finished = command.finish()
    except OSError as exc:  # the tool could not start (a full repository raises StoreFailed: see the runner)
        return TreeResult(None, False, 0, 0, 0, (mask(in_words(exc), secret_values),), ())
    errors = module.judge(finished, stored.tail)
    if not errors and stored.size == 0:
        errors = ["the dump is empty"]
    if errors:
        # no snapshot; what it read and stored is reported, and the runner removes what it stored at once
        return TreeResult(None, False, 0, stored.size, stored.writer.new_bytes,
                          tuple(mask(e, secret_values) for e in errors), ())
    snapshot, changed = commit_stream(repo, stored, module.dump_name(job), source=job.target, **names)
    return TreeResult(snapshot, changed, 1, stored.size, stored.writer.new_bytes, (), tool_warnings(finished))


_WARNING_LINES = 20
_WARNING_WIDTH = 500


def tool_warnings(finished: Finished) -> Tuple[str, ...]:
    """What a tool that succeeded printed on stderr: its warnings (a dump tool says nothing when all is
    well), for the run's report. The last lines, each cut to a readable width; already masked."""
    name = os.path.basename(finished.argv[0]) if finished.argv else "command"
    lines = [line.strip() for line in finished.output.splitlines() if line.strip()]
    kept = [f"{name}: {line[:_WARNING_WIDTH]}" + ("…" if len(line) > _WARNING_WIDTH else "")
            for line in lines[-_WARNING_LINES:]]
    if len(lines) > _WARNING_LINES:
        kept.insert(0, f"{name}: {len(lines) - _WARNING_LINES} earlier lines of output not kept")
    return tuple(kept)


def backup_sqlite(repo: Repository, job: Job, state_dir: str, stop: Optional[threading.Event],
                  names: Dict[str, str], progress: Optional[Progress] = None) -> TreeResult:
    """A consistent copy through SQLite's online backup API, then stored like a dump."""
    import sqlite3  # only agents with a sqlite job pay for the module
    if not os.path.exists(str(job.path)):
        return TreeResult(None, False, 0, 0, 0, (f"{job.path} does not exist",), ())
    tmp_dir = os.path.join(state_dir, "tmp")
    make_private_dirs(tmp_dir)
    copy = os.path.join(tmp_dir, f"sqlite-{random_names.token_hex(6)}.db")
    try:
        os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        source = sqlite3.connect(f"file:{job.path}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        with open(copy, "rb") as handle:
            stored = store_stream(repo, handle, stop, progress)
    except sqlite3.Error as exc:
        return TreeResult(None, False, 0, 0, 0, (f"sqlite backup of {job.path} failed: {exc}",), ())
    finally:
        remove_quietly(copy)
    snapshot, changed = commit_stream(repo, stored, os.path.basename(str(job.path)), source=str(job.path),
                                      **names)
    return TreeResult(snapshot, changed, 1, stored.size, stored.writer.new_bytes, (), ())
