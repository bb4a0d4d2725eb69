"""The temp files of restores: their names, the lock a live restore holds on each, and the sweep that
removes what killed restores left in a directory a restore writes into.

A restore writes a file that replaces another under a temp name (`.restore-` and 13 or more hex
digits) in the same directory and renames it into place (restore.py); a dump restore does the same
beside its --target (agent.dumps.restore). A restore killed meanwhile (kill -9, a crash, a power loss)
leaves that file behind, and nothing else would ever remove it.

Two restores may write into one target at once, so a sweep must never take a temp file that a live
restore is writing. How it knows: a restore holds an flock(2) on each temp file from just after it
creates it until the file is in place, and the kernel lets go of it when the process ends, however it
ends; the sweep removes only a file it can lock itself. Two short moments are not covered by that lock:
between the creation of a temp file and its lock, and the life of a hard link made under a temp name
(linked, then renamed at once). Both change the file's ctime, so the sweep also passes over a file whose
status changed in the last SETTLE_SECONDS, and names it. Not age alone: a live restore waiting for a slow
object-storage read leaves its temp file untouched for minutes. Not a lock file per target: it would be
a file in the restored tree, and restores into nested targets would not see each other's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from typing import AbstractSet, Callable, List, NamedTuple

TEMP_PREFIX = ".restore-"
SETTLE_SECONDS = 10
_TEMP_NAME = re.compile(r"\.restore-[0-9a-f]{13,}\Z")
_LOOK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def is_temp_name(name: str) -> bool:
    """Whether `name` has the shape of a restore's temp file."""
    return _TEMP_NAME.match(name) is not None


def hold(fd: int) -> None:
    """Mark the temp file open as `fd` as being written until it is closed: a sweep passes it over.
    Blocks only while a sweep looks at it (an instant)."""
    fcntl.flock(fd, fcntl.LOCK_EX)


class Swept(NamedTuple):
    """What a sweep of one directory did: names removed (or, in a dry run, that would be), and names of
    temp files that changed in the last SETTLE_SECONDS and were left (a restore ended a moment ago, or
    one that is still making its file)."""

    removed: List[str]
    recent: List[str]

    def notes(self, where: Callable[[str], str], dry_run: bool = False) -> List[str]:
        """Warnings naming what it removed and left, each name shown as `where(name)`."""
        verb = "would be removed" if dry_run else "removed"
        return [f"{where(name)}: {verb}, a temp file left by an interrupted restore" for name in self.removed] + \
            [f"{where(name)}: a temp file of a restore that is running or was interrupted a moment ago; left "
             "as it is" for name in self.recent]


def sweep(dir_fd: int, held: AbstractSet[str] = frozenset(), dry_run: bool = False) -> Swept:
    """Remove the temp files that dead restores left in the directory open as `dir_fd` (see the module):
    regular files with a temp name, not in `held` (names the snapshot being restored holds), that no
    live restore holds and whose status has not changed for SETTLE_SECONDS. Raises OSError if the
    directory cannot be listed."""
    swept = Swept([], [])
    for name in sorted(os.listdir(dir_fd)):
        if is_temp_name(name) and name not in held:
            _sweep_one(dir_fd, name, dry_run, swept)
    return swept


def _sweep_one(dir_fd: int, name: str, dry_run: bool, swept: Swept) -> None:
    try:
        fd = os.open(name, _LOOK, dir_fd=dir_fd)
    except OSError:  # gone meanwhile; a symlink (not a restore's); one we may not open is left as it is
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return  # a live restore is writing it
            raise
        if time.time_ns() - st.st_ctime_ns < SETTLE_SECONDS * 10 ** 9:
            swept.recent.append(name)
            return
        now = os.lstat(name, dir_fd=dir_fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return  # replaced since it was opened: the next sweep looks at the new one
        if not dry_run:
            os.unlink(name, dir_fd=dir_fd)
        swept.removed.append(name)
    finally:
        os.close(fd)
