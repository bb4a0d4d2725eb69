"""Restore drills with the real command: healthy jobs pass; damage in the repository, a dump cut short
and a dump that does not load each fail the drill with the cause named; no throwaway server of a drill
outlives it (a pass, a failure, a kill -9), found by the marker in its argv, never by name."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    agent_command,
    fs_job,
    make_tree,
    new_agent,
    nobody_can_use,
    process_argv,
    process_state,
    wait_for_child,
)


def drill(agent, *args: str, expect: int) -> list:
    result = agent.run("drill", *args, "--json", check=expect, timeout=600)
    return json.loads(result.stdout)


def marked(path: str) -> list:
    """Processes whose argv names something under `path` (a drill's server carries its scratch dir)."""
    marker = os.fsencode(path.rstrip("/") + "/")
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit()
            and any(marker in arg for arg in process_argv(int(pid))) and process_state(int(pid)) not in ("Z", "")]


def scratch_left(agent) -> list:
    root = os.path.join(agent.state_dir, "drill")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def packs_of(agent) -> list:
    data = os.path.join(agent.repository, "data")
    return [os.path.join(data, sub, name) for sub in sorted(os.listdir(data))
            for name in sorted(os.listdir(os.path.join(data, sub)))]


@pytest.fixture
def tree_jobs(agent, tmp_path):
    tree = str(tmp_path / "api")
    make_tree(tree, {"conf/server.xml": "<Server/>", "webapps/app.war": os.urandom(300_000), "logs/": None,
                     "bin/start.sh": "#!/bin/sh\n"})
    os.chmod(os.path.join(tree, "bin/start.sh"), 0o750)
    os.symlink("conf/server.xml", os.path.join(tree, "current"))
    database = str(tmp_path / "app.db")
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [(str(n),) for n in range(2000)])
    db.close()
    agent.write_jobs(fs_job("api", tree) + f'[jobs.app-db]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n'
                     '[jobs.export]\ntype = "command"\nargv = ["seq", "200000"]\nevery = "24h"\n')
    agent.backup()
    return tree


def test_healthy_jobs_pass_and_leave_nothing(agent, tree_jobs):
    reports = drill(agent, "--all", expect=0)
    by_job = {report["job"]: report for report in reports}
    latest = {row["job"]: row["id"] for row in agent.snapshots()}
    assert set(by_job) == {"api", "app-db", "export"}
    for job, report in by_job.items():
        assert report["trigger"] == "drill" and report["status"] == "ok" and report["errors"] == [], report
        assert report["snapshot"] == latest[job] and report["drill_every"] == 7 * 86400
    assert by_job["api"]["files"] == 3
    assert by_job["export"]["bytes"] == len("".join(f"{n}\n" for n in range(1, 200_001)))
    assert scratch_left(agent) == []
    # a drill is no backup: the job's own state (what `status` and the timer read) is untouched
    status = json.loads(agent.run("status", "api", "--json", check=0).stdout)
    assert "drill" not in json.dumps(status)


def test_flipped_byte_in_a_pack_names_the_file(agent, tree_jobs):
    big = max(packs_of(agent), key=os.path.getsize)  # holds app.war's blob
    with open(big, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0x01]))
    [report] = drill(agent, "api", expect=1)
    assert report["status"] == "failed" and report["trigger"] == "drill"
    assert any(error.startswith("webapps/app.war: ") and "does not match" in error for error in report["errors"]), \
        report["errors"]
    assert scratch_left(agent) == []


def test_deleted_pack_fails_the_drill(agent, tree_jobs):
    for pack in packs_of(agent):
        os.unlink(pack)
    reports = {report["job"]: report for report in drill(agent, "--all", expect=1)}
    assert all(report["status"] == "failed" for report in reports.values())
    assert all("is missing" in " ".join(report["errors"]) for report in reports.values()), reports


