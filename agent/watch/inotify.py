"""Recursive inotify watches that leave excluded directories out: one inotify instance and one reader
thread for every watched tree.

Why not watchdog's inotify observer (it stays for the polling fallback): it watches every directory below
a root, excluded ones too (a Tomcat's `work/` gets a watch per compiled JSP package, and a flood of events
that are dropped later), and it registers a new directory twice when the directory's own IN_CREATE
arrives after the walk that followed its parent's IN_CREATE has already watched it (`mkdir -p`, a WAR
being expanded): watchdog then warns "Callback with id ... already exists", its whole watch table in
the message (watchdog 7, `InotifyWatchGroup.on_event` -> `_add_all_callbacks`). Here, after inotify(7):
- a directory is watched before it is listed, so a subdirectory made meanwhile is either in the listing
  or announced by an event; a directory already watched is never registered again, and a directory
  renamed over another one is registered anew;
- excluded directories are never entered nor watched (fewer watches, no events to drop);
- reads are not even asked for (no IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE);
- events become ChangeSets here, with no event objects between.
The binding is inotify_simple (the three system calls and the event parser, nothing more).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from typing import Callable, Dict, Optional, Set

from inotify_simple import INotify
from inotify_simple import flags as F

from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules

log = logging.getLogger("backup-agent.watch")

# One mask for every watch: inotify_add_watch on a directory already watched replaces its mask, and two
# jobs may watch one directory (one job's tree holding another's parent).
MASK = (F.MODIFY | F.ATTRIB | F.CLOSE_WRITE | F.CREATE | F.DELETE | F.MOVED_FROM | F.MOVED_TO
        | F.DELETE_SELF | F.MOVE_SELF | F.DONT_FOLLOW | F.ONLYDIR | F.EXCL_UNLINK)
_ENTRY_GONE = F.DELETE | F.MOVED_FROM
_ENTRY_NEW = F.CREATE | F.MOVED_TO
LIMITS = (errno.ENOSPC, errno.EMFILE)  # inotify_add_watch: max_user_watches / max_user_instances


class _Subscriber:
    """What the reader thread calls; both run on the reader thread and must not block for long."""

    def on_event(self, wd: int, mask: int, name: str) -> None:
        raise NotImplementedError

    def on_gone(self, wd: int) -> None:
        """The kernel dropped watch `wd` (its directory was deleted, or the watch removed)."""

    def on_overflow(self) -> None:
        """The kernel's event queue overflowed: events were lost."""


class Inotify:
    """One inotify instance and its reader thread, shared by every watch: a directory watched for two
    jobs is one kernel watch with two subscribers. Raises OSError (EMFILE: no inotify instance left)."""

    def __init__(self) -> None:
        self._fd = INotify()
        self._lock = threading.Lock()
        self._subscribers: Dict[int, Set[_Subscriber]] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read, name="inotify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader (no timeout: it waits on poll(2) with the wake pipe) and close everything."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._fd.close()

    def add(self, path: str, subscriber: _Subscriber) -> int:
        """Watch directory `path` for `subscriber`; returns the watch descriptor (the same for the same
        directory). Raises OSError: ENOENT/ENOTDIR (gone), EACCES, ENAMETOOLONG, or one of LIMITS."""
        wd = self._fd.add_watch(path, MASK)
        with self._lock:
            self._subscribers.setdefault(wd, set()).add(subscriber)
        return wd

    def remove(self, wd: int, subscriber: _Subscriber) -> None:
        with self._lock:
            subscribers = self._subscribers.get(wd)
            if subscribers is None:
                return
            subscribers.discard(subscriber)
            if subscribers:
                return
            del self._subscribers[wd]
        try:
            self._fd.rm_watch(wd)
        except OSError:
            pass  # EINVAL: the kernel already dropped it with its directory

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._fd.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            for event in self._fd.read(timeout=0):
                try:
                    self._dispatch(event.wd, event.mask, event.name)
                except Exception:  # a bug in one subscriber must not stop every watch
                    log.exception("inotify event %s could not be handled", event)

    def _dispatch(self, wd: int, mask: int, name: str) -> None:
        if mask & F.Q_OVERFLOW:
            log.warning("inotify queue overflow: file events were lost")
            with self._lock:
                everyone = set().union(*self._subscribers.values()) if self._subscribers else set()
            for subscriber in everyone:
                subscriber.on_overflow()
            return
        with self._lock:
            if mask & F.IGNORED:
                subscribers = self._subscribers.pop(wd, set())
            else:
                subscribers = set(self._subscribers.get(wd, ()))
        for subscriber in subscribers:
            if mask & F.IGNORED:
                subscriber.on_gone(wd)
            else:
                subscriber.on_event(wd, mask, name)


