"""A tree that changes while it is backed up, and a tree deeper than PATH_MAX.

The races are made certain, not timed: the real walk runs in-process against a real repository and a real
tree, and the change (a real unlink, rmtree, mkfifo, append) is made by a wrapper around the system call
at the exact moment between listing and reading. One test runs the real command against a real writer
process as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import pytest

from agent.snapshot.cache import FilesCache
from agent.snapshot.changes import ChangeSet
from agent.snapshot.fs import Aborted, backup_tree
from agent.snapshot.ignore import IgnoreRules
from tests.e2e.tree_runner import Runner
from tests.helpers import fs_job, make_tree


@pytest.fixture
def runner(tmp_path):
    runner = Runner(tmp_path)
    yield runner
    runner.close()


def _on_open(monkeypatch, name: str, action) -> None:
    """Run `action` once, right before the walk opens `name` relative to a directory."""
    real_open = os.open
    done = []

    def wrapped(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and path == name and not done:
            done.append(True)
            action()
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", wrapped)


@pytest.mark.parametrize("when", ["before it is entered", "while it is listed"])
def test_a_directory_removed_during_the_walk_is_left_out_with_one_warning(runner, tmp_path, monkeypatch, when):
    src = str(tmp_path / "svc")
    make_tree(src, {"a/keep.txt": "keep", "gone/x/y.txt": "y", "gone/z.txt": "z", "b.txt": "b"})
    gone = os.path.join(src, "gone")
    if when == "before it is entered":
        _on_open(monkeypatch, "gone", lambda: shutil.rmtree(gone))
    else:
        inode, real_scandir, done = os.stat(gone).st_ino, os.scandir, []

        def scandir(path="."):
            if isinstance(path, int) and not done and os.fstat(path).st_ino == inode:
                done.append(True)
                shutil.rmtree(gone)  # the walk holds it open: it lists what is left of it (nothing)
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    result, entries = runner.backup(src)
    assert result.errors == ()
    assert result.warnings == ("gone: vanished while the backup ran; not in this snapshot",)
    assert sorted(entries) == [".", "a", "a/keep.txt", "b.txt"]
    assert runner.content(entries["a/keep.txt"]) == b"keep"


def test_a_file_removed_before_it_is_read_is_left_out_with_a_warning(runner, tmp_path, monkeypatch):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/vanish.xml": "v", "conf/stay.xml": "s"})
    _on_open(monkeypatch, "vanish.xml", lambda: os.unlink(os.path.join(src, "conf/vanish.xml")))
    result, entries = runner.backup(src)
    assert result.errors == () and result.snapshot is not None
    assert result.warnings == ("conf/vanish.xml: vanished while the backup ran; not in this snapshot",)
    assert sorted(entries) == [".", "conf", "conf/stay.xml"]


def _swap_for_fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


def _swap_for_outside_link(path: str, outside: str) -> None:
    shutil.rmtree(path)
    os.symlink(outside, path)


def _swap_for_dir(path: str) -> None:
    os.unlink(path)
    make_tree(path, {"inner.txt": "inner"})


@pytest.mark.parametrize("case", ["file becomes a fifo", "dir becomes a symlink", "file becomes a dir"])
def test_an_entry_that_changes_type_is_taken_as_what_it_is_now(runner, tmp_path, monkeypatch, case):
    src, outside = str(tmp_path / "svc"), str(tmp_path / "outside")
    make_tree(outside, {"secret.txt": "not part of the job"})
    make_tree(src, {"f": "file", "d/x.txt": "x", "other.txt": "o"})
    if case == "file becomes a fifo":  # opening a FIFO for reading would block until a writer comes
        _on_open(monkeypatch, "f", lambda: _swap_for_fifo(os.path.join(src, "f")))
    elif case == "dir becomes a symlink":
        _on_open(monkeypatch, "d", lambda: _swap_for_outside_link(os.path.join(src, "d"), outside))
    else:
        _on_open(monkeypatch, "f", lambda: _swap_for_dir(os.path.join(src, "f")))
    result, entries = runner.backup(src)
    assert result.errors == ()
    if case == "file becomes a fifo":
        assert "f" not in entries and result.warnings == ("f: skipped special file (fifo)",)
    elif case == "dir becomes a symlink":
        assert entries["d"].type == "symlink" and entries["d"].target == outside
        assert not [path for path in entries if path.startswith("d/")]
    else:
        assert entries["f"].type == "dir" and runner.content(entries["f/inner.txt"]) == b"inner"
    assert runner.content(entries["other.txt"]) == b"o"


def _append_on_read(monkeypatch, path: str, name: str, step: bytes) -> None:
    """Every read of the file `path` (found by inode) appends `step` to it: it grows while it is read."""
    inode, real = os.stat(path).st_ino, getattr(os, name)

    def wrapped(fd, *args):
        got = real(fd, *args)
        if os.fstat(fd).st_ino == inode:
            with open(path, "ab") as handle:
                handle.write(step)
        return got

    monkeypatch.setattr(os, name, wrapped)


@pytest.mark.parametrize("size,call", [(3 * 1024 * 1024, "readv"), (200 * 1024, "read")])
def test_a_file_appended_to_while_read_is_stored_as_it_was_when_opened(runner, tmp_path, monkeypatch, size, call):
    src = str(tmp_path / "svc")
    journal = os.path.join(src, "app/journal.dat")
    make_tree(src, {"app/journal.dat": os.urandom(size), "app/other.txt": "o"})
    _append_on_read(monkeypatch, journal, call, os.urandom(4096))
    result, entries = runner.backup(src)
    monkeypatch.undo()
    assert result.errors == () and result.snapshot is not None
    [warning] = result.warnings
    assert warning.startswith("app/journal.dat: changed while being read (3 attempts); stored as read:")
    entry = entries["app/journal.dat"]
    with open(journal, "rb") as handle:
        now = handle.read()
    assert size <= entry.size < len(now)
    assert runner.content(entry) == now[:entry.size]  # a state the file really had: a prefix of it
    assert f"{entry.size} bytes (its size when opened: {entry.size})" in warning
    # the stored state is not trusted: the next run reads the file again and stores it whole
    again, entries = runner.backup(src)
    assert again.warnings == () and again.changed and runner.content(entries["app/journal.dat"]) == now


def test_a_file_that_shrinks_while_read_is_read_again(runner, tmp_path, monkeypatch):
    src = str(tmp_path / "svc")
    path = os.path.join(src, "data.bin")
    make_tree(src, {"data.bin": os.urandom(100_000)})
    real_read, inode, shrunk = os.read, os.stat(path).st_ino, []

    def read(fd, count):
        if not shrunk and os.fstat(fd).st_ino == inode:
            shrunk.append(True)
            os.truncate(path, 10_000)
        return real_read(fd, count)

    monkeypatch.setattr(os, "read", read)
    result, entries = runner.backup(src)
    monkeypatch.undo()
    assert result.errors == () and result.warnings == ()
    with open(path, "rb") as handle:
        assert runner.content(entries["data.bin"]) == handle.read() and entries["data.bin"].size == 10_000


def test_incremental_run_meets_vanished_paths_and_changed_types(runner, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"d/f.txt": "f", "e/g.txt": "g", "keep.txt": "k"})
    runner.backup(src)
    shutil.rmtree(os.path.join(src, "d"))
    make_tree(src, {"d": "now a file"})  # d was a directory: its child's event names a path below a file
    shutil.rmtree(os.path.join(src, "e"))  # e and its file are gone
    changes = ChangeSet(paths=frozenset({os.path.join(src, "d/f.txt"), os.path.join(src, "e/g.txt")}))
    result, entries = runner.backup(src, changes)
    assert result.incremental and result.errors == ()
    assert sorted(entries) == [".", "d", "keep.txt"]
    assert entries["d"].type == "file" and runner.content(entries["d"]) == b"now a file"


def test_the_real_command_under_a_busy_writer_stays_ok_and_stores_a_prefix(agent, tmp_path):
    """A journal appended to every few milliseconds and directories created and removed all the time,
    while the real command backs up: every run is ok and holds a state the journal really had."""
    src = str(tmp_path / "svc")
    journal = os.path.join(src, "app/journal.log")
    make_tree(src, {"app/journal.log": os.urandom(3 * 1024 * 1024), "conf/server.xml": "<Server/>",
                    "churn/": None})
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, journal, os.path.join(src, "churn"), str(stop)])
    try:
        agent.write_jobs(fs_job("svc", src))
        for _ in range(3):
            [report] = agent.backup("svc")
            assert report["status"] == "ok" and report["errors"] == [], report
            target = str(tmp_path / f"out{_}")
            agent.run("restore", "svc:latest", "--target", target, "app/journal.log", "conf/server.xml", check=0)
            with open(os.path.join(target, "app/journal.log"), "rb") as stored, open(journal, "rb") as now:
                stored_bytes = stored.read()
                assert len(stored_bytes) >= 3 * 1024 * 1024 and now.read().startswith(stored_bytes)
    finally:
        stop.touch()
        writer.wait(timeout=30)


_WRITER = """
import os, shutil, sys, time
journal, churn, stop = sys.argv[1:]
n = 0
while not os.path.exists(stop):
    with open(journal, "ab") as handle:
        handle.write(os.urandom(512))
    path = os.path.join(churn, f"d{n % 5}")
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.makedirs(os.path.join(path, "sub"))
        with open(os.path.join(path, "sub", "f"), "w") as handle:
            handle.write("x")
    n += 1
    time.sleep(0.002)
