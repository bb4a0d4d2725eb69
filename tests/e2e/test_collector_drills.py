"""Restore drills at the collector: per host and job the last drill and its outcome in /api/v1/status,
the dashboard and /metrics; a drill token posts drill reports of any host and nothing else. The real
agent drills and delivers; the collector is a real process on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.e2e.test_collector import report
from tests.fixtures.collector import make_token
from tests.helpers import fs_job, make_tree, new_agent


def drill_report(host: str, job: str, seq: int, status: str = "ok", age_hours: float = 0.0,
                 drill_every: float = 86400.0) -> dict:
    body = report(host, job, seq, status, age_hours, trigger="drill", drill_every=drill_every)
    if status != "ok":
        body["errors"] = ["webapps/app.war: not restored, blob 12ab: content does not match its id"]
    return body


@pytest.fixture
def served(start_collector, collector_db):
    collector = start_collector(db=collector_db)
    return collector, make_token(collector.tokens_file, "node-a")


def test_drill_states_in_status_dashboard_and_metrics(served):
    collector, token = served
    for seq, job in enumerate(("fresh", "stale", "broken", "undrilled"), 1):
        assert collector.post(token, report("node-a", job, seq, age_hours=1)).status_code == 200
    posts = [drill_report("node-a", "fresh", 5, age_hours=50, drill_every=7 * 86400),  # 2 d old, 7 d policy: ok
             drill_report("node-a", "stale", 6, age_hours=30),                          # 1 d policy + 1 h: overdue
             drill_report("node-a", "broken", 7, age_hours=5),
             drill_report("node-a", "broken", 8, status="failed", age_hours=1)]         # failing
    for body in posts:
        assert collector.post(token, body).status_code == 200
    jobs = {row["job"]: row for row in collector.get("/api/v1/status").json()["jobs"]}
    assert {job: row["drill_state"] for job, row in jobs.items()} == \
        {"fresh": "ok", "stale": "overdue", "broken": "failing", "undrilled": "never"}
    assert jobs["broken"]["last_drill_status"] == "failed" and jobs["undrilled"]["last_drill_status"] is None
    assert jobs["broken"]["last_drill_ok"] == posts[2]["finished_at"][:19] + "Z"
    assert jobs["undrilled"]["last_drill_ok"] is None
    # a drill is no backup: every job's backup state is still judged by its backup alone
    assert {row["state"] for row in jobs.values()} == {"ok"} and jobs["broken"]["last_trigger"] == "schedule"

    page = collector.get("/").text
    assert "proven restorable 2 d ago" in page
    assert 'data-drill-state="failing"' in page and "drill failed" in page
    assert 'data-drill-state="overdue"' in page and "drill overdue" in page

    metrics = collector.get("/metrics").text
    assert 'backup_drill_failing{host="node-a",job="broken"} 1.0' in metrics
    assert 'backup_drill_failing{host="node-a",job="fresh"} 0.0' in metrics
    assert 'job="undrilled"' not in "".join(line for line in metrics.splitlines()
                                            if line.startswith(("backup_drill", "backup_last_drill")))
    line = next(line for line in metrics.splitlines()
                if line.startswith('backup_last_drill_success_timestamp_seconds{host="node-a",job="broken"}'))
    assert abs(float(line.split()[-1]) - (time.time() - 5 * 3600)) < 120


def test_a_drill_token_posts_drill_reports_of_any_host_only(served):
    collector, token = served
    central = make_token(collector.tokens_file, "central", "--drill")
    assert collector.post(token, report("node-a", "db", 1)).status_code == 200
    assert collector.post(central, drill_report("node-a", "db", 99)).status_code == 200
    assert collector.post(central, drill_report("node-z", "db", 100)).status_code == 200
    assert collector.post(central, report("node-a", "db", 101)).status_code == 403  # a backup report
    assert collector.post(central, {**drill_report("node-a", "db", 102), "trigger": "prune"}).status_code == 403
    assert collector.post(central, {"trigger": "schedule"}).status_code == 403
    status = collector.get("/api/v1/status").json()
    row = next(r for r in status["jobs"] if (r["host"], r["job"]) == ("node-a", "db"))
    assert row["drill_state"] == "ok" and row["state"] == "ok"
    # the drill host's sequence numbers are its own: node-a lost nothing
    hosts = {host["host"]: host for host in status["hosts"]}
    assert hosts["node-a"]["missing_reports"] == 0
    history = collector.get("/hosts/node-a/jobs/db").text
    assert "No lost reports." in history


def test_the_agents_drill_reaches_the_collector(served, tmp_path):
    collector, _ = served
    agent = new_agent(str(tmp_path / "node"))
    token_file = str(tmp_path / "token")
    with open(token_file, "w") as handle:
        handle.write(make_token(collector.tokens_file, "test-node"))
    os.chmod(token_file, 0o600)
    with open(agent.config, "a") as handle:
        handle.write(f'drill_every = "3d"\n[collector]\nurl = "{collector.url}"\ntoken_file = "{token_file}"\n')
    tree = str(tmp_path / "tree")
    make_tree(tree, {"a": "1", "b/c": "2"})
    agent.write_jobs(fs_job("api", tree))
    agent.backup("api")
    started = datetime.now(timezone.utc) - timedelta(seconds=5)
    agent.run("drill", "api", check=0)
    rows = {row["trigger"]: row for row in collector.reports("test-node", "api")}
    assert rows["drill"]["status"] == "ok" and rows["drill"]["drill_every"] == 3 * 86400
    [row] = [r for r in collector.get("/api/v1/status").json()["jobs"] if r["host"] == "test-node"]
    assert row["drill_state"] == "ok" and row["last_drill_status"] == "ok"
    assert datetime.fromisoformat(row["last_drill_ok"].replace("Z", "+00:00")) >= started.replace(microsecond=0)


def test_prune_reports_show_each_hosts_repository_size_and_last_prune(served):
    collector, token = served
    assert collector.post(token, report("node-a", "svc", 1, age_hours=1)).status_code == 200
    prune = report("node-a", "repository", 2, age_hours=3, type="repository", trigger="prune",
                   repository_bytes_before=5 * 2**20, repository_bytes_after=3 * 2**20)
    assert collector.post(token, prune).status_code == 200
    status = collector.get("/api/v1/status").json()
    [host] = status["hosts"]
    assert host["repository_bytes"] == 3 * 2**20 and host["last_prune_status"] == "ok"
    assert host["last_prune"] == prune["finished_at"][:19] + "Z"
    assert [row["job"] for row in status["jobs"]] == ["svc"]  # a prune is no job of the fleet view
    page = collector.get("/").text
    assert "repository 3.0 MiB, pruned 3 h ago" in page
