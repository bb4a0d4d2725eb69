"""Field faults at the collector (issue 15, kinds 6 and 11) and what a deployment changed (issue 16), on
the real collector process, each on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Dict, List

import httpx
import pytest

from tests.e2e.test_collector import report
from tests.fixtures.collector import make_token


@pytest.fixture
def served(start_collector, collector_db):
    collector = start_collector(db=collector_db)
    tokens = {host: make_token(collector.tokens_file, host) for host in ("node-a", "node-b")}
    return collector, tokens


def job_row(collector, host: str, job: str) -> dict:
    jobs = collector.get("/api/v1/status").json()["jobs"]
    return next(row for row in jobs if (row["host"], row["job"]) == (host, job))


def test_a_body_nested_100000_deep_is_a_400_not_a_server_error(served):
    collector, tokens = served
    deep = b'{"host": "node-a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = collector.post(tokens["node-a"], deep)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]
    assert collector.post(tokens["node-a"], b"[" * 200_000).status_code == 400
    assert collector.post(tokens["node-a"], report("node-a")).status_code == 200
    assert "RecursionError" not in collector.text() and "Traceback" not in collector.text()


def test_a_report_from_2099_does_not_pin_the_job(served):
    collector, tokens = served
    future = report("node-a", seq=1)
    future.update(started_at="2099-01-01T00:00:00.000000Z", finished_at="2099-01-01T00:00:05.000000Z")
    assert collector.post(tokens["node-a"], future).status_code == 200
    assert job_row(collector, "node-a", "db-analytics")["state"] == "ok"
    time.sleep(0.05)  # the failure reaches the collector after the 2099 report did
    failed = report("node-a", seq=2, status="failed")
    assert collector.post(tokens["node-a"], failed).status_code == 200
    row = job_row(collector, "node-a", "db-analytics")
    assert row["state"] == "failing" and row["last_status"] == "failed" and row["last_error"] == "dump failed: boom"
    assert not row["last_run"].startswith("2099") and not row["last_ok"].startswith("2099")
    assert 'backup_last_run_status{host="node-a",job="db-analytics"} 0.0' in collector.get("/metrics").text
    assert 'data-state="failing"' in collector.get("/").text
    assert [r["seq"] for r in collector.reports("node-a", "db-analytics")] == [2, 1]  # by the time received
    assert collector.reports("node-a")[1]["finished_at"].startswith("2099")  # what the host said is kept


def test_one_hosts_report_never_shadows_another_hosts(served):
    collector, tokens = served
    first, second = report("node-a", seq=1), report("node-b", seq=1)
    second["id"] = first["id"]  # the same report id from two hosts
    assert collector.post(tokens["node-a"], first).json()["stored"] is True
    assert collector.post(tokens["node-b"], second).json()["stored"] is True
    assert [r["host"] for r in collector.reports(job="db-analytics")] == ["node-b", "node-a"]
    failed = report("node-b", seq=2, status="failed")
    assert collector.post(tokens["node-b"], failed).status_code == 200
    assert job_row(collector, "node-a", "db-analytics")["state"] == "ok"
    assert job_row(collector, "node-b", "db-analytics")["state"] == "failing"
    assert collector.post(tokens["node-a"], first).json()["duplicate"] is True


def test_prune_and_drill_reports_are_stored_but_are_not_backups(served):
    collector, tokens = served
    assert collector.post(tokens["node-a"], report("node-a", seq=1, status="failed")).status_code == 200
    for seq, trigger in ((2, "prune"), (3, "drill"), (4, "startup")):
        body = report("node-a", seq=seq, trigger=trigger)
        assert collector.post(tokens["node-a"], body).status_code == 200, trigger
        state = job_row(collector, "node-a", "db-analytics")["state"]
        assert state == ("ok" if trigger == "startup" else "failing"), trigger
    assert [r["trigger"] for r in collector.reports("node-a")] == ["startup", "drill", "prune", "schedule"]


def test_the_job_history_shows_what_a_deployment_changed(served):
    collector, tokens = served
    paths = ["webapps/api/WEB-INF/web.xml", "webapps/api/index.jsp", "conf/<server>.xml"]
    body = report("node-a", job="services-api", trigger="change",
                  changes={"added": 1, "removed": 0, "changed": 2, "paths": paths})
    assert collector.post(tokens["node-a"], body).status_code == 200
    assert collector.reports("node-a", "services-api")[0]["changes"] == body["changes"]
    page = collector.get("/hosts/node-a/jobs/services-api").text
    assert "+1 -0 ~2" in page and "<code>webapps/api/index.jsp</code>" in page
    assert "conf/&lt;server&gt;.xml" in page  # escaped
    bad = report("node-a", job="services-api", seq=2, changes={"added": "many"})
    assert collector.post(tokens["node-a"], bad).json()["error"].startswith("changes: must be")


# --- the database restarting under load (PostgreSQL) ---------------------------------------------------


def test_the_collector_outlives_a_fast_postgresql_restart_under_load(start_collector):
    from tests.fixtures.postgres import start_postgres

    server = start_postgres()  # a server of its own: the session's is shared with other tests
    try:
        collector = start_collector(db=server.create_database("restarted"))
        token = make_token(collector.tokens_file, "node-a")
        stop = threading.Event()
        answers: List[tuple] = []  # (monotonic time, status)
        lock = threading.Lock()
        seqs = iter(range(1, 1_000_000))

        def post_forever() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    with lock:
                        seq = next(seqs)
                    try:
                        code = client.post(collector.url + "/api/v1/reports", json=report("node-a", seq=seq),
                                           headers={"Authorization": f"Bearer {token}"}).status_code
                    except httpx.TransportError:
                        code = 0
                    with lock:
                        answers.append((time.monotonic(), code))

        posters = [threading.Thread(target=post_forever, name=f"poster-{n}") for n in range(4)]
        for thread in posters:
            thread.start()
        try:
            while len(answers) < 50:
                time.sleep(0.05)
            restarting = threading.Thread(target=server.restart, args=(4.0,), name="pg-restart")
            restarting.start()
            reads: Dict[str, httpx.Response] = {}
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline and len(reads) < 5:  # while the database is down
                time.sleep(0.5)
                for path in ("/api/v1/status", "/", "/metrics", "/api/v1/reports", "/healthz"):
                    response = collector.get(path)
                    if response.status_code == 503:
                        reads[path] = response
            restarting.join()
            back = time.monotonic()
            while time.monotonic() < back + 15:  # 200s again within seconds (the backoff is at most 2 s)
                with lock:
                    recent = [code for when, code in answers if when > back]
                if len(recent) >= 10 and set(recent[-10:]) == {200}:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in posters:
                thread.join(60)
        assert set(reads) >= {"/api/v1/status", "/api/v1/reports", "/healthz"}, sorted(reads)
        assert all(r.headers.get("Retry-After") for r in reads.values())
        codes = {code for _, code in answers}
        assert 503 in codes and 500 not in codes and 0 not in codes, codes
        recent = [code for when, code in answers if when > back]
        assert len(recent) >= 10 and set(recent[-10:]) == {200}, recent[-20:]
        assert collector.get("/healthz").status_code == 200
        assert collector.get("/api/v1/status").status_code == 200
        assert "Traceback" not in collector.text()
        acknowledged = sum(1 for _, code in answers if code == 200)
        assert f"backup_reports_total {float(acknowledged)}" in collector.get("/metrics").text  # each 200 stored once
    finally:
        server.stop()
