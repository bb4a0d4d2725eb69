"""Progress on stderr: drawn on a real terminal (a pseudo-terminal here), never when stderr is a pipe or
a file, never with --json; stdout stays the same either way."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from typing import List, Tuple

import pytest

from tests.helpers import agent_command, fs_job, make_tree


def on_terminal(agent, *args: str) -> Tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal: (exit status, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    shown: List[bytes] = []

    def drain() -> None:  # the terminal must be read while the command runs, or its writes would block
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the last holder of the terminal side closed it
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.run([*agent_command(), "--config", agent.config, *args], stdout=subprocess.PIPE,
                              stderr=terminal, stdin=subprocess.DEVNULL, timeout=120,
                              env={**os.environ, "TZ": "UTC", "COLUMNS": "120"})
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    return proc.returncode, proc.stdout.decode(), b"".join(shown).decode(errors="replace")


@pytest.fixture
def job(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {f"lib/{n}.jar": os.urandom(200_000) for n in range(6)} | {"conf/server.xml": "<Server/>"})
    agent.write_jobs(fs_job("svc", src))
    return agent


def test_backup_restore_and_verify_show_progress_on_a_terminal(job, tmp_path):
    code, out, shown = on_terminal(job, "backup", "svc")
    assert code == 0 and out.startswith("svc: ok snapshot")
    assert "svc:" in shown and "entries" in shown and "B/s" in shown, shown

    code, out, shown = on_terminal(job, "restore", "svc:latest", "--target", str(tmp_path / "out"))
    assert code == 0 and out == ""
    assert "100%" in shown and "7/7 files" in shown and "<00:00" in shown, shown  # files, bytes, rate, ETA
    assert "1.20M/1.20M" in shown, shown  # 1,200,009 bytes in MB, the unit of the rate beside it

    code, out, shown = on_terminal(job, "verify", "--read-data")
    assert code == 0 and out.startswith("ok:")
    assert "verify:" in shown and "100%" in shown and "1/1 pack]" in shown, shown


def test_no_progress_with_json_or_when_stderr_is_not_a_terminal(job, tmp_path):
    code, out, shown = on_terminal(job, "backup", "svc", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "ok"
    assert "entries" not in shown and "B/s" not in shown, shown
    code, _, shown = on_terminal(job, "verify")  # without --read-data verify reads no data: nothing to show
    assert code == 0 and "packs]" not in shown and "%" not in shown, shown
    piped = job.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=0)
    assert "%" not in piped.stderr and "B/s" not in piped.stderr
    assert piped.stderr.startswith("restored snapshot")
    piped = job.run("backup", "svc", check=0)
    assert piped.stderr == ""
    code, out, shown = on_terminal(job, "restore", "svc:latest", "--target", str(tmp_path / "out2"), "--json")
    assert code == 0 and json.loads(out)["files"] == 7 and "B/s" not in shown



def test_a_dump_backup_shows_the_bytes_it_stored(agent, tmp_path):
    import sqlite3

    database = str(tmp_path / "app.db")
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (v TEXT)")
        connection.executemany("INSERT INTO t VALUES (?)", [(os.urandom(64).hex(),) for _ in range(5000)])
    agent.write_jobs(f'[jobs.db-app]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n')
    code, out, shown = on_terminal(agent, "backup", "db-app")
    assert code == 0 and out.startswith("db-app: ok snapshot")
    size = os.path.getsize(database)
    assert size == 716_800 and "db-app: 717kB [" in shown and "B/s, 1 entry]" in shown, shown  # SI kB
