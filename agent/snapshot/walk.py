"""Find what a tree holds: a full walk, or (change-triggered runs) the previous snapshot's entries with only
the paths the watcher named re-examined. Both work relative to directory descriptors: every open, stat,
readlink and listing names one entry of an open directory, so a tree deeper than PATH_MAX backs up like
any other, and a directory swapped for a symlink is never followed.

The tree may change while it is walked; nothing that does fails the run, hangs it, or is recorded as
something it no longer is:
- an entry that vanishes after its directory was listed is left out, with one warning (a directory
  removed while it was listed is dropped with whatever was found in it);
- an entry of another type than listed (a file replaced by a directory, a directory by a symlink...) is
  examined again as what it is now (a few times at most);
- a file that changes while it is read: see agent.snapshot.reader.
What appears after its directory was listed belongs to the next snapshot (the watcher's events, or the
next full scan, bring it in).

The walk is the hot path of a no-change backup: for an unchanged file it costs a stat, a dict lookup, a
comparison with the cached stat and its number in the cache stored (see `_scan`).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

from agent.progress import Progress
from agent.snapshot.cache import RECORD, STAT_KEY, UNTRUSTED, FilesCache, stat_key
from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules
from agent.snapshot.reader import DIR_FLAGS, Aborted, FileReader, TypeChanged, read_link, xattrs_at, xattrs_of
from agent.snapshot.records import TreeRecords
from agent.store.manifest import Entry, Xattrs

# A file modified this close to the scan may still be changing within the same timestamp tick ("racy
# git"): its stat is not trusted next time, so the content is checked again.
_RACY_NS = 2_000_000_000
_RETYPES = 3  # how often an entry that keeps changing type is examined again


class NeedsFullWalk(Exception):
    """An incremental run met something only a full walk can describe (hard links)."""


class _Stat(NamedTuple):
    """A previous snapshot's entry in the shape of a stat result."""

    st_mode: int
    st_uid: int
    st_gid: int
    st_mtime_ns: int
    st_size: int


