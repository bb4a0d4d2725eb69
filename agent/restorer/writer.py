"""How a restore writes one entry of its plan into the target (Writer), and what it counts doing so
(RestoreResult): a new file under its name or a temp name renamed into place, its content checked blob by
blob, owner, extended attributes, mode and times last (see restore.py for why in this order)."""

from __future__ import annotations

import itertools
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from agent.backend import BackendError
from agent.durable import remove_quietly
from agent.leftovers import TEMP_PREFIX, hold
from agent.restorer.plan import CREATE, SAME, Step, show
from agent.restorer.target import Parts, Target
from agent.restorer.xattrs import apply_xattrs, reach
from agent.store import DamagedBlobError, Repository, RepositoryError
from agent.store.manifest import Entry

Made = TypeVar("Made")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RestoreResult:
    """What a restore did (or, with dry_run, would do). `conflicts` is non-empty only when `never`
    refused: then nothing was written. Paths are relative to the target, '/'-separated."""

    created: List[str] = field(default_factory=list)
    replaced: List[str] = field(default_factory=list)
    deleted: List[str] = field(default_factory=list)
    unchanged: int = 0
    conflicts: List[str] = field(default_factory=list)
    files: int = 0  # files written
    bytes: int = 0  # bytes written
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


class Writer:
    """Writes the plan's steps into the target, one at a time, counting into `result`."""

    def __init__(self, repo: Repository, dest: Target, always: bool, owner: bool, result: RestoreResult) -> None:
        self.repo = repo
        self.dest = dest
        self.always = always
        self.owner = owner
        self.result = result
        self._prefix, self._pid = secrets.token_hex(6), os.getpid()
        self._count = itertools.count()
        # files whose content in the target is the snapshot's (restored now or found the same): the
        # later names of their inodes are linked to them, never to a file that failed to restore
        self.good: Dict[str, Parts] = {}
        self.unreadable: Dict[bytes, str] = {}  # packs the storage would not give (shared by a restore's writers)

    def step(self, step: Step) -> bool:
        """Carry out one step; True for a directory (its metadata is applied at the end)."""
        parts, entry, action = step
        result = self.result
        if entry.type == "dir":
            self.dest.dir_fd(parts)
            if action == SAME:
                result.unchanged += 1
            else:
                (result.created if action == CREATE else result.replaced).append(show(parts))
            return True
        if not parts or entry.type not in ("file", "symlink"):
            result.errors.append(f"{entry.path}: unknown entry type {entry.type!r}")
            return False
        parent = self.dest.dir_fd(parts[:-1])
        if action == SAME and not self.always:
            result.unchanged += 1
            os.utime(parts[-1], ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)
        elif entry.type == "file" and entry.hardlink in self.good:
            self._link(parts, self.good[entry.hardlink], action)
        elif entry.type == "file":
            self._file(parent, parts[-1], entry, action)
            result.files += 1
            result.bytes += entry.size
        else:
            self._symlink(parent, parts[-1], entry, action)
        if action != SAME or self.always:
            (result.created if action == CREATE else result.replaced).append(show(parts))
        if entry.type == "file" and not entry.hardlink:
            self.good[entry.path] = parts
        return False

    def finish_dir(self, step: Step) -> None:
        entry = step.entry
        fd = self.dest.dir_fd(step.parts)
        self._metadata(fd, entry, show(step.parts), existed=step.action == SAME)

    def _metadata(self, fd: int, entry: Entry, path: str, existed: bool = False) -> None:
        """Owner (as root), extended attributes, mode, then times, on an open file or directory. In this
        order: a chown clears set-id bits and file capabilities (security.capability), and user.*
        attributes need write permission that the recorded mode may not give."""
        if self.owner:
            os.fchown(fd, entry.uid, entry.gid)
        if entry.xattrs or existed:
            apply_xattrs(fd, entry.xattrs, path, self.result.warnings, clear=existed)
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _file(self, parent: int, name: str, entry: Entry, action: str) -> None:
        if self.unreadable and entry.size:
            for chunk in entry.chunks:
                why = self.unreadable.get(self.repo.read_order(chunk)[0])
                if why is not None:
                    raise Unreadable(why)
        made, fd = self._new(parent, name, action, lambda new: os.open(new, _NEW_FILE, 0o600, dir_fd=parent))
        try:
            if made != name:
                hold(fd)  # until it is in place: another restore's sweep passes it over (leftovers.py)
            self._fill(fd, entry, parent, made)
            if made != name:
                self._into_place(parent, made, name, action)
        except BaseException:
            if made != name:  # a temp name is this restore's alone (gone already once renamed into place)
                remove_quietly(made, dir_fd=parent)
            raise
        finally:
            os.close(fd)

    def _fill(self, fd: int, entry: Entry, parent: int, name: str) -> None:
        """Write the entry's content and metadata into the new file `name` open as `fd`; on any error the
        file is removed."""
        try:
            for chunk in entry.chunks if entry.size else ():  # an empty file needs no blob
                try:
                    view = memoryview(self.repo.read_blob(chunk))
                except DamagedBlobError:  # this blob only: the pack's others may be good
                    raise
                except (BackendError, RepositoryError) as exc:
                    self.unreadable.setdefault(self.repo.read_order(chunk)[0], str(exc))
                    raise
                while view:
                    view = view[os.write(fd, view):]
            self._metadata(fd, entry, entry.path)
        except BaseException:
            remove_quietly(name, dir_fd=parent)
            raise

    def _link(self, parts: Parts, first: Parts, action: str) -> None:
        """Another name (`parts`) of an inode already restored (at `first`): a hard link, made under its
        name where nothing was, else put in place by a rename."""
        # Two directories at once: the target's descriptor cache may close one while opening the other
        # (a later name comes long after its first name's directory was used), so the first is duplicated.
        source = os.dup(self.dest.dir_fd(first[:-1]))
        try:
            parent, name = self.dest.dir_fd(parts[:-1]), parts[-1]
            made, _ = self._new(parent, name, action, lambda new: os.link(
                first[-1], new, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False))
        finally:
            os.close(source)
        if made != name:
            self._into_place(parent, made, name, action)
            # rename(2) does nothing when both names are links to one inode (another restore into the same
            # target linked this name a moment ago): the temp name would stay
            remove_quietly(made, dir_fd=parent)

    def _new(self, parent: int, name: str, action: str, make: Callable[[str], Made]) -> Tuple[str, Made]:
        """(the name it got, what `make(name)` returned) for a new entry in directory `parent`: under `name`
        itself where the plan found nothing there (see the module), else under a temp name nothing in the
        target has (a killed restore's leftover or a planted file is passed over), to be renamed into place."""
        if action == CREATE:
            try:
                return name, make(name)
            except FileExistsError:  # something came since the plan looked: replaced by a rename
                pass
        while True:
            tmp = self._temp_name()
            try:
                return tmp, make(tmp)
            except FileExistsError:
                continue
            except BaseException:
                # an interrupt is raised as the call that made it returns: the temp name is ours alone
                remove_quietly(tmp, dir_fd=parent)
                raise

    def _temp_name(self) -> str:
        """A name no other restore uses: one random part a restore, a counter a file (a random part a
        file cost a getrandom call each); a writer process forked with a copy of this one draws its own."""
        if self._pid != os.getpid():
            self._prefix, self._pid = secrets.token_hex(6), os.getpid()
        return f"{TEMP_PREFIX}{self._prefix}{next(self._count):x}"

    def _into_place(self, parent: int, tmp: str, name: str, action: str) -> None:
        try:
            if action != CREATE:  # nothing was there when the plan looked: nothing to clear
                clear_directory(self.dest, parent, name)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            remove_quietly(tmp, dir_fd=parent)
            raise

    def _symlink(self, parent: int, name: str, entry: Entry, action: str) -> None:
        """A symlink with its owner, attributes and times, made under its name where nothing was, else
        under a temp name and renamed into place (what is there is replaced at once, never missing)."""
        made, _ = self._new(parent, name, action, lambda new: os.symlink(entry.target, new, dir_fd=parent))
        try:
            if self.owner:
                os.chown(made, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
            if entry.xattrs:
                apply_xattrs(reach(parent, made), entry.xattrs, entry.path, self.result.warnings)
            os.utime(made, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)
        except BaseException:
            remove_quietly(made, dir_fd=parent)
            raise
        if made != name:
            self._into_place(parent, made, name, action)


class Unreadable(Exception):
    """A file needs a pack the storage would not give for an earlier file: it is not asked for again."""


def clear_directory(dest: Target, parent: int, name: str) -> None:
    """A directory where a file goes is removed (the plan listed it as replaced); rename cannot."""
    try:
        existing: Optional[os.stat_result] = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        dest.remove(parent, name)