class TreeWatch(_Subscriber):
    """The watches of one job's tree: `root` and every directory below it that `rules` do not exclude.

    `on_change(job, changes)` gets each relevant event; `on_lost(job)` is told when events were lost
    (queue overflow: the watches are rebuilt too); `on_limit(job, error)` when an inotify limit was
    reached on a new directory (the owner switches the job to polling). `start` raises OSError when the
    root cannot be watched or a limit is reached."""

    def __init__(self, hub: Inotify, job: str, root: str, rules: IgnoreRules,
                 on_change: Callable[[str, ChangeSet], None], on_lost: Callable[[str], None],
                 on_limit: Callable[[str, OSError], None]) -> None:
        self.hub, self.job, self.root, self.rules = hub, job, root.rstrip("/") or "/", rules
        self.on_change, self.on_lost, self.on_limit = on_change, on_lost, on_limit
        self._lock = threading.Lock()
        self._path_by_wd: Dict[int, str] = {}
        self._wd_by_path: Dict[str, int] = {}
        self._closed = False

    def __len__(self) -> int:
        """How many directories are watched."""
        return len(self._wd_by_path)

    def start(self) -> None:
        with self._lock:
            try:
                self._add_tree(self.root)
            except OSError:
                self._forget_all()
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._forget_all()

    def _excluded(self, path: str, is_dir: bool) -> bool:
        rel = path[len(self.root):].lstrip("/")
        return bool(rel) and self.rules.excludes(rel, is_dir)

    def _add_tree(self, top: str) -> None:
        """Watch `top` and the directories below it that are not excluded and not watched yet."""
        stack = [top]
        while stack:
            directory = stack.pop()
            if directory in self._wd_by_path:
                continue  # watched already: its own events cover what appears below it
            try:
                wd = self.hub.add(directory, self)
            except OSError as exc:
                if exc.errno in LIMITS or directory == self.root:
                    raise
                continue  # vanished, unreadable or a path too long: the daily full scan covers it
            if self._path_by_wd.setdefault(wd, directory) != directory:
                continue  # the same directory reached by a second path (a bind mount): watched once
            self._wd_by_path[directory] = wd
            try:
                with os.scandir(directory) as entries:
                    stack += [entry.path for entry in entries
                              if entry.is_dir(follow_symlinks=False) and not self._excluded(entry.path, True)]
            except OSError:
                continue

    def _forget(self, path: str, below: bool) -> None:
        """Stop watching `path` (and, if `below`, every directory under it)."""
        prefix = path.rstrip("/") + "/"
        paths = [p for p in self._wd_by_path if p == path or p.startswith(prefix)] if below else [path]
        for p in paths:
            wd = self._wd_by_path.pop(p, None)
            if wd is not None:
                self._path_by_wd.pop(wd, None)
                self.hub.remove(wd, self)

    def _forget_all(self) -> None:
        for wd in list(self._path_by_wd):
            self.hub.remove(wd, self)
        self._path_by_wd.clear()
        self._wd_by_path.clear()

    def on_event(self, wd: int, mask: int, name: str) -> None:
        limit: Optional[OSError] = None
        with self._lock:
            base = None if self._closed else self._path_by_wd.get(wd)
            if base is None:
                return
            try:
                changes = self._change(base, mask, name)
            except OSError as exc:  # a limit reached on a new directory
                changes, limit = ChangeSet.everything(), exc
        if changes:
            self.on_change(self.job, changes)
        if limit is not None:
            self.on_limit(self.job, limit)

    def _change(self, base: str, mask: int, name: str) -> Optional[ChangeSet]:
        if not name:
            # an event of a watched directory itself: its entry in the parent reports it, except for the
            # root, whose parent is not watched for this job
            return ChangeSet(paths=frozenset({base})) if base == self.root and mask & F.ATTRIB else None
        path = os.path.join(base, name)
        is_dir = bool(mask & F.ISDIR)
        if self._excluded(path, is_dir):
            return None
        if mask & _ENTRY_GONE:
            if is_dir:
                # a deleted directory was empty (its watch goes with it); a moved one takes its subtree away
                self._forget(path, below=bool(mask & F.MOVED_FROM))
            return ChangeSet(paths=frozenset({path}))
        if is_dir and mask & _ENTRY_NEW:
            if mask & F.MOVED_TO:
                self._forget(path, below=True)  # renamed over a directory we watched: that one is gone
            self._add_tree(path)
            return ChangeSet(trees=frozenset({path}))
        return ChangeSet(paths=frozenset({path}))

    def on_gone(self, wd: int) -> None:
        with self._lock:
            path = self._path_by_wd.pop(wd, None)
            if path is not None and self._wd_by_path.get(path) == wd:
                del self._wd_by_path[path]

    def on_overflow(self) -> None:
        limit: Optional[OSError] = None
        with self._lock:
            if self._closed:
                return
            # directories made while events were lost are not watched yet: rebuild from the root
            self._forget_all()
            try:
                self._add_tree(self.root)
            except OSError as exc:
                limit = exc
        self.on_lost(self.job)
        if limit is not None:
            self.on_limit(self.job, limit)


class EntryWatch(_Subscriber):
    """A watch of one directory for entries appearing, vanishing or being renamed in it (and for the
    directory itself going): `on_entry()` is called for each. Used above a job's path, to see the path
    appear or be replaced. `start` raises OSError."""

    def __init__(self, hub: Inotify, directory: str, on_entry: Callable[[], None]) -> None:
        self.hub, self.directory, self.on_entry = hub, directory, on_entry
        self._wd: Optional[int] = None

    def start(self) -> None:
        self._wd = self.hub.add(self.directory, self)

    def close(self) -> None:
        wd, self._wd = self._wd, None
        if wd is not None:
            self.hub.remove(wd, self)

    def on_event(self, wd: int, mask: int, name: str) -> None:
        if self._wd is not None and mask & (_ENTRY_GONE | _ENTRY_NEW | F.DELETE_SELF | F.MOVE_SELF):
            self.on_entry()

    def on_gone(self, wd: int) -> None:
        if wd == self._wd:
            self._wd = None
            self.on_entry()

    def on_overflow(self) -> None:
        self.on_entry()