def open_root(root: str) -> int:
    """The job's directory, opened once; a symlink there is followed (the job's path is resolved once, at
    the top only: `current -> releases/r42` backs up r42). Raises NotADirectoryError, OSError."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, f"{root} is not a directory") from None


class TreeWalk:
    def __init__(self, root: str, rules: IgnoreRules, tree: TreeRecords, reader: FileReader, cached: FilesCache,
                 rules_unchanged: bool, stop: threading.Event, progress: Optional[Progress] = None) -> None:
        self.root, self.rules, self.tree, self.reader, self.cached = root, rules, tree, reader, cached
        self.progress = progress
        self.rules_unchanged = rules_unchanged
        self.stop = stop
        self.errors: List[str] = []
        self.warnings: List[str] = []
        self.racy_before_ns = time.time_ns() - _RACY_NS
        self.incremental = False

    # --- full walk ----------------------------------------------------------------------------------

    def walk(self) -> None:
        fd = open_root(self.root)
        try:
            self.tree.add(".", "dir", os.fstat(fd), xattrs=xattrs_of(fd))
            self._walk_from(fd, "", self._scan(fd, ""))
        finally:
            os.close(fd)

    def _walk_from(self, top_fd: int, top_rel: str, subdirs: List[str]) -> None:
        """Enter `subdirs` of the open directory `top_fd` and everything below them, depth first: the
        descriptors held are those of the current directory's ancestors (not closed: `top_fd`)."""
        stack: List[Tuple[int, str, List[str]]] = [(top_fd, top_rel, subdirs)]
        try:
            while stack:
                if self.stop.is_set():
                    raise Aborted()
                fd, rel_dir, pending = stack[-1]
                if not pending:
                    stack.pop()
                    if fd != top_fd:
                        os.close(fd)
                    continue
                name = pending.pop()
                entered = self._enter(fd, name, f"{rel_dir}/{name}" if rel_dir else name, pending)
                if entered is not None:
                    stack.append(entered)
        finally:
            for fd, _, _ in stack:
                if fd != top_fd:
                    os.close(fd)

    def _enter(self, parent: int, name: str, rel: str, siblings: List[str]
               ) -> Optional[Tuple[int, str, List[str]]]:
        """Open, list and record the directory `name`; its descriptor, path and subdirectories to enter."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            self._vanished(rel)
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                self._again(parent, name, rel, siblings, _RETYPES)  # no longer a directory
                return None
            self.errors.append(f"{rel}: cannot list directory: {exc.strerror}")
            self._record_unlisted(parent, name, rel)
            return None
        try:
            subdirs = self._scan(fd, rel)
            st = os.fstat(fd)
            if st.st_nlink == 0:  # removed while it was listed
                self.tree.forget(rel)
                self._vanished(rel)
                os.close(fd)
                return None
            self.tree.add(rel, "dir", st, xattrs=self._xattrs_of(fd, rel))
        except BaseException:
            os.close(fd)
            raise
        return fd, rel, subdirs

    def _scan(self, fd: int, rel_dir: str) -> List[str]:
        """Record every entry of the open directory but its subdirectories, which are returned to enter."""
        tree, cached, excludes = self.tree, self.cached, self.rules.excludes
        index, others = cached.index, cached.others
        if not self.rules_unchanged:
            index, others = {}, set()  # "included last time" says nothing under other rules
        kept, cache_records, lookup, pack_key = tree.kept, cached.records, cached.lookup, STAT_KEY.pack
        prefix = rel_dir + "/" if rel_dir else ""
        try:
            with os.scandir(fd) as listing:
                children = list(listing)
        except OSError as exc:
            self.errors.append(f"{rel_dir or '.'}: cannot list directory: {exc.strerror}")
            return []
        subdirs: List[str] = []
        for child in children:
            name = child.name
            rel = prefix + name
            try:
                if child.is_dir(follow_symlinks=False):  # the listing's d_type: no system call
                    if rel in others or not excludes(rel, True):
                        subdirs.append(name)
                    else:
                        self._pruned(fd, name, rel, subdirs)
                    continue
                st = child.stat(follow_symlinks=False)  # fstatat on the listed directory
            except FileNotFoundError:
                self._vanished(rel)
                continue
            except OSError as exc:
                self.errors.append(f"{rel}: cannot stat: {exc.strerror}")
                continue
            if stat.S_ISREG(st.st_mode):
                number = index.get(rel)
                if number is not None or not excludes(rel, False):
                    if number is None:
                        number = lookup(rel)
                    # cached.key(number) == stat_key(st), inline: this line runs for every file
                    at = (number or 0) * RECORD
                    if number is not None and cache_records[at:at + 32] == \
                            pack_key(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
                        kept[rel] = number
                        if st.st_nlink > 1:
                            self._link(st, rel)
                    else:
                        self._file(fd, name, rel, st, number, subdirs, _RETYPES)
            elif stat.S_ISLNK(st.st_mode):
                if rel in others or not excludes(rel, False):
                    self._symlink(fd, name, rel, st, subdirs, _RETYPES)
            else:
                self._entry(fd, name, rel, st, subdirs, _RETYPES)
        if self.progress is not None:  # once per directory: nothing added to the per-file loop
            self.progress.advance(files=len(children))
        return subdirs

    # --- one entry ----------------------------------------------------------------------------------

    def _entry(self, fd: int, name: str, rel: str, st: os.stat_result, subdirs: List[str], tries: int) -> None:
        """Record the entry `name` of the open directory `fd` as `st` says it is; a directory to enter is
        appended to `subdirs`."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if not self.rules.excludes(rel, True):
                subdirs.append(name)
            else:
                self._pruned(fd, name, rel, subdirs)
        elif self.rules.excludes(rel, False):
            return
        elif stat.S_ISREG(mode):
            number = self.cached.lookup(rel)
            if number is not None and self.cached.key(number) == stat_key(st):
                self.tree.kept[rel] = number
                if st.st_nlink > 1:
                    self._link(st, rel)
            else:
                self._file(fd, name, rel, st, number, subdirs, tries)
        elif stat.S_ISLNK(mode):
            self._symlink(fd, name, rel, st, subdirs, tries)
        else:
            self.warnings.append(f"{rel}: skipped special file ({_kind(mode)})")

    def _again(self, fd: int, name: str, rel: str, subdirs: List[str], tries: int) -> None:
        """`name` changed type since it was listed: examine it as what it is now."""
        if tries <= 0:
            self.warnings.append(f"{rel}: kept changing type while being read; not in this snapshot")
            return
        st = self._lstat(fd, name, rel, self._vanished)
        if st is not None:
            self._entry(fd, name, rel, st, subdirs, tries - 1)

    def _lstat(self, fd: int, name: str, rel: str, gone: Callable[[str], None]) -> Optional[os.stat_result]:
        """`name`'s lstat, or None once `gone(rel)` was called (it vanished) or the error reported."""
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            gone(rel)
        except OSError as exc:
            self.errors.append(f"{rel}: cannot stat: {exc.strerror}")
        return None

    def _file(self, fd: int, name: str, rel: str, st: os.stat_result, number: Optional[int],
              subdirs: List[str], tries: int) -> None:
        self.tree.dirty = True
        try:
            read = self.reader.read(fd, name, number, self.warnings.append, rel)
        except TypeChanged:
            self._again(fd, name, rel, subdirs, tries)
            return
        except FileNotFoundError:
            self._vanished(rel)
            return
        except OSError as exc:
            self.errors.append(f"{rel}: cannot read: {exc.strerror or exc}")
            return
        if self.progress is not None:
            self.progress.advance(bytes=read.size)
        opened = read.opened
        trusted = read.settled and max(opened.st_mtime_ns, opened.st_ctime_ns) < self.racy_before_ns
        self.tree.add(rel, "file", opened, read.chunks, stat_key(opened) if trusted else UNTRUSTED, read.digest,
                      read.xattrs, size=read.size)
        if opened.st_nlink > 1:
            self._link(opened, rel)

    def _symlink(self, fd: int, name: str, rel: str, st: os.stat_result, subdirs: List[str], tries: int) -> None:
        try:
            target = read_link(fd, name)
            xattrs = xattrs_at(fd, name)
        except FileNotFoundError:
            self._vanished(rel)
            return
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink any more
                self._again(fd, name, rel, subdirs, tries)
            else:
                self.errors.append(f"{rel}: cannot read link: {exc.strerror}")
            return
        self.tree.add(rel, "symlink", st, target, xattrs=xattrs)

    def _pruned(self, fd: int, name: str, rel: str, subdirs: List[str]) -> None:
        """An excluded directory: recorded empty (a restored Tomcat gets its logs/, temp/ and work/ back,
        with their mode and owner), never entered."""
        if not self.rules.keep_excluded_dirs:
            return
        st = self._lstat(fd, name, rel, self._vanished)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self._entry(fd, name, rel, st, subdirs, _RETYPES - 1)
            return
        try:
            xattrs = xattrs_at(fd, name)
        except OSError as exc:
            self.errors.append(f"{rel}: cannot read extended attributes: {exc.strerror}")
            return
        self.tree.add(rel, "dir", st, xattrs=xattrs)
        self.tree.pruned.add(rel)

    def _record_unlisted(self, fd: int, name: str, rel: str) -> None:
        """A directory that cannot be opened (permissions): its own entry is still kept."""
        try:
            self.tree.add(rel, "dir", os.stat(name, dir_fd=fd, follow_symlinks=False), xattrs=xattrs_at(fd, name))
        except OSError:
            pass  # the error is already reported

    def _xattrs_of(self, fd: int, rel: str) -> Xattrs:
        try:
            return xattrs_of(fd)
        except OSError as exc:
            self.errors.append(f"{rel}: cannot read extended attributes: {exc.strerror}")
            return ()

    def _vanished(self, rel: str) -> None:
        self.warnings.append(f"{rel}: vanished while the backup ran; not in this snapshot")

    def _link(self, st: os.stat_result, rel: str) -> None:
        if self.incremental:
            raise NeedsFullWalk()
        self.tree.link(st, rel)

    # --- incremental --------------------------------------------------------------------------------

    def apply_changes(self, previous: List[Entry], changes: ChangeSet) -> None:
        """Start from the previous snapshot's entries and re-examine only what `changes` names. Raises
        NeedsFullWalk if the previous snapshot has hard links or a re-examined file has several names."""
        self.incremental = True
        tree, cached = self.tree, self.cached
        for entry in previous:
            if entry.hardlink:
                raise NeedsFullWalk()
            number = cached.lookup(entry.path) if entry.type == "file" else None
            if number is not None:
                key = cached.key(number)
                if key != UNTRUSTED:
                    # the cache is at least as recent as the snapshot (which may predate a touch that
                    # changed nothing)
                    tree.kept[entry.path] = number
                    continue
                tree.add(entry.path, "file", _stat_of(entry), cached.chunks(number), key, cached.digest(number),
                         entry.xattrs)
                continue
            extra = b"".join(entry.chunks) if entry.type == "file" else os.fsencode(entry.target)
            tree.add(entry.path, entry.type, _stat_of(entry), extra, UNTRUSTED if entry.type == "file" else b"",
                     xattrs=entry.xattrs)
            if entry.type == "dir" and entry.path != "." and entry.path not in cached.others:
                tree.pruned.add(entry.path)
        root_fd = open_root(self.root)
        try:
            for path in sorted(changes.paths | changes.trees):
                if self.stop.is_set():
                    raise Aborted()
                rel = self._relative(path)
                if rel is not None:
                    self._reexamine(root_fd, rel, whole=path in changes.trees)
        finally:
            os.close(root_fd)

    def _relative(self, path: str) -> Optional[str]:
        top = self.root.rstrip("/")
        if path == self.root or path == top:
            return "."
        if not path.startswith(top + "/"):
            return None
        rel = path[len(top) + 1:]
        if self.rules.excludes_any_parent(rel):
            return None
        return rel

    def _reexamine(self, root_fd: int, rel: str, whole: bool) -> None:
        if rel == ".":
            self._reexamine_root(root_fd, whole)
            return
        parts = rel.split("/")
        # A path whose parent directory is not in the snapshot came with a directory the events did not
        # describe (created and filled between two reads of the queue): take the whole missing subtree.
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) not in self.tree.records:  # directories are always records
                parts, whole = parts[:depth], True
                break
        fd, depth = _open_dirs(root_fd, parts[:-1])
        try:
            if depth < len(parts) - 1:  # an ancestor is gone or no longer a directory: examine it instead
                parts, whole = parts[:depth + 1], True
            self._reexamine_in(fd, parts[-1], "/".join(parts), whole)
        finally:
            if fd != root_fd:
                os.close(fd)

    def _reexamine_in(self, fd: int, name: str, rel: str, whole: bool) -> None:
        tree = self.tree
        st = self._lstat(fd, name, rel, tree.forget)
        if st is None:
            return
        previous = tree.records.get(rel)
        if stat.S_ISDIR(st.st_mode) and not self.rules.excludes(rel, True) and not whole and \
                previous is not None and previous.kind == "dir" and rel not in tree.pruned:
            self._redo_dir_entry(fd, name, rel)  # only the directory's own metadata
            return
        tree.forget(rel)
        tree.dirty = True
        subdirs: List[str] = []
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise NeedsFullWalk()
        self._entry(fd, name, rel, st, subdirs, _RETYPES)
        if subdirs:
            entered = self._enter(fd, name, rel, [])
            if entered is not None:
                self._walk_from(*entered)

    def _redo_dir_entry(self, parent: int, name: str, rel: str) -> None:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError:
            self._reexamine_in(parent, name, rel, whole=True)  # gone or replaced since the stat
            return
        try:
            self.tree.add(rel, "dir", os.fstat(fd), xattrs=self._xattrs_of(fd, rel))
        finally:
            os.close(fd)

    def _reexamine_root(self, root_fd: int, whole: bool) -> None:
        if whole:
            self.tree.records.clear()
            self.tree.kept.clear()
            self.tree.pruned.clear()
            self.tree.dirty = True
            self.incremental = False  # a full walk from here: hard links are described as usual
            self.tree.add(".", "dir", os.fstat(root_fd), xattrs=xattrs_of(root_fd))
            self._walk_from(root_fd, "", self._scan(root_fd, ""))
        else:
            self.tree.add(".", "dir", os.fstat(root_fd), xattrs=xattrs_of(root_fd))


def _open_dirs(root_fd: int, parts: List[str]) -> Tuple[int, int]:
    """Open the directory `parts` below `root_fd` one name at a time, never following a symlink. Returns
    the deepest directory opened and how many of `parts` it is (len(parts) when all were)."""
    fd = root_fd
    for depth, name in enumerate(parts):
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:
            return fd, depth
        if fd != root_fd:
            os.close(fd)
        fd = child
    return fd, len(parts)


def _stat_of(entry: Entry) -> _Stat:
    return _Stat(entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size)


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "unknown type"