"""


# --- no limit on depth or length -----------------------------------------------------------------------

_NAMES = [f"{level:02d}" + "n" * 198 for level in range(25)]  # 25 x 200 characters: ~5,000 bytes


def _deep_tree(root: str) -> None:
    os.makedirs(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in _NAMES:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as handle:
            handle.write("at the bottom")
    finally:
        os.close(fd)


def _read_deep(root: str) -> bytes:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in _NAMES:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("bottom.txt", os.O_RDONLY, dir_fd=fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


def test_a_path_longer_than_path_max_backs_up_and_restores(agent, tmp_path):
    src = str(tmp_path / "svc")
    _deep_tree(src)
    deep = os.path.join(src, *_NAMES, "bottom.txt")
    assert len(os.fsencode(deep)) > os.pathconf("/", "PC_PATH_MAX")
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup("svc")
    assert report["status"] == "ok" and report["errors"] == [] and report["files"] == 1
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert _read_deep(target) == b"at the bottom"


def test_an_incremental_run_re_examines_a_path_longer_than_path_max(runner, tmp_path):
    src = str(tmp_path / "svc")
    _deep_tree(src)
    runner.backup(src)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for name in _NAMES:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("bottom.txt", os.O_WRONLY | os.O_APPEND, dir_fd=fd), "w") as handle:
        handle.write(", changed")
    os.mkdir("new", dir_fd=fd)
    os.close(fd)
    deep = os.path.join(src, *_NAMES)
    result, entries = runner.backup(src, ChangeSet(paths=frozenset({os.path.join(deep, "bottom.txt")}),
                                                   trees=frozenset({os.path.join(deep, "new")})))
    assert result.incremental and result.errors == () and result.changed
    rel = "/".join(_NAMES)
    assert runner.content(entries[rel + "/bottom.txt"]) == b"at the bottom, changed"
    assert entries[rel + "/new"].type == "dir"


def test_stop_deep_in_the_walk_leaves_no_descriptor_open(runner, tmp_path, monkeypatch):
    src = str(tmp_path / "svc")
    _deep_tree(src)
    before = len(os.listdir("/proc/self/fd"))
    stop = threading.Event()
    _on_open(monkeypatch, _NAMES[12], stop.set)  # the agent is told to stop half way down

    with pytest.raises(Aborted):
        backup_tree(runner.repo, src, IgnoreRules(()), FilesCache.load(runner.cache_path), job="svc", job_type="fs",
                    host="h", trigger="manual", now="2026-11-30T10:00:00.000000Z", stop=stop)
    assert len(os.listdir("/proc/self/fd")) == before
