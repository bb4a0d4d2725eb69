"""The watcher in-process, on real temp trees with real inotify; the conftest fails on leaked threads."""

from __future__ import annotations

import os
import threading
import time
from typing import List, Tuple

from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules
from agent.watch.observer import TreeWatcher, filesystem_type, is_network_fs


class Recorder:
    def __init__(self) -> None:
        self.changes: List[Tuple[str, ChangeSet]] = []
        self.lost: List[str] = []
        self.event = threading.Event()

    def on_change(self, job: str, changes: ChangeSet) -> None:
        self.changes.append((job, changes))
        self.event.set()

    def on_lost(self, job: str) -> None:
        self.lost.append(job)
        self.event.set()

    def paths(self) -> set:
        return {path for _, change in self.changes for path in change.paths | change.trees}

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.event.wait(0.05)
            self.event.clear()
        return True


def test_changes_are_reported_and_reads_and_excluded_paths_are_not(tmp_path):
    root = tmp_path / "svc"
    (root / "logs").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "conf" / "server.xml").write_text("x")
    rec = Recorder()
    watcher = TreeWatcher(rec.on_change, rec.on_lost)
    watcher.start()
    try:
        assert watcher.watch("svc", str(root), IgnoreRules(["logs/", "*.log"])) == "inotify"
        (root / "logs" / "catalina.out").write_text("line\n" * 100)
        (root / "conf" / "app.log").write_text("log")
        (root / "conf" / "server.xml").read_text()  # our own kind of read: no event may come of it
        time.sleep(0.5)
        assert rec.changes == []
        (root / "conf" / "server.xml").write_text("y")
        assert rec.wait(lambda: str(root / "conf" / "server.xml") in rec.paths())
        (root / "new" / "deep").mkdir(parents=True)
        assert rec.wait(lambda: any(str(root / "new") in c.trees for _, c in rec.changes))
    finally:
        watcher.stop()


def test_missing_path_is_armed_when_it_appears_and_a_swapped_tree_is_rearmed(tmp_path):
    root = tmp_path / "services" / "km"
    rec = Recorder()
    watcher = TreeWatcher(rec.on_change, rec.on_lost)
    watcher.start()
    try:
        assert watcher.watch("km", str(root), IgnoreRules([])) == "waiting"
        root.mkdir(parents=True)
        assert rec.wait(lambda: watcher.modes()["km"] == "inotify" and "km" in rec.lost)
        (root / "a.xml").write_text("a")
        assert rec.wait(lambda: str(root / "a.xml") in rec.paths())
        staged = tmp_path / "services" / "km.new"
        staged.mkdir()
        (staged / "b.xml").write_text("b")
        lost = len(rec.lost)  # counted before the swap: the watcher may see it at once
        os.rename(root, tmp_path / "services" / "km.old")
        os.rename(staged, root)
        assert rec.wait(lambda: len(rec.lost) > lost and watcher.modes()["km"] == "inotify")
        (root / "c.xml").write_text("c")
        assert rec.wait(lambda: str(root / "c.xml") in rec.paths())
    finally:
        watcher.stop()


def test_network_filesystems_are_recognised():
    assert is_network_fs("nfs4") and is_network_fs("cifs") and is_network_fs("fuse.sshfs")
    assert not is_network_fs("ext4") and not is_network_fs("tmpfs") and not is_network_fs("overlay")
    assert filesystem_type("/") != ""


def kernel_watches() -> int:
    """inotify watches this process holds, as the kernel counts them (/proc/self/fdinfo)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as handle:
                count += sum(1 for line in handle if line.startswith("inotify wd:"))
        except OSError:
            continue
    return count


def test_excluded_directories_are_not_watched_and_new_directories_are_watched_once(tmp_path):
    """A Tomcat-like tree: logs/, temp/ and work/ excluded. Nothing under them is watched, also when a
    burst of nested directories appears there (JSPs compiled) beside a WAR expanded in webapps/; each new
    included directory gets exactly one kernel watch (watchdog registered some twice, and warned)."""
    root = tmp_path / "svc"
    for directory in ("conf", "webapps/ROOT/WEB-INF/classes", "logs", "temp", "work/Catalina/localhost/ROOT"):
        (root / directory).mkdir(parents=True)
    rec = Recorder()
    watcher = TreeWatcher(rec.on_change, rec.on_lost)
    before = kernel_watches()
    watcher.start()
    try:
        assert watcher.watch("svc", str(root), IgnoreRules(["logs/", "temp/", "work/"])) == "inotify"
        included = 6  # svc, conf, webapps, webapps/ROOT, WEB-INF, classes
        assert watcher.watched_directories("svc") == included
        assert kernel_watches() - before == included + 1  # and the directory above, for a swapped tree
        apps = 60
        for number in range(apps):
            (root / f"work/Catalina/localhost/app{number}/org/apache/jsp").mkdir(parents=True)
            (root / f"webapps/app{number}/WEB-INF/classes").mkdir(parents=True)
        assert rec.wait(lambda: watcher.watched_directories("svc") == included + 3 * apps)
        assert kernel_watches() - before == included + 3 * apps + 1
        assert not any("/work/" in path for path in rec.paths())
        last = root / f"webapps/app{apps - 1}/WEB-INF/classes/App.class"
        last.write_text("x")
        assert rec.wait(lambda: str(last) in rec.paths())
        (root / "work/Catalina/localhost/app0/org/apache/jsp/index_jsp.class").write_text("x")
        (root / "webapps/app0/WEB-INF/classes").rename(root / "work/moved")  # out of the watched tree
        assert rec.wait(lambda: str(root / "webapps/app0/WEB-INF/classes") in rec.paths())
        assert rec.wait(lambda: watcher.watched_directories("svc") == included + 3 * apps - 1)
        assert not any("/work/" in path for path in rec.paths())
    finally:
        watcher.stop()
    assert kernel_watches() == before
