"""Scratch directories of drills (agent.drill.scratch): clearing leftovers never follows a link it did not
make, never takes a drill that is starting for a leftover, and what cannot be removed is named instead of
failing the drill that finds it."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from agent.drill.scratch import Cleared, Scratch, clear_leftovers
from tests.helpers import Link, make_tree


def test_a_linked_drill_directory_is_named_and_nothing_behind_it_removed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    make_tree(str(elsewhere / "run-important"), {"data": "keep"})
    root = tmp_path / "state" / "drill"
    root.parent.mkdir()
    os.symlink(elsewhere, root)
    linked = (f"{root}: a symbolic link, not followed: drills keep their scratch directories in a directory of "
              "their own (remove the link)")
    assert clear_leftovers(str(root)) == Cleared(problems=(linked,))
    with pytest.raises(OSError) as refused:
        Scratch(str(root.parent))
    assert (refused.value.filename, refused.value.strerror) == (str(root), linked.split(": ", 1)[1])
    assert os.listdir(elsewhere) == ["run-important"] and (elsewhere / "run-important/data").read_text() == "keep"


def test_leftovers_go_entry_by_entry_and_links_in_them_are_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    make_tree(str(outside), {"precious": "p", "sub/deeper": "d"})
    root = tmp_path / "drill"
    make_tree(str(root), {"run-dead/fs/link-to-outside": Link(str(outside)), "run-dead/fs/sub/f": "x",
                          "keep-me/f": "not a scratch directory"})
    os.symlink(outside, root / "run-link")  # named like a scratch directory, but a link: left alone
    assert clear_leftovers(str(root)) == Cleared(removed=(str(root / "run-dead"),))
    assert sorted(os.listdir(root)) == ["keep-me", "run-link"]
    assert sorted(os.listdir(outside)) == ["precious", "sub"] and (outside / "sub/deeper").read_text() == "d"


def test_a_running_drills_scratch_is_kept_and_removed_when_it_ends(tmp_path):
    with Scratch(str(tmp_path)) as scratch:
        made = scratch.directory("fs")
        make_tree(made, {"a/b": "x"})
        os.chmod(os.path.join(made, "a"), 0o000)
        assert clear_leftovers(str(tmp_path / "drill")) == Cleared()
        assert os.listdir(tmp_path / "drill") == [os.path.basename(scratch.path)]
    assert os.listdir(tmp_path / "drill") == [] and scratch.warnings == []


@pytest.mark.parametrize("instant", ["directory made", "lock file made, not yet locked"])
def test_a_scratch_directory_being_made_survives_another_drills_clear_up(tmp_path, monkeypatch, instant):
    # another drill (the daemon's, or one from the command line) clears leftovers at the very instant this
    # one has made its scratch directory and does not hold its lock yet
    root = tmp_path / "drill"
    cleared = []
    mkdir, flock = os.mkdir, fcntl.flock

    def mkdir_then_another_drill_clears(path, mode=0o777, *, dir_fd=None):
        mkdir(path, mode, dir_fd=dir_fd)
        if instant == "directory made" and dir_fd is not None and not cleared:
            cleared.append(clear_leftovers(str(root)))

    def another_drill_clears_then_flock(fd, operation):
        if instant == "lock file made, not yet locked" and operation == fcntl.LOCK_EX and not cleared:
            cleared.append(clear_leftovers(str(root)))
        flock(fd, operation)

    monkeypatch.setattr(os, "mkdir", mkdir_then_another_drill_clears)
    monkeypatch.setattr(fcntl, "flock", another_drill_clears_then_flock)
    with Scratch(str(tmp_path)) as scratch:
        monkeypatch.undo()
        assert cleared == [Cleared()]
        made = scratch.directory("fs")
        make_tree(made, {"f": "x"})
        assert os.listdir(root) == [scratch.name] and (root / scratch.name / "fs/f").read_text() == "x"
        assert clear_leftovers(str(root)) == Cleared()
    assert os.listdir(root) == [] and scratch.warnings == []


def test_a_drill_killed_while_making_its_scratch_directory_leaves_it_to_a_drill_a_minute_later(tmp_path):
    root = tmp_path / "drill"
    # killed before its lock file was made, and after; one made just now; one whose drill holds the lock
    make_tree(str(root), {"new-nolock/": None, "new-unlocked/.lock": "", "new-young/.lock": "",
                          "new-held/.lock": ""})
    a_minute_ago = time.time() - 61
    for name in ("new-nolock", "new-unlocked", "new-held"):
        os.utime(root / name, (a_minute_ago, a_minute_ago))
    with open(root / "new-held/.lock", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert clear_leftovers(str(root)) == Cleared(removed=(str(root / "new-nolock"), str(root / "new-unlocked")))
    assert sorted(os.listdir(root)) == ["new-held", "new-young"]
