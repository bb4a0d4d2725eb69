"""Scratch directories of restore drills: `STATE_DIR/drill/run-*`, one per drill run, each held by a lock
(`flock` on its `.lock`) for as long as the run lives.

A drill killed with `kill -9` cannot clean up after itself. The kernel drops its lock, so the next drill
tells a leftover from a running drill, and removes it: first every process still running from it (a
throwaway database server, an install script), found by the marker they carry in their argv -- the
leftover's own path in `--datadir=` -- never by program name, then the files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import time
from typing import List

from agent.durable import make_private_dirs

LOCK = ".lock"
SOCKET_DIR = ".socket-dir"  # names a short-path directory outside the scratch dir, if one was made
_GONE_WAIT = 10.0  # seconds to wait for a killed leftover process to disappear


class Scratch:
    """One drill run's scratch directory under `state_dir`; leftovers of dead runs are removed first.
    `path` is private (0700). Use as a context manager: `close` kills what still runs from it and
    removes it, whatever happened. Raises OSError if `state_dir` cannot hold it."""

    def __init__(self, state_dir: str) -> None:
        root = os.path.join(state_dir, "drill")
        make_private_dirs(root)
        clear_leftovers(root)
        self.path = tempfile.mkdtemp(prefix="run-", dir=root)
        self._lock = os.open(os.path.join(self.path, LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def directory(self, name: str) -> str:
        """A new, empty, private directory `name` in the scratch directory."""
        path = os.path.join(self.path, name)
        os.mkdir(path, 0o700)
        return path

    def close(self) -> None:
        try:
            _remove(self.path)
        finally:
            os.close(self._lock)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clear_leftovers(root: str) -> List[str]:
    """Remove the scratch directories under `root` whose drill is gone (their lock is free), with every
    process still running from them; returns their paths."""
    removed = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith("run-") or not os.path.isdir(path) or _alive(path):
            continue
        _remove(path)
        removed.append(path)
    return removed


def _alive(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False  # made, but its lock not yet: only mkdtemp's caller knows it, and it would hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Kill what runs from `path`, then delete it (and the short socket directory it names)."""
    kill_marked(path)
    try:
        with open(os.path.join(path, SOCKET_DIR), encoding="utf-8") as handle:
            socket_dir = handle.read().strip()
    except OSError:
        socket_dir = ""
    if socket_dir.startswith(tempfile.gettempdir() + "/backup-agent-drill-"):
        shutil.rmtree(socket_dir, ignore_errors=True)
    shutil.rmtree(path, onerror=_writable_and_retry)


def _writable_and_retry(func, failed: str, _exc: object) -> None:  # shutil.rmtree's onerror signature
    # a restored 0555 directory refuses its entries' removal to a user without CAP_DAC_OVERRIDE
    parent = os.path.dirname(failed)
    try:
        os.chmod(parent, stat.S_IRWXU)
        if func is os.rmdir or func is os.unlink:
            func(failed)
        else:
            shutil.rmtree(failed, onerror=_ignore)
    except FileNotFoundError:
        pass


def _ignore(*_: object) -> None:
    pass


def marked_processes(path: str) -> List[int]:
    """Pids of the processes whose argv names something under `path` (the marker a drill's servers carry)."""
    marker = os.fsencode(path.rstrip("/") + "/")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if any(marker in arg for arg in argv):
            found.append(int(name))
    return found


def kill_marked(path: str) -> None:
    """SIGKILL every process marked with `path`, and wait (up to 10 s) until they are gone."""
    pids = marked_processes(path)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + _GONE_WAIT
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        if pids:
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a zombie is dead; its parent reaps it
