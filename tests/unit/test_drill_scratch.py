"""Scratch directories of drills (agent.drill.scratch): clearing leftovers never follows a link it did not
make, and what cannot be removed is named instead of failing the drill that finds it."""

from __future__ import annotations

import os

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