def test_truncated_dump_fails_the_drill(agent, tree_jobs):
    [snapshot] = [row for row in agent.snapshots() if row["job"] == "export"]
    [api] = drill(agent, "api", expect=0)  # the other job's data is not touched by the damage below
    before = set(packs_of(agent))
    agent.run("forget", api["snapshot"], check=0)
    for pack in before:  # cut every pack in half: the export's dump can no longer be read to its end
        os.truncate(pack, os.path.getsize(pack) // 2)
    [report] = drill(agent, "export", expect=1)
    assert report["snapshot"] == snapshot["id"] and report["status"] == "failed"
    assert "truncated" in report["errors"][0] and f"snapshot {snapshot['id'][:12]}" in report["errors"][0]


def test_unknown_job_and_no_snapshot(agent, tree_jobs, tmp_path):
    result = agent.run("drill", "nope")
    assert result.returncode == 2 and "unknown job 'nope'" in result.stderr
    agent.write_jobs(fs_job("fresh", str(tmp_path)), "fresh.toml")
    [report] = drill(agent, "fresh", expect=1)
    assert report["snapshot"] is None and "no snapshot" in report["errors"][0]


def test_another_hosts_jobs_in_a_repository(agent, tree_jobs, tmp_path):
    from tests.helpers import new_agent

    central = new_agent(str(tmp_path / "central"))
    result = central.run("drill", "--repository", agent.repository, "--host", "test-node", "--all", "--json",
                         check=0)
    reports = json.loads(result.stdout)
    assert {report["job"] for report in reports} == {"api", "app-db", "export"}
    assert {report["host"] for report in reports} == {"test-node"}
    assert central.run("drill", "--repository", agent.repository, "--host", "other", "--all").returncode == 2


def test_a_killed_drills_leftovers_are_cleared_by_the_next(agent, tree_jobs):
    # a leftover of a killed drill: its scratch dir (no live lock) and a process still running from it
    leftover = os.path.join(agent.state_dir, "drill", "run-killed")
    os.makedirs(os.path.join(leftover, "mysql", "data"))
    straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                  f"--datadir={leftover}/mysql/data"])
    try:
        drill(agent, "export", expect=0)
        assert straggler.wait(timeout=30) == -signal.SIGKILL
        assert scratch_left(agent) == []
    finally:
        if straggler.poll() is None:
            straggler.kill()
            straggler.wait()


