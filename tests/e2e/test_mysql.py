"""MySQL/MariaDB jobs against a real throwaway mariadbd (see tests/fixtures/mariadb.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.fixtures.mariadb import PASSWORD
from tests.helpers import agent_command, process_argv, process_state, wait_for_child

DUMP_TOOLS = ("mariadb-dump", "mysqldump")


def mysql_job(agent, name: str, database: str, options_file: str, extra: str = "") -> None:
    agent.write_jobs(f'[jobs.{name}]\ntype = "mysql"\ndatabase = "{database}"\nevery = "4h..6h"\n'
                     f'options_file = "{options_file}"\n{extra}\n', f"{name}.toml")


def fill(mariadb, database: str, rows: int, width: int = 200) -> None:
    mariadb.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    mariadb.sql("CREATE TABLE events (id INT PRIMARY KEY AUTO_INCREMENT, account INT, kind VARCHAR(20), "
                f"payload VARBINARY({width * 2}), created DATETIME) ENGINE=InnoDB; "
                "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT) ENGINE=InnoDB; "
                "INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_100; "
                "CREATE TRIGGER events_ai AFTER INSERT ON events FOR EACH ROW SET @last = NEW.id; "
                "CREATE PROCEDURE total() SELECT SUM(balance) FROM accounts", database)
    mariadb.sql(f"INSERT INTO events (account, kind, payload, created) SELECT seq % 100, "
                f"ELT(1 + seq % 3, 'login', 'launch', 'bill'), "
                f"UNHEX(SHA2(CONCAT(seq, REPEAT('x', {width})), 512)) , NOW() - INTERVAL seq SECOND "
                f"FROM seq_1_to_{rows}", database)


def test_dump_restore_round_trip_checksums_equal_and_to_database_rules(agent, mariadb, tmp_path):
    fill(mariadb, "analytics", 20_000)
    mariadb.sql("INSERT INTO events (account, kind, payload) VALUES (1, 'bin', 0x00FF00FE0A0D27225C)", "analytics")
    mysql_job(agent, "db-analytics", "analytics", mariadb.options_file)
    [report] = agent.backup("db-analytics")
    assert report["status"] == "ok" and report["type"] == "mysql" and report["snapshot"], report
    dump = str(tmp_path / "analytics.sql")
    agent.run("restore", "db-analytics:latest", "--target", dump, check=0)
    with open(dump, "rb") as handle:
        text = handle.read()
    assert b"-- Dump completed" in text and b"TRIGGER events_ai" in text and b"PROCEDURE `total`" in text
    agent.run("restore", "db-analytics:latest", "--to-database", "analytics_copy", check=0)
    assert mariadb.checksums("analytics_copy") == mariadb.checksums("analytics")
    assert mariadb.sql("SELECT HEX(payload) FROM events WHERE kind = 'bin'", "analytics_copy") == \
        mariadb.sql("SELECT HEX(payload) FROM events WHERE kind = 'bin'", "analytics") == ["00FF00FE0A0D27225C"]
    refused = agent.run("restore", "db-analytics:latest", "--to-database", "analytics_copy")
    assert refused.returncode == 1 and "not empty" in refused.stderr
    agent.run("restore", "db-analytics:latest", "--to-database", "analytics_copy", "--force", check=0)
    assert mariadb.checksums("analytics_copy") == mariadb.checksums("analytics")


def test_concurrent_writer_does_not_break_consistency(agent, mariadb, tmp_path):
    fill(mariadb, "provisioning", 50_000)
    stop = threading.Event()

    def transfers() -> None:
        # money moves between accounts in transactions: any consistent snapshot sums to 100000
        number = 0
        while not stop.is_set():
            number += 1
            mariadb.sql(f"START TRANSACTION; UPDATE accounts SET balance = balance - 7 WHERE id = {number % 100 + 1};"
                        f" UPDATE accounts SET balance = balance + 7 WHERE id = {(number * 7) % 100 + 1};"
                        "INSERT INTO events (account, kind) VALUES (1, 'transfer'); COMMIT", "provisioning")

    writer = threading.Thread(target=transfers)
    writer.start()
    try:
        mysql_job(agent, "db-provisioning", "provisioning", mariadb.options_file)
        [report] = agent.backup("db-provisioning")
    finally:
        stop.set()
        writer.join()
    assert report["status"] == "ok"
    agent.run("restore", "db-provisioning:latest", "--to-database", "provisioning_copy", check=0)
    assert mariadb.sql("SELECT SUM(balance) FROM accounts", "provisioning_copy") == ["100000"]


def test_dedup_after_append_and_recent_updates(agent, mariadb, tmp_path):
    fill(mariadb, "analytics2", 250_000)  # about 50 MB of dump
    mysql_job(agent, "db-a2", "analytics2", mariadb.options_file)
    [first] = agent.backup("db-a2")
    assert first["bytes"] > 40_000_000, first
    # the analytics pattern: 1% new rows, and the newest rows updated
    mariadb.sql("INSERT INTO events (account, kind, payload, created) SELECT seq % 100, 'launch', "
                "UNHEX(SHA2(CONCAT('new', seq), 512)), NOW() FROM seq_1_to_2500; "
                "UPDATE events SET kind = 'billed' WHERE id > 247500", "analytics2")
    [second] = agent.backup("db-a2")
    assert second["status"] == "ok" and second["changed"] is True
    assert second["new_bytes"] < 0.10 * second["bytes"], (second["new_bytes"], second["bytes"])


def test_failures_never_make_a_snapshot_and_never_show_the_password(agent, mariadb, tmp_path):
    fill(mariadb, "credentials", 2000)
    wrong = str(tmp_path / "wrong.cnf")
    with open(os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        handle.write(f"[client]\nuser=backup\npassword=not-{PASSWORD}\nsocket={mariadb.socket}\n")
    mysql_job(agent, "db-credentials", "credentials", wrong)
    result = agent.run("backup", "db-credentials", "--json")
    assert result.returncode == 1
    [report] = json.loads(result.stdout)
    assert report["status"] == "failed" and report["snapshot"] is None
    assert "Access denied" in " ".join(report["errors"])
    assert PASSWORD not in result.stdout + result.stderr and f"not-{PASSWORD}" not in result.stdout
    assert agent.snapshots("db-credentials") == []
    # a dump tool killed by a signal mid-dump: stopped first, so it cannot finish before the kill lands
    fill(mariadb, "console", 300_000)
    mysql_job(agent, "db-console", "console", mariadb.options_file)
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "db-console", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dump = wait_for_child(proc.pid, DUMP_TOOLS)
        seen_argv = [process_argv(proc.pid), process_argv(dump)]
        stop_running(dump)
        os.kill(dump, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [report] = json.loads(out)
    assert proc.returncode == 1 and report["status"] == "failed" and report["snapshot"] is None
    assert any("SIGKILL" in e for e in report["errors"]), report["errors"]
    assert agent.snapshots("db-console") == []
    assert all(seen_argv) and not any(PASSWORD.encode() in arg for argv in seen_argv for arg in argv)
    assert PASSWORD not in out + err
    assert agent.run("verify").returncode == 0


def stop_running(pid: int) -> None:
    """SIGSTOP `pid` and wait until it is stopped: from then on it cannot finish by itself."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while process_state(pid) not in ("T", "t"):
        assert process_state(pid) not in ("Z", ""), f"process {pid} exited before it could be stopped"
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.001)


