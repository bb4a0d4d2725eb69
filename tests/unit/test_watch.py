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
        os.rename(root, tmp_path / "services" / "km.old")
        os.rename(staged, root)
        lost = len(rec.lost)
        assert rec.wait(lambda: len(rec.lost) > lost and watcher.modes()["km"] == "inotify")
        (root / "c.xml").write_text("c")
        assert rec.wait(lambda: str(root / "c.xml") in rec.paths())
    finally:
        watcher.stop()


def test_network_filesystems_are_recognised():
    assert is_network_fs("nfs4") and is_network_fs("cifs") and is_network_fs("fuse.sshfs")
    assert not is_network_fs("ext4") and not is_network_fs("tmpfs") and not is_network_fs("overlay")
    assert filesystem_type("/") != ""