def test_a_linked_drill_directory_is_refused_and_what_it_links_to_kept(agent, tree_jobs, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    make_tree(str(elsewhere / "run-important"), {"data.db": "keep me"})  # looks like a leftover, has no lock
    os.symlink(elsewhere, os.path.join(agent.state_dir, "drill"))
    [report] = drill(agent, "export", expect=1)
    assert report["status"] == "failed" and report["errors"] == [
        f"{agent.state_dir}/drill: a symbolic link, not followed: drills keep their scratch directories in a "
        "directory of their own (remove the link)"]
    assert os.listdir(elsewhere) == ["run-important"]
    assert (elsewhere / "run-important" / "data.db").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the test area to another user")
def test_a_user_without_override_drills_an_unreadable_directory_and_removes_its_scratch(shared_tmp):
    agent = new_agent(str(shared_tmp / "agent"))
    locked, plain = str(shared_tmp / "u"), str(shared_tmp / "plain")
    make_tree(locked, {"zero/in/h": "hidden", "top.txt": "t"})
    make_tree(plain, {"a.txt": "a"})
    os.chmod(os.path.join(locked, "zero/in"), 0o000)
    os.chmod(os.path.join(locked, "zero"), 0o500)
    agent.write_jobs(fs_job("u", locked) + fs_job("plain", plain))
    agent.backup()  # as root, who reads everything
    user = nobody_can_use(shared_tmp)  # repository and state now nobody's
    result = agent.run("drill", "u", "--json", user=user, timeout=600)
    [report] = json.loads(result.stdout)
    assert result.returncode == 0 and report["status"] == "ok", (report, result.stderr)
    assert (report["files"], report["errors"], report["warnings"]) == (2, [], [])
    assert scratch_left(agent) == []

    # a leftover nobody may not remove (root's): named as a warning; no drill fails because of it
    stuck = os.path.join(agent.state_dir, "drill", "run-stuck")
    make_tree(stuck, {"data/f": "x"})
    for _ in range(2):
        result = agent.run("drill", "plain", "--json", user=user, timeout=600)
        [report] = json.loads(result.stdout)
        assert result.returncode == 0 and report["status"] == "ok", (report, result.stderr)
        assert report["warnings"] == [f"{stuck}: the scratch directory of an earlier drill cannot be removed "
                                      "(Permission denied); it is left for someone to remove"]
        assert scratch_left(agent) == ["run-stuck"]


# --- mysql: a throwaway server of the drill's own -------------------------------------------------------

def mysql_job(agent, name: str, database: str, options_file: str, extra: str = "") -> None:
    agent.write_jobs(f'[jobs.{name}]\ntype = "mysql"\ndatabase = "{database}"\nevery = "4h..6h"\n'
                     f'options_file = "{options_file}"\ndrill_every = "2d"\n{extra}\n', f"{name}.toml")


def test_mysql_drill_counts_rows_and_stops_its_server(agent, mariadb):
    mariadb.sql("DROP DATABASE IF EXISTS drilled; CREATE DATABASE drilled")
    mariadb.sql("CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20)); CREATE TABLE `b c` (id INT); "
                "INSERT INTO a SELECT seq, 'x' FROM seq_1_to_1234; INSERT INTO `b c` VALUES (1), (2); "
                "CREATE VIEW v AS SELECT id FROM a", "drilled")
    mysql_job(agent, "db", "drilled", mariadb.options_file)
    agent.backup("db")
    [report] = drill(agent, "db", expect=0)
    assert report["status"] == "ok" and report["type"] == "mysql", report
    assert report["tables"] == [{"table": "drilled.a", "rows": 1234}, {"table": "drilled.b c", "rows": 2}]
    assert report["drill_every"] == 2 * 86400
    assert marked(agent.state_dir) == [] and scratch_left(agent) == []


def test_mysql_dump_that_does_not_load_fails_with_the_load_error(agent, mariadb, tmp_path):
    script = tmp_path / "fake-dump"
    # loads half way: a database and a good table, then a statement the server cannot parse
    script.write_text("#!/bin/sh\ncat <<'EOF'\nCREATE DATABASE whatever;\nUSE whatever;\n"
                      "CREATE TABLE good (id INT);\nINSERT INTO good VALUES (1);\nCREATE TABLE broken (id INT,;\n"
                      "-- Dump completed on 2026-11-30\nEOF\n")
    script.chmod(0o755)
    mysql_job(agent, "db-bad", "whatever", mariadb.options_file, f'dump_command = "{script}"')
    [backup] = agent.backup("db-bad")
    assert backup["status"] == "ok", backup
    [report] = drill(agent, "db-bad", expect=1)
    assert report["snapshot"] == backup["snapshot"] and report["status"] == "failed"
    assert "the dump does not load" in report["errors"][0] and "ERROR 1064" in report["errors"][0] \
        and "at line 5" in report["errors"][0], report
    assert marked(agent.state_dir) == [] and scratch_left(agent) == []


def test_no_server_outlives_a_killed_drill(agent, mariadb, tmp_path):
    mariadb.sql("DROP DATABASE IF EXISTS slow; CREATE DATABASE slow")
    mariadb.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARBINARY(200)); INSERT INTO t SELECT seq, "
                "UNHEX(SHA2(seq, 512)) FROM seq_1_to_20000", "slow")
    mysql_job(agent, "db-slow", "slow", mariadb.options_file)
    agent.backup("db-slow")
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "drill", "db-slow"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = wait_for_child(proc.pid, ["mariadbd", "mysqld"], timeout=120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while process_state(server) not in ("", "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_state(server) in ("", "Z"), "the drill's server outlived the drill"
        assert marked(agent.state_dir) == []
        assert len(scratch_left(agent)) == 1  # the killed drill's scratch dir ...
        drill(agent, "db-slow", expect=0)
        assert scratch_left(agent) == [] and marked(agent.state_dir) == []  # ... cleared by the next one
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
