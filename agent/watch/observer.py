"""Watching the job trees: one watchdog observer (inotify on Linux) for every watched tree.

Events under excluded paths and events of mere reading (ours included: open and close-without-write)
are dropped here, before the debouncer. Watch failures degrade instead of stopping the agent:
- a path that does not exist yet is watched from its nearest existing ancestor and armed when it appears;
- a tree replaced wholesale (deploy by rename) is noticed through its parent's watch and re-armed;
- ENOSPC/EMFILE (inotify limits) or a network filesystem (nfs, cifs, fuse, ...) switch that job to polling;
- a kernel queue overflow (lost events) asks the owner for a full scan of every inotify-watched job.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules

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


def is_network_fs(fstype: str) -> bool:
    return any(fstype == kind or fstype.startswith(kind + ".") for kind in NETWORK_FILESYSTEMS)


class _TreeHandler(FileSystemEventHandler):
    """Turns watchdog events under one job's path into change sets, dropping excluded paths."""

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


class _ParentHandler(FileSystemEventHandler):
    """Watches the directory above a job's path (non-recursively) for the path appearing, vanishing or
    being replaced by a rename; the watcher then re-arms the job."""

    def __init__(self, watcher: TreeWatcher, job: str) -> None:
        self.watcher, self.job = watcher, job

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _READ_ONLY_EVENTS:
            self.watcher.recheck(self.job)


@dataclass
class _Armed:
    path: str
    rules: IgnoreRules
    mode: str                      # "inotify", "polling" or "waiting" (path missing)
    inode: Optional[int] = None
    tree_watch: object = None
    parent_watch: object = None
    observer: object = None


class _OverflowHook(logging.Handler):
    """watchdog only logs a kernel queue overflow; this handler turns that log line into a callback."""

    def __init__(self, callback: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.callback()


class TreeWatcher:
    def __init__(self, on_change: OnChange, on_events_lost: Callable[[str], None],
                 poll_interval: float = 30.0) -> None:
        self.on_change = on_change
        self.on_events_lost = on_events_lost
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._jobs: Dict[str, _Armed] = {}
        self._observer = Observer(timeout=5)
        self._poller: Optional[PollingObserver] = None
        self._hook = _OverflowHook(self._overflowed)
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self._hook)
        self._observer.start()
        self._started = True

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._hook)
        for observer in (self._observer, self._poller):
            if observer is not None and observer.is_alive():
                observer.stop()
        for observer in (self._observer, self._poller):
            if observer is not None and observer.is_alive():
                observer.join(timeout=5)

    def modes(self) -> Dict[str, str]:
        with self._lock:
            return {job: armed.mode for job, armed in self._jobs.items()}

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
        for watch, observer in ((armed.tree_watch, armed.observer), (armed.parent_watch, self._observer)):
            if watch is not None and observer is not None:
                try:
                    observer.unschedule(watch)
                except (KeyError, OSError):
                    pass  # already gone with its directory
        armed.tree_watch = armed.parent_watch = armed.observer = None

    def _watch_ancestor(self, job: str, armed: _Armed) -> None:
        """Watch the nearest existing ancestor of the job's path, to see it (re)appear."""
        ancestor = os.path.dirname(armed.path.rstrip("/")) or "/"
        while not os.path.isdir(ancestor) and ancestor != "/":
            ancestor = os.path.dirname(ancestor)
        try:
            armed.parent_watch = self._observer.schedule(_ParentHandler(self, job), ancestor, recursive=False)
        except OSError as exc:
            log.warning("%s: cannot watch %s for %s to appear: %s", job, ancestor, armed.path, exc)

    def _arm(self, job: str, armed: _Armed) -> None:
        self._watch_ancestor(job, armed)
        try:
            armed.inode = os.stat(armed.path).st_ino
        except OSError:
            armed.mode = "waiting"
            log.warning("%s: %s does not exist yet; watching for it to appear", job, armed.path)
            return
        handler = _TreeHandler(job, armed.path, armed.rules, self.on_change)
        fstype = filesystem_type(armed.path)
        if is_network_fs(fstype):
            log.warning("%s: %s is on %s, where inotify misses remote changes: polling every %.0f s",
                        job, armed.path, fstype, self.poll_interval)
            self._poll(job, armed, handler)
            return
        try:
            armed.tree_watch = self._observer.schedule(handler, armed.path, recursive=True)
            armed.observer, armed.mode = self._observer, "inotify"
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                log.warning("%s: inotify limit reached (%s); polling %s every %.0f s instead. Raise "
                            "fs.inotify.max_user_watches to get change-triggered backups back.",
                            job, exc.strerror, armed.path, self.poll_interval)
                self._poll(job, armed, handler)
            elif not os.path.exists(armed.path):
                armed.mode = "waiting"
            else:
                log.warning("%s: cannot watch %s (%s); polling instead", job, armed.path, exc)
                self._poll(job, armed, handler)

    def _poll(self, job: str, armed: _Armed, handler: _TreeHandler) -> None:
        if self._poller is None:
            self._poller = PollingObserver(timeout=self.poll_interval)
            if self._started:
                self._poller.start()
        armed.tree_watch = self._poller.schedule(handler, armed.path, recursive=True)
        armed.observer, armed.mode = self._poller, "polling"

    # --- failures -------------------------------------------------------------------------------------

    def recheck(self, job: str) -> None:
        """Re-arm `job` if its path appeared, vanished or was replaced by another directory."""
        with self._lock:
            armed = self._jobs.get(job)
            if armed is None:
                return
            try:
                inode: Optional[int] = os.stat(armed.path).st_ino
            except OSError:
                inode = None
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

    def _overflowed(self) -> None:
        for job, mode in self.modes().items():
            if mode == "inotify":
                self.on_events_lost(job)
