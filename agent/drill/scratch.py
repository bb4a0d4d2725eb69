"""Scratch directories of restore drills: `STATE_DIR/drill/run-*`, one per drill run, each held by a lock
(`flock` on its `.lock`) for as long as the run lives.

A drill killed with `kill -9` cannot clean up after itself. The kernel drops its lock, so the next drill
tells a leftover from a running drill, and removes it: first every process still running from it (a
throwaway database server, an install script), found by the marker they carry in their argv -- the
leftover's own path in `--datadir=` -- never by program name, then the files.

Clean-up never follows a link it did not make: `STATE_DIR/drill` that is a symlink is refused (a drill
there would list and delete in whatever it points to), and everything is removed entry by entry relative
to directory descriptors (agent.restorer.target.remove_tree), a link removed, never followed. A directory
restored without owner permissions (0000, 0500) is opened up first: the scratch is this user's own. A
scratch directory that cannot be removed (another user's leftover) is a warning, never the failure of a
drill: the drill runs in a new one.

Two drills may run at once (the daemon's and one from the command line), and each clears leftovers when
it starts, so a new scratch directory must never look like a leftover, at no instant. It is made as
`new-*`, its lock taken, and only then renamed to `run-*`: a `run-*` whose lock is free is a dead drill's,
exactly, and its clean-up never waits. (Treating every young lockless directory as live instead would
leave a killed drill's scratch -- gigabytes, a server still running -- to a later drill, and rests on the
clock.) A `new-*` is left alone until it is a minute old and its lock is free: only a drill killed between
two system calls leaves one, with at most an empty lock file in it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import signal
import stat
import tempfile
import time
from typing import Callable, List, NamedTuple, Tuple

from agent.durable import make_private_dirs
from agent.restorer.target import remove_tree

LOCK = ".lock"
RUN = "run-"  # a drill's scratch directory, its lock held from before it had this name
STAGING = "new-"  # a scratch directory being made, not locked yet
_STAGING_AGE = 60.0  # seconds after which a `new-*` with a free lock is a killed drill's
SOCKET_DIR = ".socket-dir"  # names a short-path directory outside the scratch dir, if one was made
SOCKET_PREFIX = "backup-agent-drill-"  # such a directory's name in the temp directory
_GONE_WAIT = 10.0  # seconds to wait for a killed leftover process to disappear
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKED = "a symbolic link, not followed: drills keep their scratch directories in a directory of their own " \
    "(remove the link)"


class Cleared(NamedTuple):
    """What a clean-up of leftovers did: the scratch directories removed, and what it could not remove
    (one sentence each, naming the directory)."""

    removed: Tuple[str, ...] = ()
    problems: Tuple[str, ...] = ()


class _Run(NamedTuple):
    """A scratch directory just made: its name in `STATE_DIR/drill`, it open, and its lock, held."""

    name: str
    fd: int
    lock: int


class Scratch:
    """One drill run's scratch directory under `state_dir`; leftovers of dead runs are removed first.
    `path` is private (0700). Use as a context manager: `close` kills what still runs from it and
    removes it, whatever happened. `warnings`: leftovers (and, after `close`, this run's own directory)
    that could not be removed. Raises OSError if `state_dir` cannot hold it (`STATE_DIR/drill` a link)."""

    def __init__(self, state_dir: str) -> None:
        root = os.path.join(state_dir, "drill")
        make_private_dirs(root)
        self._root = open_root(root)
        try:
            self.warnings: List[str] = list(_clear(self._root, root).problems)
            run = _new_run(self._root)
        except BaseException:
            os.close(self._root)
            raise
        self.name, self._fd, self._lock = run.name, run.fd, run.lock
        self.path = os.path.join(root, self.name)

    def directory(self, name: str) -> str:
        """A new, empty, private directory `name` in the scratch directory."""
        os.mkdir(name, 0o700, dir_fd=self._fd)
        return os.path.join(self.path, name)

    def close(self) -> None:
        try:
            _remove(self._root, self.name, self.path)
        except OSError as exc:
            self.warnings.append(f"{self.path}: this drill's scratch directory could not be removed "
                                 f"({exc.strerror or exc}); the next drill tries again")
        finally:
            for fd in (self._lock, self._fd, self._root):
                os.close(fd)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_root(root: str) -> int:
    """`STATE_DIR/drill` opened as a directory, never through a symlink; OSError naming it if it is one."""
    try:
        return os.open(root, _DIR)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP) and os.path.islink(root):
            raise OSError(errno.ELOOP, _LINKED, root) from None
        raise


def _new_run(root: int) -> _Run:
    """A new private directory `run-*` in the open directory `root`, its lock held: made as `new-*` and
    renamed once locked (module docstring). Raises OSError, leaving nothing behind, if it cannot be made."""
    staging = _new_dir(root, STAGING)
    fd = lock = -1
    try:
        fd = os.open(staging, _DIR, dir_fd=root)
        lock = os.open(LOCK, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _Run(_rename_to_run(root, staging), fd, lock)
    except BaseException:
        for opened in (lock, fd):
            if opened >= 0:
                os.close(opened)
        try:
            remove_tree(root, staging)
        except OSError:
            pass  # a few bytes the next drill removes
        raise


def _new_dir(root: int, prefix: str) -> str:
    """A new private directory `prefix` + hex digits in the open directory `root` (as mkdtemp)."""
    return _free_name(prefix, lambda name: os.mkdir(name, 0o700, dir_fd=root), (errno.EEXIST,))


def _rename_to_run(root: int, staging: str) -> str:
    """`staging` renamed to a free `run-*` name in the open directory `root`; that name."""
    # never onto a live drill's: it is not empty (its lock); an empty `run-*` is nobody's
    return _free_name(RUN, lambda name: os.rename(staging, name, src_dir_fd=root, dst_dir_fd=root),
                      (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR))


def _free_name(prefix: str, make: Callable[[str], None], taken: Tuple[int, ...]) -> str:
    """The first name `prefix` + hex digits that `make(name)` succeeds with; an OSError whose errno is in
    `taken` (the name is in use) tries another, any other is raised."""
    while True:
        name = f"{prefix}{secrets.token_hex(4)}"
        try:
            make(name)
            return name
        except OSError as exc:
            if exc.errno not in taken:
                raise


def clear_leftovers(root: str) -> Cleared:
    """Remove the scratch directories under `root` (`STATE_DIR/drill`) whose drill is gone (their lock is
    free), with every process still running from them. Never raises: what it cannot do is a problem."""
    try:
        fd = open_root(root)
    except FileNotFoundError:
        return Cleared()
    except OSError as exc:
        return Cleared(problems=(f"{root}: {exc.strerror or exc}",))
    try:
        return _clear(fd, root)
    finally:
        os.close(fd)


def _clear(root_fd: int, root: str) -> Cleared:
    removed, problems = [], []
    try:
        names = os.listdir(root_fd)
    except OSError as exc:
        return Cleared(problems=(f"{root}: cannot be listed ({exc.strerror or exc})",))
    for name in sorted(names):
        path = os.path.join(root, name)
        try:
            if not name.startswith((RUN, STAGING)) or not _dead(root_fd, name):
                continue
            _remove(root_fd, name, path)
        except FileNotFoundError:  # another drill removed it meanwhile
            continue
        except OSError as exc:
            problems.append(f"{path}: the scratch directory of an earlier drill cannot be removed "
                            f"({exc.strerror or exc}); it is left for someone to remove")
            continue
        removed.append(path)
    return Cleared(tuple(removed), tuple(problems))


def _dead(root: int, name: str) -> bool:
    """Whether `name` (`run-*` or `new-*` in the open directory `root`) is a scratch directory of a drill
    that is gone. Raises OSError as _alive."""
    found = os.lstat(name, dir_fd=root)
    if not stat.S_ISDIR(found.st_mode):
        return False  # a link named run-* is no scratch directory of a drill: left alone, never followed
    # a young `new-*` may be a drill's between making it and locking it; a clock set back only delays this
    if name.startswith(STAGING) and not time.time() - found.st_mtime > _STAGING_AGE:
        return False
    return not _alive(root, name)


def _alive(root: int, name: str) -> bool:
    """Whether the drill of scratch directory `name` runs (holds its lock). Raises OSError if the
    directory cannot be opened (another user's): then it is not this process's to remove either."""
    run = os.open(name, _DIR, dir_fd=root)
    try:
        fd = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=run)
    except OSError:
        return False  # no drill's: a drill's `run-*` has its lock from the start, an old `new-*` is dead
    finally:
        os.close(run)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)


def _remove(root: int, name: str, path: str) -> None:
    """Kill what runs from `path` (`name` in the open directory `root`), then delete it, and the short
    socket directory it names."""
    kill_marked(path)
    _remove_socket_dir(root, name)
    remove_tree(root, name)


def _remove_socket_dir(root: int, name: str) -> None:
    """The socket directory a throwaway server made in the temp directory (server.py), if `name` records
    one: removed if it is still a directory of this user's there (not a link, nothing elsewhere)."""
    try:
        run = os.open(name, _DIR, dir_fd=root)
        try:
            fd = os.open(SOCKET_DIR, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=run)
        finally:
            os.close(run)
        with open(fd, encoding="utf-8") as handle:
            recorded = handle.read().strip()
    except OSError:
        return
    base = os.path.basename(recorded)
    if os.path.dirname(recorded) != tempfile.gettempdir() or not base.startswith(SOCKET_PREFIX):
        return
    temp = os.open(tempfile.gettempdir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = os.lstat(base, dir_fd=temp)
        if stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid():
            remove_tree(temp, base)
    except OSError:
        pass  # gone already, or not ours to remove: a few bytes in the temp directory
    finally:
        os.close(temp)


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
