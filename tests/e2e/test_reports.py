"""Run reports on their way to the collector: the real agent (one-shot and daemon) and the real
collector as processes on loopback; a fault-injecting proxy supplies the 500/429/413/422 answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from typing import List, Optional

import httpx
import pytest

from tests.e2e.test_daemon import Daemon, wait_for
from tests.fixtures.collector import FaultProxy, make_token
from tests.helpers import fs_job, make_tree


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure(agent, url: str, token: Optional[str], extra: str = "") -> None:
    token_file = os.path.join(agent.base, "collector.token")
    with open(token_file, "w") as handle:
        handle.write((token or "bat_wrong") + "\n")
    os.chmod(token_file, 0o600)
    with open(agent.config, "w") as handle:
        handle.write(f'host = "test-node"\nrepository = "{agent.repository}"\nstate_dir = "{agent.state_dir}"\n'
                     f'[collector]\nurl = "{url}"\ntoken_file = "{token_file}"\nmax_backoff = "1s"\n{extra}')


def spool(agent) -> dict:
    return json.loads(agent.run("reports", "--json", check=0).stdout)


@pytest.fixture
def tree(agent, tmp_path) -> str:
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>", "logs/catalina.out": "x\n"})
    agent.write_jobs(fs_job("svc", src, ["logs/"]) + fs_job("other", src, ["conf/"]))
    return src


@pytest.fixture
def daemons(agent):
    made: List[Daemon] = []

    def start() -> Daemon:
        made.append(Daemon(agent).start())
        return made[-1]

    yield start
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def test_twenty_runs_while_the_collector_is_down_arrive_exactly_once(agent, tree, start_collector, daemons,
                                                                     tmp_path):
    port = free_port()
    tokens_file = str(tmp_path / "tokens.toml")
    configure(agent, f"http://127.0.0.1:{port}", make_token(tokens_file, "test-node"))
    ids = []
    for number in range(10):
        make_tree(tree, {"conf/server.xml": f"<Server v='{number}'/>"})
        started = time.monotonic()
        result = agent.run("backup", "svc", "--json", check=0)  # reporting never fails a backup
        assert time.monotonic() - started < 20
        assert "not delivered to the collector yet" in result.stderr
        ids += [report["id"] for report in json.loads(result.stdout)]
    first = daemons()
    for _ in range(5):
        ids += [report["id"] for report in agent.backup("svc", "other")]
    assert first.stop() == 0  # the agent restarts with everything still spooled
    assert len(spool(agent)["pending"]) == 20
    second = daemons()
    collector = start_collector(port=port)
    wait_for(lambda: len(collector.reports("test-node")) == 20, timeout=60)
    stored = collector.reports("test-node")
    assert sorted(row["id"] for row in stored) == sorted(ids)
    assert sorted(row["seq"] for row in stored) == list(range(1, 21))
    wait_for(lambda: not spool(agent)["pending"], timeout=20)
    time.sleep(1.5)
    assert "backup_reports_total 20.0" in collector.get("/metrics").text
    assert collector.get("/api/v1/status").json()["hosts"][0]["missing_reports"] == 0
    assert second.stop() == 0


def test_backup_json_is_exactly_what_the_collector_stores(agent, tree, start_collector):
    collector = start_collector()
    configure(agent, collector.url, make_token(collector.tokens_file, "test-node"))
    printed = agent.backup("svc")
    assert spool(agent)["pending"] == []  # the one-shot backup delivered it on its way out
    stored = collector.reports("test-node")
    assert [{k: v for k, v in row.items() if k != "received_ts"} for row in stored] == printed
    assert printed[0]["every"] == {"low": 86400.0, "high": 86400.0} and printed[0]["seq"] == 1


def test_intermittent_500_and_429_are_retried_until_delivered(agent, tree, start_collector):
    collector = start_collector()
    times: dict = {}

    def flaky(body: dict, attempt: int):
        times.setdefault(body.get("id"), []).append(time.monotonic())
        if attempt == 1:
            return 500, {}
        if attempt == 2:
            return 429, {"Retry-After": "2"}
        return None

    proxy = FaultProxy(collector.url, flaky)
    try:
        configure(agent, proxy.url, make_token(collector.tokens_file, "test-node"))
        ids = [report["id"] for _ in range(3) for report in agent.backup("svc", "other")]
        assert len(spool(agent)["pending"]) == 6  # the one-shot tries once, gets a 500, leaves them spooled
        flushed = agent.run("reports", "--flush", "--json", check=0)
        assert json.loads(flushed.stdout)["pending"] == []
    finally:
        proxy.close()
    assert sorted(row["id"] for row in collector.reports("test-node")) == sorted(ids)
    for report_id in ids:
        assert len(times[report_id]) >= 3
        assert times[report_id][2] - times[report_id][1] >= 1.9, "Retry-After was not honoured"


def test_rejected_reports_go_to_the_dead_letter_folder_and_are_not_retried(agent, tree, start_collector):
    collector = start_collector()

    def reject(body: dict, attempt: int):
        return {"svc": (422, {}), "other": (413, {})}.get(body.get("job")) if body.get("seq") in (1, 2) else None

    proxy = FaultProxy(collector.url, reject)
    try:
        configure(agent, proxy.url, make_token(collector.tokens_file, "test-node"))
        agent.backup("svc", "other")  # seq 1 (svc) and 2 (other): rejected
        good = agent.backup("svc")
        state = spool(agent)
        assert state["pending"] == []
        reasons = {row["job"]: row["reason"] for row in state["dead"]}
        assert reasons["svc"].startswith("HTTP 422") and reasons["other"].startswith("HTTP 413")
        assert agent.run("reports", "--flush", check=0).returncode == 0
        assert proxy.calls == {row["id"]: 1 for row in [*state["dead"], *good]}  # never retried
        text = agent.run("reports", check=0).stdout
        assert "2 dead-lettered" in text and "HTTP 422" in text
    finally:
        proxy.close()
    assert [row["id"] for row in collector.reports("test-node")] == [good[0]["id"]]


def test_a_refused_token_keeps_reports_spooled_until_it_is_fixed(agent, tree, start_collector):
    collector = start_collector()
    token = make_token(collector.tokens_file, "test-node")
    configure(agent, collector.url, "bat_wrong")
    printed = agent.backup("svc")
    flushed = agent.run("reports", "--flush", check=1)
    assert "refused" in flushed.stdout or "refuses" in flushed.stderr
    assert "bat_wrong" not in flushed.stdout + flushed.stderr  # a token is never printed
    assert len(spool(agent)["pending"]) == 1 and spool(agent)["dead"] == []
    configure(agent, collector.url, token)
    agent.run("reports", "--flush", check=0)
    assert [row["id"] for row in collector.reports()] == [printed[0]["id"]]


def test_a_replayed_report_is_stored_once(agent, tree, start_collector):
    collector = start_collector()
    configure(agent, collector.url, None)  # wrong token first: the report stays in the spool
    agent.backup("svc")
    pending_dir = os.path.join(agent.state_dir, "reports", "pending")
    name = os.listdir(pending_dir)[0]
    shutil.copy(os.path.join(pending_dir, name), str(agent.base))
    configure(agent, collector.url, make_token(collector.tokens_file, "test-node"))
    agent.run("reports", "--flush", check=0)
    # as if the agent crashed between the collector's 200 and removing its copy
    shutil.copy(os.path.join(agent.base, name), pending_dir)
    agent.run("reports", "--flush", check=0)
    assert len(collector.reports()) == 1 and spool(agent)["pending"] == []
    assert "backup_reports_total 1.0" in collector.get("/metrics").text


def test_newest_report_of_each_job_goes_first(agent, tree, start_collector):
    collector = start_collector()
    order: List[int] = []
    proxy = FaultProxy(collector.url, lambda body, attempt: order.append(body["seq"]))
    try:
        configure(agent, f"http://127.0.0.1:{free_port()}", make_token(collector.tokens_file, "test-node"))
        for _ in range(3):
            agent.backup("svc")
            agent.backup("other")  # seqs: svc 1 3 5, other 2 4 6
        configure(agent, proxy.url, make_token(collector.tokens_file, "test-node"))
        agent.run("reports", "--flush", check=0)
    finally:
        proxy.close()
    assert order == [6, 5, 1, 2, 3, 4]


def test_the_spool_is_bounded_and_keeps_failed_runs_and_each_jobs_newest(agent, tree, tmp_path):
    configure(agent, f"http://127.0.0.1:{free_port()}", "bat_x", extra="spool_max_reports = 4\n")
    agent.write_jobs(fs_job("svc", tree, ["logs/"]) + fs_job("broken", str(tmp_path / "gone"), []))
    failed = [agent.backup("broken", expect=1)[0]["id"] for _ in range(2)]
    ok = []
    messages = ""
    for _ in range(5):
        result = agent.run("backup", "svc", "--json", check=0)
        ok += [report["id"] for report in json.loads(result.stdout)]
        messages += result.stderr
    assert "report spool full" in messages and "dropped" in messages
    state = spool(agent)
    pending = {row["id"] for row in state["pending"]}
    assert set(failed) <= pending and ok[-1] in pending
    assert len(pending) == 4 and state["dropped"] == 3
    assert pending == {*failed, ok[-2], ok[-1]}


def test_the_daemon_delivers_as_runs_happen(agent, start_collector, daemons, tmp_path):
    collector = start_collector()
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>"})
    configure(agent, collector.url, make_token(collector.tokens_file, "test-node"))
    agent.write_jobs(fs_job("svc", src, [], extra='on_change = true\nquiet = "0.5s"\nmax_delay = "3s"'))
    agent.backup("svc")
    d = daemons()
    make_tree(src, {"conf/server.xml": "<Server port='1'/>"})
    wait_for(lambda: any(row["trigger"] == "change" for row in collector.reports("test-node")), timeout=30)
    # a report spooled by another process (a manual backup) while the collector was away is picked up too
    collector.stop()
    manual = agent.backup("svc")[0]["id"]
    collector = start_collector(port=collector.port)
    wait_for(lambda: manual in {row["id"] for row in collector.reports("test-node")}, timeout=60)
    wait_for(lambda: not spool(agent)["pending"], timeout=20)
    stored = [row["seq"] for row in collector.reports("test-node")]
    assert sorted(stored) == list(range(1, len(stored) + 1))  # every run of both processes, once each
    assert d.stop() == 0


def test_https_with_a_private_ca(agent, tree, start_collector, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    collector = start_collector(extra=["--tls-cert", cert, "--tls-key", key])
    assert collector.url.startswith("https://")
    token = make_token(collector.tokens_file, "test-node")
    configure(agent, collector.url, token)  # without ca_file the self-signed certificate is refused
    printed = agent.backup("svc")
    assert len(spool(agent)["pending"]) == 1
    configure(agent, collector.url, token, extra=f'ca_file = "{cert}"\n')
    agent.run("reports", "--flush", check=0)
    stored = httpx.get(collector.url + "/api/v1/reports", verify=ssl.create_default_context(cafile=cert)).json()
    assert [row["id"] for row in stored] == [printed[0]["id"]]


def test_a_name_that_is_not_utf8_reaches_the_collector_escaped(agent, tree, start_collector):
    collector = start_collector()
    configure(agent, collector.url, make_token(collector.tokens_file, "test-node"))
    os.mkfifo(os.path.join(os.fsencode(tree), b"conf", b"pipe\xff"))
    printed = agent.backup("svc")
    assert any("pipe\\xff" in warning for warning in printed[0]["warnings"]), printed[0]["warnings"]
    assert spool(agent) == {**spool(agent), "pending": [], "dead": []}  # delivered, not dead-lettered
    [stored] = collector.reports("test-node")
    assert stored["warnings"] == printed[0]["warnings"]


def test_a_token_file_every_user_can_read_is_warned_about_like_an_options_file(agent, tree, start_collector):
    collector = start_collector()
    configure(agent, collector.url, make_token(collector.tokens_file, "test-node"))
    token_file = os.path.join(agent.base, "collector.token")
    os.chmod(token_file, 0o644)
    checked = agent.run("check-config", check=0)
    assert f"{token_file} is readable by every user: it holds the collector token (chmod 600)" in checked.stderr
    printed = agent.backup("svc")
    assert f"collector.token_file: {token_file} is readable by every user: it holds the collector token " \
           "(chmod 600)" in printed[0]["warnings"]
    assert collector.reports("test-node")[0]["warnings"] == printed[0]["warnings"]


def test_a_token_file_holding_more_than_the_token_is_named_and_never_shown(agent, tree, start_collector):
    collector = start_collector()
    token = make_token(collector.tokens_file, "test-node")
    configure(agent, collector.url, token)
    token_file = os.path.join(agent.base, "collector.token")
    with open(token_file, "w") as handle:  # `collector token ... > file 2>&1` on another machine
        handle.write(f"created token for test-node\n{token}\n")
    checked = agent.run("check-config")
    assert checked.returncode == 0, checked.stderr  # a warning: backups go on, reports wait in the spool
    assert checked.stderr.startswith(f"backup-agent: warning: {agent.config}: collector.token_file: {token_file}: "
                                     f"must hold one token and nothing else"), checked.stderr
    assert token not in checked.stderr and "created token" not in checked.stderr
    backed = agent.run("backup", "svc")
    assert backed.returncode == 0 and token not in backed.stderr and "created token" not in backed.stderr
    assert [line.split(": collector.token_file")[0] for line in backed.stderr.splitlines()
            if "collector.token_file" in line] == [f"backup-agent: warning: {agent.config}"]  # once, as a warning
    flushed = agent.run("reports", "--flush", "--timeout", "3")
    assert flushed.returncode == 2  # configuration
    assert all(line.startswith("backup-agent: warning: ") for line in flushed.stderr.splitlines()[:-1])
    assert flushed.stderr.splitlines()[-1:] == [
        f"backup-agent: error: configuration error: collector.token_file {token_file}: must hold one token "
        f"and nothing else (letters, digits and -._~+/; whitespace around it is allowed), as `backup-agent "
        f"collector token` prints it on its last line; reports stay spooled"], flushed.stderr
    assert token not in flushed.stdout + flushed.stderr and "created token" not in flushed.stdout + flushed.stderr
    assert len(spool(agent)["pending"]) == 1 and collector.reports() == []
    with open(token_file, "w") as handle:
        handle.write(f"  {token}\n\n")  # whitespace around it is fine
    assert agent.run("reports", "--flush", "--timeout", "10").returncode == 0
    assert len(collector.reports("test-node")) == 1
