"""Freshness states with an injected clock: the real app and SQLite storage in-process, time moved by hand."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import httpx
import uvicorn

from agent.collector.app import Settings, create_app
from agent.collector.storage import open_storage
from agent.collector.tokens import TokenStore, create_token
from tests.e2e.test_collector import report

HOUR = 3600.0


@contextlib.contextmanager
def serving(app) -> Iterator[httpx.Client]:
    """The app on uvicorn in a thread, on a loopback port of its own."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test")
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30)
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(20)
        sock.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_states_follow_the_policy_high_end_plus_grace_as_time_passes(tmp_path):
    tokens_file = str(tmp_path / "tokens.toml")
    token = create_token(tokens_file, "node-a")
    create_token(tokens_file, "node-b")
    storage = open_storage(f"sqlite:///{tmp_path}/c.db")
    body = report("node-a", "db-analytics", 1)  # 4h..6h, finished now
    from agent.collector.schema import parse_time

    finished = parse_time(body["finished_at"])
    clock = Clock(finished + 60)
    app = create_app(storage, TokenStore(tokens_file), Settings(grace=HOUR), clock=clock)

    def states() -> dict:
        status = client.get("/api/v1/status").json()
        jobs = {(row["host"], row["job"]): row["state"] for row in status["jobs"]}
        hosts = {row["host"]: row["state"] for row in status["hosts"]}
        return {**jobs, **hosts}

    with serving(app) as client:
        assert states() == {"node-a": "never", "node-b": "never"}  # hosts with tokens, no report yet
        auth = {"Authorization": f"Bearer {token}"}
        assert client.post("/api/v1/reports", json=body, headers=auth).status_code == 200
        assert states() == {("node-a", "db-analytics"): "ok", ("node-b", "db-analytics"): "never",
                            "node-a": "ok", "node-b": "never"}
        clock.now = finished + 6 * HOUR + HOUR - 1  # policy high end + grace, just inside
        assert states()[("node-a", "db-analytics")] == "ok"
        clock.now = finished + 6 * HOUR + HOUR + 1
        assert states()[("node-a", "db-analytics")] == "overdue" and states()["node-a"] == "ok"
        clock.now = finished + 60 + 6 * HOUR + HOUR + 1  # received at finished + 60
        assert states()["node-a"] == "silent"  # nothing for longer than the shortest policy + grace
        page = client.get("/").text
        assert 'data-host-state="silent"' in page and 'data-state="overdue"' in page and "7 h ago" in page
        assert 'backup_host_silent{host="node-a"} 1.0' in client.get("/metrics").text
        failed = report("node-a", "db-analytics", 2, status="failed")
        clock.now = finished + 7 * HOUR + 120
        assert client.post("/api/v1/reports", json=failed, headers=auth).status_code == 200
        assert states()[("node-a", "db-analytics")] == "failing" and states()["node-a"] == "ok"
    storage.close()


def test_age_is_written_for_people():
    from agent.collector.freshness import age

    assert [age(s) for s in (None, 5, 61, 3 * HOUR + 5, 50 * HOUR)] == \
        ["never", "just now", "1 min ago", "3 h ago", "2 d ago"]


def test_the_schema_is_versioned_and_a_newer_one_is_refused(tmp_path):
    import sqlite3

    import pytest

    from agent.collector.storage import SCHEMA_VERSION, StorageError

    url = f"sqlite:///{tmp_path}/c.db"
    open_storage(url).close()
    assert open_storage(url).migrate() == SCHEMA_VERSION  # a second start migrates nothing
    with sqlite3.connect(f"{tmp_path}/c.db") as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this collector"):
        open_storage(url)


def test_a_reader_sees_changes_committed_by_another_process_even_late(tmp_path):
    from agent.collector.schema import validate

    url = f"sqlite:///{tmp_path}/c.db"
    writer, reader = open_storage(url), open_storage(url)  # as two collector processes sharing a database
    t = 1_800_000_000.0

    def put(seq: int, job: str, stamped: float) -> None:
        parsed, problems = validate(report("node-a", job, seq))
        assert parsed is not None, problems
        writer.insert_many([parsed], stamped)

    put(1, "db-analytics", t)
    jobs, hosts = reader.fleet_rows(t + 1)
    assert [row.job for row in jobs] == ["db-analytics"] and hosts[0].seq_count == 1
    put(2, "db-console", t + 5)
    # stamped before the reader's previous read, committed after it: still picked up (the overlap)
    put(3, "db-credentials", t + 0.5)
    jobs, hosts = reader.fleet_rows(t + 10)
    assert sorted(row.job for row in jobs) == ["db-analytics", "db-console", "db-credentials"]
    assert hosts[0].seq_count == 3 and hosts[0].missing == 0
    writer.close()
    reader.close()


def test_a_version_2_database_is_migrated_with_its_reports_and_keyed_by_host(tmp_path):
    import json
    import sqlite3

    from agent.collector.schema import validate
    from agent.collector.storage import MIGRATIONS

    path = f"{tmp_path}/c.db"
    old = report("node-a", "db-analytics", 1)
    with sqlite3.connect(path) as conn:  # what a collector of schema version 2 left
        for statement in MIGRATIONS[0] + MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
        conn.execute("INSERT INTO reports VALUES (?, 'node-a', 'db-analytics', 1, 'ok', 'schedule', 'mysql', 1, 2, "
                     "1, 1000, 10, 3, ?)", (old["id"], json.dumps(old)))
    storage = open_storage(f"sqlite:///{path}")
    assert [row["id"] for row in storage.reports("node-a")] == [old["id"]]
    other = dict(report("node-b", "db-analytics", 1), id=old["id"])  # the same id from another host
    parsed, problems = validate(other)
    assert parsed is not None, problems
    assert storage.insert_many([parsed], time.time()) == [True]
    assert [row["host"] for row in storage.reports(job="db-analytics")] == ["node-b", "node-a"]
    storage.close()
