"""Watching the job trees: which mode each job is watched in, and degrading instead of stopping.

inotify (agent.watch.inotify: one reader thread for every tree, excluded directories never watched, reads
never asked for) is the normal mode; watchdog's polling observer the fallback, whose events under
excluded paths and of mere reading are dropped here. Watch failures degrade instead of stopping the agent:
- a path that does not exist yet is watched from its nearest existing ancestor and armed when it appears;
- a tree replaced wholesale (deploy by rename) is noticed through its parent's watch and re-armed;
- ENOSPC/EMFILE (inotify limits, at arming or on a new directory later) or a network filesystem (nfs,
  cifs, fuse, ...) switch that job to polling;
- a kernel queue overflow (lost events) asks the owner for a full scan of every inotify-watched job.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import ObservedWatch
from watchdog.observers.polling import PollingObserver

from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules
from agent.watch.inotify import LIMITS, EntryWatch, Inotify, TreeWatch

log = logging.getLogger("backup-agent.watch")

NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
                       "sshfs", "fuse")
_READ_ONLY_EVENTS = ("opened", "closed_no_write")

OnChange = Callable[[str, ChangeSet], None]


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path` (from /proc/self/mountinfo), or "" if unknown."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields:
                    continue
                mount_point = fields[4].replace("\\040", " ")
                kind = fields[fields.index("-") + 1]
                if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and \
                        len(mount_point) >= len(best):
                    best, fstype = mount_point, kind
    except OSError:
        return ""
    return fstype


def _nearest_ancestor(path: str) -> str:
    """The nearest existing directory above `path`."""
    ancestor = os.path.dirname(path.rstrip("/")) or "/"
    while not os.path.isdir(ancestor) and ancestor != "/":
        ancestor = os.path.dirname(ancestor)
    return ancestor


def _inode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def is_network_fs(fstype: str) -> bool:
    return any(fstype == kind or fstype.startswith(kind + ".") for kind in NETWORK_FILESYSTEMS)


class _TreeHandler(FileSystemEventHandler):
    """Turns the polling observer's events under one job's path into change sets, dropping excluded
    paths."""

    def __init__(self, job: str, root: str, rules: IgnoreRules, on_change: OnChange) -> None:
        self.job, self.root, self.rules, self.on_change = job, root.rstrip("/") or "/", rules, on_change

    def _included(self, path: str, is_dir: bool) -> bool:
        if path == self.root:
            return True
        if not path.startswith(self.root + "/"):
            return False
        rel = path[len(self.root) + 1:]
        return not self.rules.excludes(rel, is_dir) and not self.rules.excludes_any_parent(rel)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READ_ONLY_EVENTS:
            return
        if event.is_directory and event.event_type == "modified":
            # A directory's "modified" is what watchdog reports for any entry created or removed in it,
            # excluded ones included (a new *.log beside the configs). The entries have events of their
            # own; the directory's own mode/owner changes are left to the daily full scan.
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        paths, trees = set(), set()
        if self._included(src, event.is_directory):
            if event.is_directory and event.event_type == "created":
                trees.add(src)
            else:
                paths.add(src)
        if dest and self._included(dest, event.is_directory):
            (trees if event.is_directory else paths).add(dest)
        if paths or trees:
            self.on_change(self.job, ChangeSet(frozenset(paths), frozenset(trees)))


@dataclass
class _Armed:
    path: str
    rules: IgnoreRules
    mode: str                                  # "inotify", "polling" or "waiting" (path missing)
    inode: Optional[int] = None
    tree: Optional[TreeWatch] = None           # inotify mode
    polled: Optional[ObservedWatch] = None     # polling mode
    above: Optional[EntryWatch] = None         # the nearest existing ancestor, to see the path (re)appear


class TreeWatcher:
    """Every watched job's tree: `watch(job, path, rules)` arms one (and says in which mode), `unwatch`
    disarms it. `on_change(job, changes)` and `on_events_lost(job)` are called from the watch threads."""

    def __init__(self, on_change: OnChange, on_events_lost: Callable[[str], None],
                 poll_interval: float = 30.0) -> None:
        self.on_change = on_change
        self.on_events_lost = on_events_lost
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._jobs: Dict[str, _Armed] = {}
        self._hub: Optional[Inotify] = None
        self._poller: Optional[PollingObserver] = None
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._hub = Inotify()
            self._hub.start()
        except OSError as exc:  # EMFILE: max_user_instances reached
            log.warning("inotify is not available (%s): every tree is polled every %.0f s", exc.strerror,
                        self.poll_interval)
            self._hub = None
        self._started = True

    def stop(self) -> None:
        with self._lock:
            for armed in self._jobs.values():
                self._disarm(armed)
        if self._hub is not None:
            self._hub.stop()
            self._hub = None
        if self._poller is not None and self._poller.is_alive():
            self._poller.stop()
            self._poller.join(timeout=5)

    def modes(self) -> Dict[str, str]:
        with self._lock:
            return {job: armed.mode for job, armed in self._jobs.items()}

    def watched_directories(self, job: str) -> int:
        """How many directories of `job` have an inotify watch (0 when polling or waiting)."""
        with self._lock:
            armed = self._jobs.get(job)
            return len(armed.tree) if armed is not None and armed.tree is not None else 0

    # --- arming ---------------------------------------------------------------------------------------

    def watch(self, job: str, path: str, rules: IgnoreRules) -> str:
        with self._lock:
            self.unwatch(job)
            armed = _Armed(path, rules, "waiting")
            self._jobs[job] = armed
            self._arm(job, armed)
            return armed.mode

    def unwatch(self, job: str) -> None:
        with self._lock:
            armed = self._jobs.pop(job, None)
            if armed is not None:
                self._disarm(armed)

    def _disarm(self, armed: _Armed) -> None:
        for watch in (armed.tree, armed.above):
            if watch is not None:
                watch.close()
        if armed.polled is not None and self._poller is not None:
            try:
                self._poller.unschedule(armed.polled)
            except KeyError:
                pass
        armed.tree = armed.above = armed.polled = None

    def _watch_ancestor(self, job: str, armed: _Armed) -> None:
        """Watch the nearest existing ancestor of the job's path, to see it (re)appear."""
        if self._hub is None:
            return
        ancestor = _nearest_ancestor(armed.path)
        above = EntryWatch(self._hub, ancestor, lambda: self.recheck(job))
        try:
            above.start()
            armed.above = above
        except OSError as exc:
            log.warning("%s: cannot watch %s for %s to appear: %s", job, ancestor, armed.path, exc.strerror)

    def _arm(self, job: str, armed: _Armed) -> None:
        self._watch_ancestor(job, armed)
        try:
            armed.inode = os.stat(armed.path).st_ino
        except OSError:
            armed.mode = "waiting"
            log.warning("%s: %s does not exist yet; watching for it to appear", job, armed.path)
            return
        fstype = filesystem_type(armed.path)
        if is_network_fs(fstype):
            log.warning("%s: %s is on %s, where inotify misses remote changes: polling every %.0f s",
                        job, armed.path, fstype, self.poll_interval)
            self._poll(job, armed)
            return
        if self._hub is None:
            self._poll(job, armed)
            return
        tree = TreeWatch(self._hub, job, armed.path, armed.rules, self.on_change, self.on_events_lost,
                         self._limit_reached)
        try:
            tree.start()
            armed.tree, armed.mode = tree, "inotify"
        except OSError as exc:
            if exc.errno in LIMITS:
                self._warn_limit(job, armed, exc)
                self._poll(job, armed)
            elif not os.path.exists(armed.path):
                armed.mode = "waiting"
            else:
                log.warning("%s: cannot watch %s (%s); polling instead", job, armed.path, exc.strerror)
                self._poll(job, armed)

    def _warn_limit(self, job: str, armed: _Armed, exc: OSError) -> None:
        log.warning("%s: inotify limit reached (%s); polling %s every %.0f s instead. Raise "
                    "fs.inotify.max_user_watches to get change-triggered backups back.",
                    job, exc.strerror, armed.path, self.poll_interval)

    def _limit_reached(self, job: str, exc: OSError) -> None:
        """A new directory could not be watched (inotify limit): the whole job is polled from now on."""
        with self._lock:
            armed = self._jobs.get(job)
            if armed is None or armed.mode != "inotify":
                return
            self._warn_limit(job, armed, exc)
            if armed.tree is not None:
                armed.tree.close()
                armed.tree = None
            self._poll(job, armed)
        self.on_events_lost(job)

    def _poll(self, job: str, armed: _Armed) -> None:
        if self._poller is None:
            self._poller = PollingObserver(timeout=self.poll_interval)
            if self._started:
                self._poller.start()
        handler = _TreeHandler(job, armed.path, armed.rules, self.on_change)
        armed.polled = self._poller.schedule(handler, armed.path, recursive=True)
        armed.mode = "polling"

    # --- failures -------------------------------------------------------------------------------------

    def recheck(self, job: str) -> None:
        """Re-arm `job` if its path appeared, vanished or was replaced by another directory."""
        with self._lock:
            armed = self._jobs.get(job)
            if armed is None:
                return
            inode = _inode(armed.path)
            # still missing: a nearer ancestor that appeared (mkdir -p) is watched instead
            while inode is None and armed.mode == "waiting" and armed.above is not None and \
                    armed.above.directory != _nearest_ancestor(armed.path):
                armed.above.close()
                armed.above = None
                self._watch_ancestor(job, armed)
                inode = _inode(armed.path)  # it may have appeared meanwhile
            if inode == armed.inode and (armed.mode != "waiting" or inode is None):
                return
            was = armed.mode
            self._disarm(armed)
            armed.mode = "waiting"
            self._arm(job, armed)
            log.info("%s: %s %s; watch re-armed (%s)", job, armed.path,
                     "appeared" if was == "waiting" else "was replaced" if inode else "vanished", armed.mode)
        # whatever happened to the tree, only a full scan knows what it holds now
        self.on_events_lost(job)

    def recheck_all(self) -> None:
        for job in list(self._jobs):
            self.recheck(job)
