"""MySQL/MariaDB jobs against a real throwaway mariadbd (see tests/fixtures/mariadb.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


SOURCE = "enstratus-console"  # a name that must be quoted


def application_schema(mariadb, database: str) -> None:
    """An application-like schema: foreign keys, a view, a trigger, routines, an event that names its
    database explicitly, a sequence feeding a table's ids, utf8mb4 data, in a database whose defaults
    differ from the server's (latin1)."""
    name = quote(database)
    mariadb.sql(f"DROP DATABASE IF EXISTS {name}; "
                f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    mariadb.sql(f"""
        CREATE SEQUENCE invoice_seq START WITH 1000 NOCACHE;
        CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100) NOT NULL) ENGINE=InnoDB;
        CREATE TABLE invoices (id BIGINT NOT NULL DEFAULT NEXTVAL(invoice_seq) PRIMARY KEY,
            customer INT NOT NULL, amount DECIMAL(10,2), note VARCHAR(200),
            FOREIGN KEY (customer) REFERENCES customers (id)) ENGINE=InnoDB;
        CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(100)) ENGINE=InnoDB;
        CREATE VIEW big_invoices AS SELECT id, customer, amount FROM invoices WHERE amount > 50;
        CREATE TRIGGER invoices_ai AFTER INSERT ON invoices FOR EACH ROW
            INSERT INTO audit (what) VALUES (CONCAT('invoice ', NEW.id));
        CREATE FUNCTION greet(who VARCHAR(50)) RETURNS VARCHAR(100) DETERMINISTIC RETURN CONCAT('hi ', who);
        CREATE PROCEDURE bill(c INT, a DECIMAL(10,2), n VARCHAR(200))
            INSERT INTO invoices (customer, amount, note) VALUES (c, a, n);
        CREATE EVENT tick ON SCHEDULE EVERY 1 SECOND DO INSERT INTO {name}.audit (what) VALUES ('tick');
        INSERT INTO customers (name) SELECT CONCAT('Zoë ', seq, ' 😀') FROM seq_1_to_300;
        INSERT INTO invoices (customer, amount, note)
            SELECT 1 + seq % 300, seq % 97, CONCAT('Rechnung ', seq, ' — ✓') FROM seq_1_to_3000;
        CALL bill(7, 12.50, 'über 😀');
    """, database)


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def literal(value: str) -> str:
    return f"CONVERT(0x{value.encode().hex()} USING utf8mb4)"


def describe(mariadb, database: str) -> dict:
    """Everything a restore must reproduce, with the database's own name written as DB (a copy's
    sequence default names the copy, a view's tables the copy's)."""
    name, where = quote(database), literal(database)

    def rows(query: str, own_name: bool = True) -> list:
        return sorted(row.replace(name, "DB").replace(database, "DB") if own_name else row
                      for row in mariadb.sql(query))

    tables = mariadb.sql(f"SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {where} "
                         "ORDER BY TABLE_NAME")
    base = [row.split("\t")[0] for row in tables if row.endswith("BASE TABLE")]
    return {
        "defaults": rows("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                         f"WHERE SCHEMA_NAME = {where}"),
        "tables": tables,
        "rows": {table: mariadb.sql(f"SELECT COUNT(*) FROM {quote(table)}", database) for table in base},
        "checksums": mariadb.checksums(database),
        "columns": rows("SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COLUMN_DEFAULT, CHARACTER_SET_NAME, "
                        f"COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {where}"),
        "routines": rows("SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION, DTD_IDENTIFIER, "
                         "CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION "
                         f"FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {where}"),
        "parameters": rows("SELECT SPECIFIC_NAME, PARAMETER_NAME, DTD_IDENTIFIER, CHARACTER_SET_NAME, "
                           f"COLLATION_NAME FROM information_schema.PARAMETERS WHERE SPECIFIC_SCHEMA = {where}"),
        "triggers": rows("SELECT TRIGGER_NAME, EVENT_MANIPULATION, ACTION_STATEMENT, DATABASE_COLLATION "
                         f"FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {where}"),
        "views": rows(f"SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {where}"),
        # a body is the application's text: one that names the source keeps naming it (hence disabled)
        "events": rows("SELECT EVENT_NAME, EVENT_DEFINITION, INTERVAL_VALUE, INTERVAL_FIELD, DATABASE_COLLATION "
                       f"FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {where}", own_name=False),
        "event_status": rows(f"SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {where}"),
        "sequence": mariadb.sql("SELECT * FROM invoice_seq", database),
    }


def test_application_schema_restores_to_the_same_database(agent, mariadb, tmp_path):
    application_schema(mariadb, SOURCE)
    mysql_job(agent, "db-enstratus-console", SOURCE, mariadb.options_file)
    source = describe(mariadb, SOURCE)
    assert source["event_status"] == ["tick\tENABLED"] and source["defaults"] == ["utf8mb4\tutf8mb4_unicode_ci"]
    [report] = agent.backup("db-enstratus-console")
    assert report["status"] == "ok" and report["warnings"] == [], report
    dump = str(tmp_path / "dump.sql")
    agent.run("restore", "db-enstratus-console:latest", "--target", dump, check=0)
    with open(dump, "rb") as handle:
        text = handle.read()
    # loadable as it is: no table locks (a table drawing from a sequence cannot be loaded under them), and
    # the database is created with its own defaults
    assert b"LOCK TABLES" not in text
    assert b"DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" in text
    targets = ("enstratus-console-restored", "restored `it's` ✓")
    with event_scheduler_running(mariadb) as fired:
        # the source's own event stops; from here on only a restored copy's event could write its audit
        mariadb.sql(f"ALTER EVENT {quote(SOURCE)}.tick DISABLE")
        audit = mariadb.sql("SELECT COUNT(*) FROM audit", SOURCE)
        for target in targets:
            loaded = agent.run("restore", "db-enstratus-console:latest", "--to-database", target, check=0)
            assert "events restored disabled" in loaded.stderr and "tick" in loaded.stderr, loaded.stderr
        fired(3)
    assert mariadb.sql("SELECT COUNT(*) FROM audit", SOURCE) == audit
    for target in targets:
        copy = describe(mariadb, target)
        assert copy["event_status"] == ["tick\tDISABLED"]
        assert {**copy, "event_status": None} == {**source, "event_status": None}
    copy = targets[0]
    # the copy draws ids from its own sequence; the source's does not move
    [next_id] = [row.split("\t")[0] for row in source["sequence"]]
    mariadb.sql("CALL bill(3, 99, 'nach der Wiederherstellung 😀')", copy)
    assert mariadb.sql("SELECT id FROM invoices WHERE note LIKE 'nach der%'", copy) == [next_id]
    assert describe(mariadb, SOURCE)["sequence"] == source["sequence"]
    # routines take the database's utf8mb4, as in the source
    assert mariadb.sql("SELECT greet('😀 Zoë')", copy) == mariadb.sql("SELECT greet('😀 Zoë')", SOURCE) == ["hi 😀 Zoë"]


@contextlib.contextmanager
def event_scheduler_running(mariadb):
    """The server's event scheduler on, with a probe event of our own; yields fired(n), which waits
    until the probe has fired n times after the call (the scheduler demonstrably ran meanwhile)."""
    mariadb.sql("DROP DATABASE IF EXISTS probe; CREATE DATABASE probe; CREATE TABLE probe.fired (at DATETIME(6)); "
                "CREATE EVENT probe.probe ON SCHEDULE EVERY 1 SECOND DO INSERT INTO probe.fired VALUES (NOW(6))")

    def fired(times: int) -> None:
        start = int(mariadb.sql("SELECT COUNT(*) FROM probe.fired")[0])
        deadline = time.monotonic() + 30
        while int(mariadb.sql("SELECT COUNT(*) FROM probe.fired")[0]) < start + times:
            assert time.monotonic() < deadline, "the event scheduler never ran the probe"
            time.sleep(0.1)

    try:
        mariadb.sql("SET GLOBAL event_scheduler = ON")
        yield fired
    finally:
        mariadb.sql("SET GLOBAL event_scheduler = OFF; DROP DATABASE probe")


def test_dump_with_table_locks_from_older_versions_still_loads(agent, mariadb):
    """Snapshots taken before --skip-add-locks hold LOCK TABLES around each table's rows."""
    application_schema(mariadb, "legacy")
    mysql_job(agent, "db-legacy", "legacy", mariadb.options_file, 'extra_args = ["--add-locks"]')
    [report] = agent.backup("db-legacy")
    assert report["status"] == "ok", report
    agent.run("restore", "db-legacy:latest", "--to-database", "legacy_copy", check=0)
    source, copy = describe(mariadb, "legacy"), describe(mariadb, "legacy_copy")
    assert {**copy, "event_status": None} == {**source, "event_status": None}


def test_every_warning_of_a_run_is_in_its_report(agent, mariadb, tmp_path):
    fill(mariadb, "warned", 100)
    readable = str(tmp_path / "readable.cnf")
    with open(mariadb.options_file) as source, open(readable, "w") as handle:
        handle.write(source.read())
    os.chmod(readable, 0o644)
    # a dump tool that warns on stderr and still dumps fine
    tool = tmp_path / "noisy-dump"
    tool.write_text("#!/bin/sh\necho 'Warning: column statistics unavailable' >&2\n"
                    f"exec {shutil.which('mariadb-dump')} \"$@\"\n")
    tool.chmod(0o755)
    mysql_job(agent, "db-warned", "warned", readable, f'dump_command = "{tool}"')
    agent.write_jobs('[jobs.cmd-warned]\ntype = "command"\nevery = "1d"\n'
                     'argv = ["sh", "-c", "echo data; echo pg_dump: warning: old server >&2"]\n', "cmd.toml")
    reports = {report["job"]: report for report in agent.backup("db-warned", "cmd-warned")}
    db, cmd = reports["db-warned"], reports["cmd-warned"]
    assert db["status"] == "ok" and cmd["status"] == "ok", reports
    assert any(readable in w and "readable by every user" in w for w in db["warnings"]), db["warnings"]
    assert any("column statistics unavailable" in w for w in db["warnings"]), db["warnings"]
    assert any("warning: old server" in w for w in cmd["warnings"]), cmd["warnings"]
    assert not any(PASSWORD in w for report in reports.values() for w in report["warnings"])
    loaded = agent.run("restore", "db-warned:latest", "--to-database", "warned_copy", "--options-file", readable,
                       check=0)
    assert "warning: options file" in loaded.stderr and readable in loaded.stderr, loaded.stderr


def test_a_dump_that_does_not_load_leaves_no_half_loaded_database(agent, mariadb, tmp_path):
    tool = tmp_path / "bad-dump"  # a complete dump whose third statement the server refuses
    tool.write_text("#!/bin/sh\nprintf 'CREATE TABLE t (id INT);\\nINSERT INTO t VALUES (1);\\n"
                    "THIS IS NOT SQL;\\n-- Dump completed\\n'\n")
    tool.chmod(0o755)
    mysql_job(agent, "db-bad", "bad", mariadb.options_file, f'dump_command = "{tool}"')
    [report] = agent.backup("db-bad")
    assert report["status"] == "ok", report
    exists = "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}"
    for _ in range(2):  # the second attempt fails the same way, not as "not empty"
        failed = agent.run("restore", "db-bad:latest", "--to-database", "bad-copy")
        assert failed.returncode == 1 and "ERROR 1064" in failed.stderr, failed.stderr
        assert "dropped again" in failed.stderr
        assert mariadb.sql(exists.format(literal("bad-copy"))) == ["0"]
    mariadb.sql("DROP DATABASE IF EXISTS `bad-existing`; CREATE DATABASE `bad-existing`")
    failed = agent.run("restore", "db-bad:latest", "--to-database", "bad-existing")
    assert failed.returncode == 1 and "dropped" not in failed.stderr, failed.stderr
    assert mariadb.sql(exists.format(literal("bad-existing"))) == ["1"]  # never drops what it did not create


def test_a_damaged_dump_leaves_no_half_loaded_database(agent, mariadb):
    from agent.store import Repository
    from agent.store.tree import read_tree

    fill(mariadb, "damaged", 20_000)  # a dump of several chunks
    mysql_job(agent, "db-damaged", "damaged", mariadb.options_file)
    agent.backup("db-damaged")
    repo = Repository.open(agent.repository)
    [snapshot] = repo.snapshots("db-damaged")
    [dump] = [entry for entry in read_tree(repo, snapshot.tree) if entry.type == "file"]
    assert len(dump.chunks) > 2
    location = repo.index.get(dump.chunks[-1])  # the rows before it load; then the dump cannot be read
    with open(repo.describe_pack(location.pack), "r+b") as handle:
        handle.seek(location.offset + location.length // 2)
        byte = handle.read(1)
        handle.seek(location.offset + location.length // 2)
        handle.write(bytes([byte[0] ^ 0x40]))
    result = agent.run("restore", "db-damaged:latest", "--to-database", "damaged_copy")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be read" in result.stderr
    assert mariadb.sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'damaged_copy'") == ["0"]