def bytes_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as handle:
        return int(next(line for line in handle if line.startswith("wchar:")).split()[1])


def test_server_killed_mid_dump_fails_without_snapshot(agent, tmp_path):
    from tests.fixtures.mariadb import start_mariadb

    server = start_mariadb(str(tmp_path / "own-server"))
    proc = None
    dump = None
    try:
        fill(server, "enstratus_console", 400_000)
        [[payload]] = [server.sql("SELECT SUM(LENGTH(payload)) FROM events", "enstratus_console")]
        mysql_job(agent, "db-ec", "enstratus_console", server.options_file)
        proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "db-ec", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dump = wait_for_child(proc.pid, DUMP_TOOLS)
        # the dump is demonstrably in progress: stopped while its server still sends the big table, with
        # less than half of that table's hex text written (the rest cannot sit in a pipe or socket buffer)
        deadline = time.monotonic() + 60
        while True:
            stop_running(dump)
            reading = server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'backup' "
                                 "AND INFO LIKE 'SELECT%FROM `events`%'")
            if reading == ["1"]:
                break
            assert time.monotonic() < deadline, "the dump never reached the events table"
            os.kill(dump, signal.SIGCONT)
            time.sleep(0.01)
        assert bytes_written(dump) < int(payload), (bytes_written(dump), payload)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        os.kill(dump, signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if dump is not None and process_state(dump) in ("T", "t"):
            os.kill(dump, signal.SIGCONT)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    [report] = json.loads(out)
    assert report["status"] == "failed" and report["snapshot"] is None, report
    assert any("Lost connection" in e or "trailer" in e for e in report["errors"]), report["errors"]
    assert agent.snapshots("db-ec") == []


def test_big_dump_streams_with_bounded_memory(agent, mariadb, tmp_path):
    if not os.path.exists("/usr/bin/time"):
        pytest.skip("needs /usr/bin/time")
    fill(mariadb, "bigdb", 1_500_000, width=100)  # ~260 MB of dump text
    mysql_job(agent, "db-big", "bigdb", mariadb.options_file)
    result = agent.run("backup", "db-big", "--json", user=["/usr/bin/time", "-f", "%M"], check=0, timeout=600)
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    [report] = json.loads(result.stdout)
    assert report["bytes"] > 240_000_000
    # the bound is the chunk window and one pack buffer, whatever the dump's size
    assert peak_kib < 120 * 1024, (peak_kib, report["bytes"])
