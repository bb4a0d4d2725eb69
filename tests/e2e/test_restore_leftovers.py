"""End-to-end: the temp files of restores killed with `kill -9` (a tree's replaced file, a dump) are
removed and named by the next restore that writes there; a restore that is still writing keeps its
temp file whatever another restore into the same place does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import List

from agent.leftovers import SETTLE_SECONDS
from tests.e2e.test_daemon import wait_for
from tests.helpers import agent_command, fs_job, make_tree, process_state, read_tree

_BIG = 40_000_000


def _temps(directory: str) -> List[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(".restore-"))


def _caught_writing(agent, directory: str, *args: str) -> subprocess.Popen:
    """`restore ARGS` stopped (SIGSTOP) while a temp file of its own exists in `directory`."""
    before = set(_temps(directory))
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "restore", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: set(_temps(directory)) - before or proc.poll() is not None, timeout=120, interval=0.001)
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: process_state(proc.pid) in ("T", "Z", ""))
        assert proc.poll() is None and set(_temps(directory)) - before, \
            "the restore ended before it was caught writing"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _killed(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def _settled() -> None:
    """Past the moment a leftover could still be a live restore's temp file between two system calls."""
    time.sleep(SETTLE_SECONDS + 1)


def _tree(agent, tmp_path) -> str:
    src = str(tmp_path / "api")
    make_tree(src, {"lib/big.jar": os.urandom(_BIG), "conf/server.xml": "<Server/>"})
    agent.write_jobs(fs_job("api", src))
    agent.backup("api")
    target = str(tmp_path / "r13")
    agent.run("restore", "api:latest", "--target", target, check=0)
    return target


def test_a_killed_tree_restores_temp_file_is_removed_and_named_by_the_next_restore(agent, tmp_path):
    """(That a temp file changed a moment ago is named and left: tests/unit/test_leftovers.py.)"""
    target = _tree(agent, tmp_path)
    lib = os.path.join(target, "lib")
    with open(os.path.join(lib, "big.jar"), "r+b") as handle:  # the operator's change: replaced by a temp file
        handle.write(b"changed")
    _killed(_caught_writing(agent, lib, "api:latest", "--target", target, "--overwrite", "if-changed"))
    [leftover] = _temps(lib)
    _settled()
    again = json.loads(agent.run("restore", "api:latest", "--target", target, "--overwrite", "if-changed",
                                 "--json", check=0).stdout)
    assert again["replaced"] == 1 and again["warnings"] == [
        f"lib/{leftover}: removed, a temp file left by an interrupted restore"], again
    assert _temps(lib) == []
    assert read_tree(target) == read_tree(os.path.join(tmp_path, "api"))
    assert json.loads(agent.run("restore", "api:latest", "--target", target, "--json", check=0).stdout)[
        "warnings"] == []


def test_a_restore_never_removes_the_temp_file_of_another_one_still_writing(agent, tmp_path):
    """Restore A stalls while it writes (as one waiting for a slow object store would), long enough for
    its temp file to look old; restore B into the same target goes on around it; A then ends well."""
    target = _tree(agent, tmp_path)
    lib = os.path.join(target, "lib")
    with open(os.path.join(lib, "big.jar"), "r+b") as handle:
        handle.write(b"changed")
    first = _caught_writing(agent, lib, "api:latest", "--target", target, "--overwrite", "if-changed")
    try:
        [writing] = _temps(lib)
        _settled()
        dry = json.loads(agent.run("restore", "api:latest", "--target", target, "--overwrite", "if-changed",
                                   "--delete", "--dry-run", "--json", check=0).stdout)
        assert dry["paths"]["deleted"] == [] and dry["warnings"] == []
        second = json.loads(agent.run("restore", "api:latest", "--target", target, "--overwrite", "if-changed",
                                      "--delete", "--json", check=0).stdout)
        assert second["replaced"] == 1 and second["deleted"] == 0 and second["warnings"] == [], second
        assert _temps(lib) == [writing]
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            _killed(first)
    assert _temps(lib) == []
    assert read_tree(target) == read_tree(os.path.join(tmp_path, "api"))


def test_killed_dump_restores_leave_nothing_after_the_next_one(agent, tmp_path):
    """`restore bigdump:latest --target DIR/d.sql` and `restore --all --target DIR` write their dumps
    under temp names in DIR: the next dump restore there removes what killed ones left."""
    agent.write_jobs('[jobs.bigdump]\ntype = "command"\nevery = "24h"\n'
                     f'argv = ["head", "-c", "{_BIG}", "/dev/urandom"]\n')
    agent.backup("bigdump")
    out = str(tmp_path / "x")
    os.mkdir(out)
    _killed(_caught_writing(agent, out, "bigdump:latest", "--target", os.path.join(out, "d.sql")))
    _killed(_caught_writing(agent, out, "--all", "--target", out))
    left = _temps(out)
    assert len(left) == 2
    _settled()
    done = agent.run("restore", "bigdump:latest", "--target", os.path.join(out, "d.sql"), check=0)
    for name in left:
        assert f"{os.path.join(out, name)}: removed, a temp file left by an interrupted restore" in done.stderr
    assert sorted(os.listdir(out)) == ["d.sql"] and os.path.getsize(os.path.join(out, "d.sql")) == _BIG
