"""The sweep of restores' temp files: what it takes (a dead restore's file) and what it never takes (one
a live restore holds, one just changed, one the snapshot holds, anything that is not a regular file)."""

from __future__ import annotations

import os

import pytest

from agent import leftovers
from agent.leftovers import hold, is_temp_name, sweep

DEAD, LIVE, HELD = ".restore-0123456789abc", ".restore-0123456789abd", ".restore-0123456789abe"


@pytest.fixture
def directory(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def test_temp_names_are_the_shapes_restores_make():
    assert is_temp_name(DEAD) and is_temp_name(".restore-" + "f" * 16)
    assert not is_temp_name(".restore-0123") and not is_temp_name(".restore-0123456789abcx")
    assert not is_temp_name("restore-0123456789abc") and not is_temp_name(".restore-0123456789ABC")


def test_only_dead_restores_files_go(directory, monkeypatch):
    path, fd = directory
    for name in (DEAD, LIVE, HELD, "keep.txt", ".restore-0123456789abf"):
        (path / name).write_bytes(b"x")
    os.mkdir(path / ".restore-0123456789ac0")
    os.symlink("keep.txt", path / ".restore-0123456789ac1")
    live = os.open(path / LIVE, os.O_RDONLY)
    try:
        hold(live)
        monkeypatch.setattr(leftovers, "SETTLE_SECONDS", 0)
        dry = sweep(fd, {HELD}, dry_run=True)
        assert (dry.removed, dry.recent) == ([DEAD, ".restore-0123456789abf"], [])
        assert (path / DEAD).exists()
        swept = sweep(fd, {HELD})
        assert swept.removed == [DEAD, ".restore-0123456789abf"]
    finally:
        os.close(live)
    assert sorted(os.listdir(path)) == sorted([LIVE, HELD, "keep.txt", ".restore-0123456789ac0",
                                               ".restore-0123456789ac1"])
    monkeypatch.setattr(leftovers, "SETTLE_SECONDS", 3600)  # everything changed within the last hour
    recent = sweep(fd)
    assert (recent.removed, recent.recent) == ([], [LIVE, HELD])
    assert recent.notes(lambda name: f"d/{name}") == [
        f"d/{name}: a temp file of a restore that is running or was interrupted a moment ago; left as it is"
        for name in (LIVE, HELD)]
