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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the test area to another user")
def test_a_user_without_override_drills_unreadable_files_and_an_unsearchable_directory(shared_tmp):
    agent = new_agent(str(shared_tmp / "agent"))
    tree = str(shared_tmp / "t")
    make_tree(tree, {"open/o": "zero", "wonly": "write only", "list/f": "in a 0600 directory", "x": "0644"})
    modes = {"open/o": 0o000, "wonly": 0o200, "list": 0o600}
    for path, mode in modes.items():
        os.chmod(os.path.join(tree, path), mode)
    agent.write_jobs(fs_job("t", tree))
    agent.backup()  # as root, who reads everything
    user = nobody_can_use(shared_tmp)
    result = agent.run("drill", "t", "--json", user=user, timeout=600)
    [report] = json.loads(result.stdout)
    assert result.returncode == 0 and report["status"] == "ok", (report, result.stderr)
    assert (report["files"], report["errors"], report["warnings"]) == (4, [], [])
    assert scratch_left(agent) == []


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


def spooled(agent) -> list:
    """The reports waiting in the agent's spool for the collector, as documents."""
    from agent.report.spool import Spool

    spool = Spool(agent.state_dir)
    return [json.loads(spool.read(entry) or b"null") for entry in spool.pending()]


@pytest.mark.parametrize("encrypted", [True, False], ids=["tampered-encrypted", "not-json"])
def test_a_repository_that_cannot_be_opened_fails_each_drill_in_its_report(tmp_path, encrypted):
    """A damaged repository is no usage error: every drill asked for ends in a failed report naming the
    config (printed with --json, spooled for the collector), exit 1, as a backup in the same state."""
    from tests.e2e.test_encryption import encrypt, generate_identity
    from tests.helpers import new_agent

    agent = new_agent(str(tmp_path / "node"))
    identity = str(tmp_path / "operator" / "identity")
    if encrypted:
        encrypt(agent, [generate_identity(agent, identity)])
    tree = str(tmp_path / "svc")
    make_tree(tree, {"conf/a.xml": "<a/>"})
    agent.write_jobs(fs_job("svc", tree) + '[jobs.export]\ntype = "command"\nargv = ["seq", "10"]\nevery = "24h"\n')
    assert [report["status"] for report in agent.backup()] == ["ok", "ok"]
    config = os.path.join(agent.repository, "config.json")
    with open(config) as handle:
        text = handle.read()
    if encrypted:  # one digit of the repository id changed: its MAC no longer matches
        repo_id = json.loads(text)["id"]
        text = text.replace(f'"{repo_id}"', f'"{repo_id[:3]}{"1" if repo_id[3] != "1" else "2"}{repo_id[4:]}"')
        why = "authentication failed"
    else:
        text, why = text[: len(text) // 2], "not valid JSON"
    with open(config, "w") as handle:
        handle.write(text)
    before = spooled(agent)

    result = agent.run("drill", "--all", "--json", *(("--identity", identity) if encrypted else ()), check=1)
    reports = json.loads(result.stdout)
    assert [(report["job"], report["type"]) for report in reports] == [("svc", "fs"), ("export", "command")]
    for report in reports:
        assert report["trigger"] == "drill" and report["status"] == "failed" and report["snapshot"] is None
        [error] = report["errors"]
        assert error.startswith(f"the repository cannot be opened: {config}") and why in error, error
    assert config in result.stderr and "Traceback" not in result.stderr
    added = spooled(agent)[len(before):]
    assert [report["id"] for report in added] == [report["id"] for report in reports]
    shown = agent.run("drill", "svc", *(("--identity", identity) if encrypted else ()), check=1)  # not --json
    assert "svc: FAILED: no snapshot" in shown.stdout and why in shown.stdout + shown.stderr


def test_unreachable_storage_fails_each_drill_in_its_report(agent, tmp_path):
    credentials = tmp_path / "s3.credentials"
    credentials.write_text("[default]\naws_access_key_id = AKTEST\naws_secret_access_key = secret\n")
    os.chmod(credentials, 0o600)
    with open(agent.config) as handle:  # port 9 of loopback: nothing listens there
        text = handle.read().replace(f'"{agent.repository}"', '"s3:http://127.0.0.1:9/backups/node"')
    with open(agent.config, "w") as handle:
        handle.write(text + f'[s3]\ncredentials_file = "{credentials}"\n[encryption]\ndisabled = true\n')
    agent.write_jobs(fs_job("api", str(tmp_path)) + fs_job("web", str(tmp_path)))
    [backup, _] = agent.backup(expect=1)  # the same state, for a backup: a failed report
    result = agent.run("drill", "--all", "--json", check=1)
    reports = json.loads(result.stdout)
    assert [report["job"] for report in reports] == ["api", "web"]
    for report in reports:
        assert report["status"] == "failed" and report["trigger"] == "drill"
        assert report["errors"] == [f"the repository cannot be opened: {backup['errors'][0]}"]
        assert "127.0.0.1:9" in report["errors"][0] and "cannot connect" in report["errors"][0]
    assert [report["id"] for report in spooled(agent)[-2:]] == [report["id"] for report in reports]


def test_a_damaged_latest_snapshot_document_is_named_by_drill_and_restore(agent, tree_jobs, tmp_path):
    [api] = [row for row in agent.snapshots() if row["job"] == "api"]
    document = os.path.join(agent.repository, "snapshots", api["id"] + ".json")
    with open(document, "r+b") as handle:  # cut short, as by a power loss
        handle.truncate(20)
    [report] = drill(agent, "api", expect=1)
    assert report["snapshot"] is None and report["status"] == "failed"
    assert report["errors"][0] == "no readable snapshot of api by host test-node to prove"
    assert [error for error in report["errors"][1:] if document in error and "damaged" in error], report["errors"]
    [other] = drill(agent, "export", expect=0)  # the other jobs are proven, the document named beside
    assert [note for note in other["warnings"] if document in note], other["warnings"]
    restored = agent.run("restore", "api:latest", "--target", str(tmp_path / "out"), check=1)
    assert "no readable snapshot" in restored.stderr and document in restored.stderr
    assert not (tmp_path / "out").exists() and "Traceback" not in restored.stderr


def test_a_drill_of_thousands_of_files_restored_by_writer_processes_passes(agent, tmp_path):
    """`drill` is a command of its own: above fanout.FAN_OUT_FILES its restore forks writer processes,
    and the proof is the same (every file checked, the scratch directory removed, no writer left)."""
    from agent.restorer.fanout import FAN_OUT_FILES

    tree = str(tmp_path / "api")
    files = FAN_OUT_FILES + 100
    make_tree(tree, {f"webapps/d{number % 50}/c{number}.class": f"class {number} " * (number % 40 + 1)
                     for number in range(files)})
    os.link(os.path.join(tree, "webapps/d0/c0.class"), os.path.join(tree, "webapps/d49/another-name"))
    agent.write_jobs(fs_job("api", tree))
    agent.backup()
    [report] = drill(agent, "api", expect=0)
    assert report["status"] == "ok" and report["errors"] == [] and report["files"] == files + 1, report
    assert scratch_left(agent) == [] and marked(str(agent.state_dir)) == []
