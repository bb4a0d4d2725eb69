"""The collector as a real process, the same suite on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.fixtures.collector import make_token


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def report(host: str, job: str = "db-analytics", seq: int = 1, status: str = "ok", age_hours: float = 0.0,
           low: float = 4 * 3600, high: float = 6 * 3600, **extra) -> dict:
    finished = datetime.now(timezone.utc) - timedelta(hours=age_hours)
    body = {"id": f"r-{host}-{job}-{seq}-{time.monotonic_ns()}", "host": host, "job": job, "type": "mysql",
            "trigger": "schedule", "status": status, "changed": True, "snapshot": None,
            "started_at": iso(finished - timedelta(seconds=30)), "finished_at": iso(finished),
            "files": 1, "bytes": 1000, "new_bytes": 10, "errors": [] if status == "ok" else ["dump failed: boom"],
            "warnings": [], "seq": seq, "every": {"low": low, "high": high}}
    body.update(extra)
    return body


@pytest.fixture
def served(start_collector, collector_db, tmp_path):
    collector = start_collector(db=collector_db)
    tokens = {host: make_token(collector.tokens_file, host) for host in ("node-a", "node-b")}
    return collector, tokens


def test_a_report_is_stored_once_however_often_it_is_sent(served):
    collector, tokens = served
    body = report("node-a")
    first = collector.post(tokens["node-a"], body)
    assert first.status_code == 200 and first.json()["stored"] is True
    for _ in range(3):
        again = collector.post(tokens["node-a"], body)
        assert again.status_code == 200 and again.json()["duplicate"] is True
    stored = collector.reports("node-a")
    assert [row["id"] for row in stored] == [body["id"]]
    assert {k: v for k, v in stored[0].items() if k != "received_ts"} == body


def test_tokens_are_bound_to_their_host(served):
    collector, tokens = served
    assert collector.post(tokens["node-a"], report("node-b")).status_code == 403
    # 403 before any other check: an otherwise invalid report for another host is still 403
    assert collector.post(tokens["node-a"], {"host": "node-b", "junk": 1}).status_code == 403
    assert collector.post("bat_not-a-real-token", report("node-a")).status_code == 401
    assert collector.post(None, report("node-a")).status_code == 401
    assert collector.reports() == []
    # rotating node-a's token: the old one stops working, the new one works
    new = make_token(collector.tokens_file, "node-a")
    assert collector.post(tokens["node-a"], report("node-a")).status_code == 401
    assert collector.post(new, report("node-a")).status_code == 200


def test_bad_bodies_get_short_clear_errors(served):
    collector, tokens = served
    token = tokens["node-a"]
    bad_json = collector.post(token, b"{not json")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    invalid = collector.post(token, report("node-a", status="fine", seq=0))
    assert invalid.status_code == 422
    message = invalid.json()["error"]
    assert "status: must be one of ok, failed" in message and "seq:" in message and len(message) < 400
    for nasty in ("\\ud800", "nul\\u0000byte"):  # JSON escapes: a lone surrogate, a NUL
        raw = json.dumps(report("node-a", status="failed")).replace('"dump failed: boom"', f'"{nasty}"')
        assert collector.post(token, raw).status_code == 422
    no_every = report("node-a")
    del no_every["every"]
    assert collector.post(token, no_every).status_code == 422
    assert collector.reports() == []


def test_an_oversized_body_is_refused_without_being_read(served):
    collector, tokens = served
    before = collector.rss_kib()
    # announced: refused on the headers
    response = httpx.post(collector.url + "/api/v1/reports", content=b"x" * (10 * 1024 * 1024),
                          headers={"Authorization": f"Bearer {tokens['node-a']}"}, timeout=30)
    assert response.status_code == 413
    # not announced (chunked): refused once 256 KiB have streamed in
    with socket.create_connection(("127.0.0.1", collector.port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: Bearer " + tokens["node-a"].encode() + b"\r\n\r\n")
        chunk = b"y" * 65536
        answer = b""
        try:
            for _ in range(160):  # 10 MiB offered
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, socket.timeout):
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert collector.rss_kib() - before < 8 * 1024, "the collector held a large body in memory"
    assert collector.reports() == []
    assert collector.get("/healthz").status_code == 200


def test_freshness_states_api_and_metrics(served):
    collector, tokens = served
    a, b = tokens["node-a"], tokens["node-b"]
    posts = [
        (a, report("node-a", "db-analytics", 1, age_hours=1)),                       # ok
        (a, report("node-a", "db-console", 2, age_hours=30, low=86400, high=86400)),  # 24h + 1h grace: overdue
        (a, report("node-a", "db-credentials", 3, age_hours=2, low=86400, high=86400)),
        (a, report("node-a", "db-credentials", 5, status="failed", age_hours=1, low=86400, high=86400)),  # failing
        (b, report("node-b", "db-analytics", 1, age_hours=9)),                       # overdue, and silent host
    ]
    for token, body in posts:
        assert collector.post(token, body).status_code == 200
    make_token(collector.tokens_file, "node-c")  # a host that never reported
    status = collector.get("/api/v1/status").json()
    states = {(row["host"], row["job"]): row["state"] for row in status["jobs"]}
    assert states[("node-a", "db-analytics")] == "ok"
    assert states[("node-a", "db-console")] == "overdue"
    assert states[("node-a", "db-credentials")] == "failing"
    assert states[("node-b", "db-analytics")] == "overdue"  # judged by the run's time, not the arrival
    assert states[("node-b", "db-console")] == "never"
    assert all(states[("node-c", job)] == "never" for job in ("db-analytics", "db-console", "db-credentials"))
    row = next(r for r in status["jobs"] if (r["host"], r["job"]) == ("node-a", "db-credentials"))
    assert row["last_error"] == "dump failed: boom" and row["last_ok"] and row["last_run"] > row["last_ok"]
    hosts = {row["host"]: row for row in status["hosts"]}
    assert hosts["node-a"]["missing_reports"] == 1  # seq 4 never arrived
    assert hosts["node-b"]["missing_reports"] == 0
    assert hosts["node-c"]["state"] == "never"

    metrics = collector.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    parsed = {family.name: family for family in text_string_to_metric_families(metrics)}
    assert {sample.labels["job"] for sample in parsed["backup_overdue"].samples if sample.labels["host"] == "node-a"} \
        == {"db-analytics", "db-console", "db-credentials"}
    assert parsed["backup_last_run_status"].type == "gauge" and parsed["backup_reports"].type == "counter"
    assert 'backup_overdue{host="node-a",job="db-console"} 1.0' in metrics
    assert 'backup_overdue{host="node-a",job="db-analytics"} 0.0' in metrics
    assert 'backup_last_run_status{host="node-a",job="db-credentials"} 0.0' in metrics
    assert 'backup_last_run_status{host="node-a",job="db-analytics"} 1.0' in metrics
    assert 'backup_missing_reports{host="node-a"} 1.0' in metrics
    assert "backup_reports_total 5.0" in metrics
    ok_line = next(line for line in metrics.splitlines()
                   if line.startswith('backup_last_success_timestamp_seconds{host="node-a",job="db-analytics"}'))
    assert abs(float(ok_line.split()[-1]) - (time.time() - 3600)) < 120

    history = collector.get("/hosts/node-a/jobs/db-credentials")
    assert history.status_code == 200
    assert history.text.count('data-status="failed"') == 1 and history.text.count('data-status="ok"') == 1
    assert "Reports lost from this host (sequence numbers): 4." in history.text
    newest_first = collector.reports("node-a", "db-credentials")
    assert [r["seq"] for r in newest_first] == [5, 3]


def test_an_older_report_arriving_late_does_not_hide_the_newest(served):
    collector, tokens = served
    newest = report("node-a", seq=7, status="failed", age_hours=0.5)
    older = report("node-a", seq=6, age_hours=4)
    assert collector.post(tokens["node-a"], newest).status_code == 200
    assert collector.post(tokens["node-a"], older).status_code == 200
    row = next(r for r in collector.get("/api/v1/status").json()["jobs"] if r["host"] == "node-a")
    assert row["state"] == "failing" and row["last_status"] == "failed"
    assert row["last_ok"] == older["finished_at"][:19] + "Z"


def test_reading_can_require_a_token(start_collector, collector_db):
    collector = start_collector(db=collector_db, extra=["--require-read-token"])
    host_token = make_token(collector.tokens_file, "node-a")
    reader = make_token(collector.tokens_file, "grafana", "--reader")
    for path in ("/", "/api/v1/status", "/api/v1/reports", "/metrics"):
        assert collector.get(path).status_code == 401, path
        assert collector.get(path, headers={"Authorization": f"Bearer {reader}"}).status_code == 200, path
    assert collector.get("/", auth=("anyone", reader)).status_code == 200  # a browser's Basic prompt
    assert collector.get("/healthz").status_code == 200
    # a reader token cannot post
    assert collector.post(reader, report("grafana")).status_code == 401
    assert collector.post(host_token, report("node-a")).status_code == 200


def test_collectors_sharing_one_postgresql_see_the_same_fleet(start_collector, postgres):
    db = postgres.create_database(f"shared_{len(postgres.databases)}")
    first = start_collector(db=db)
    second = start_collector(db=db)
    token = make_token(first.tokens_file, "node-a")
    bodies = [report("node-a", seq=n, job=f"job-{n % 3}") for n in range(1, 31)]
    for n, body in enumerate(bodies):
        assert (first if n % 2 else second).post(token, body).status_code == 200
    # the same reports again, the other way round: idempotent across processes
    for n, body in enumerate(bodies):
        assert (second if n % 2 else first).post(token, body).status_code == 200
    assert len(first.reports("node-a")) == len(second.reports("node-a")) == 30
    assert first.get("/api/v1/status").json()["jobs"] == second.get("/api/v1/status").json()["jobs"]
