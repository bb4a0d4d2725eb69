"""Riak, command and sqlite jobs and fs hooks, with small shell scripts standing in for `riak` and
dump programs (a shell script is a real program, not a mock of our code)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

from tests.helpers import make_tree, read_tree


def script(path: str, body: str) -> str:
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def test_riak_job_stops_copies_and_starts_even_when_the_copy_fails(agent, tmp_path):
    data, etc = str(tmp_path / "var/lib/riak"), str(tmp_path / "etc/riak")
    make_tree(data, {"bitcask/0/1.bitcask.data": os.urandom(50_000), "ring/riak_core_ring": "ring"})
    make_tree(etc, {"riak.conf": "nodename = riak@127.0.0.1"})
    log = str(tmp_path / "riak.log")
    riak = script(str(tmp_path / "riak"), f'echo "$1" >> {log}; [ "$1" != stop ] || [ ! -e {tmp_path}/fail ]')
    agent.write_jobs(f'[jobs.db-riak]\ntype = "riak"\nevery = "4h..6h"\npaths = ["{data}", "{etc}"]\n'
                     f'before = ["{riak}", "stop"]\nafter = ["{riak}", "start"]\ntimeout = "30s"\n')
    [report] = agent.backup("db-riak")
    assert report["status"] == "ok" and report["files"] == 3, report
    with open(log) as handle:
        assert handle.read().split() == ["stop", "start"]
    target = str(tmp_path / "restored")
    agent.run("restore", "db-riak:latest", "--target", target, check=0)
    assert read_tree(os.path.join(target, data.lstrip("/"))) == read_tree(data)
    assert read_tree(os.path.join(target, etc.lstrip("/"))) == read_tree(etc)
    assert not os.path.exists(os.path.join(target, str(tmp_path / "riak").lstrip("/")))  # only the paths
    open(str(tmp_path / "fail"), "w").close()  # `riak stop` fails now
    result = agent.run("backup", "db-riak", "--json")
    [report] = json.loads(result.stdout)
    assert result.returncode == 1 and report["status"] == "failed" and report["snapshot"] is None
    assert report["errors"][0].startswith("before: riak exited with status 1")
    with open(log) as handle:
        assert handle.read().split() == ["stop", "start", "stop", "start"]  # `after` ran anyway


def test_command_job_streams_stdout_and_judges_by_exit_status(agent, tmp_path):
    good = script(str(tmp_path / "dump-good"), "seq 1 300000; echo end")
    bad = script(str(tmp_path / "dump-bad"), "seq 1 300000; echo 'connection lost' >&2; exit 2")
    slow = script(str(tmp_path / "dump-slow"), "seq 1 10; exec sleep 60")
    agent.write_jobs(f'[jobs.pg]\ntype = "command"\nargv = ["{good}"]\nevery = "24h"\n'
                     f'[jobs.pg-bad]\ntype = "command"\nargv = ["{bad}"]\nevery = "24h"\n'
                     f'[jobs.pg-slow]\ntype = "command"\nargv = ["{slow}"]\nevery = "24h"\ntimeout = "2s"\n')
    result = agent.run("backup", "--all", "--json")
    reports = {r["job"]: r for r in json.loads(result.stdout)}
    assert result.returncode == 1
    assert reports["pg"]["status"] == "ok" and reports["pg"]["bytes"] > 1_000_000
    assert reports["pg-bad"]["status"] == "failed" and reports["pg-bad"]["snapshot"] is None
    bad_error = reports["pg-bad"]["errors"][0]
    assert "exited with status 2" in bad_error and "connection lost" in bad_error
    assert reports["pg-slow"]["status"] == "failed" and "timed out" in reports["pg-slow"]["errors"][0]
    assert [s["job"] for s in agent.snapshots()] == ["pg"]
    out = str(tmp_path / "pg.dump")
    agent.run("restore", "pg:latest", "--target", out, check=0)
    with open(out) as handle:
        lines = handle.read().split()
    assert lines[0] == "1" and lines[-1] == "end" and len(lines) == 300001
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    [again] = agent.backup("pg")
    assert again["changed"] is False and again["new_bytes"] == 0


def test_sqlite_job_copies_consistently_and_restores(agent, tmp_path):
    database = str(tmp_path / "console.db")
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO accounts (name) VALUES (?)", [(f"a{n}",) for n in range(2000)])
    agent.write_jobs(f'[jobs.db-console]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n')
    [report] = agent.backup("db-console")
    assert report["status"] == "ok"
    out = str(tmp_path / "restored.db")
    agent.run("restore", "db-console:latest", "--target", out, check=0)
    with sqlite3.connect(out) as connection:
        assert connection.execute("SELECT COUNT(*), MAX(name) FROM accounts").fetchone() == (2000, "a999")


def test_fs_hooks_run_around_the_backup(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    marker = str(tmp_path / "marker")
    agent.write_jobs(f'[jobs.svc]\ntype = "fs"\npath = "{src}"\nevery = "24h"\n'
                     f'before = ["sh", "-c", "echo prepared > {src}/prepared.txt"]\n'
                     f'after = ["sh", "-c", "touch {marker}"]\n')
    [report] = agent.backup("svc")
    assert report["status"] == "ok" and report["files"] == 2 and os.path.exists(marker)
