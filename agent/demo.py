"""`backup-agent demo`: a /services-like sandbox with Tomcat logs, backed up, changed, backed up again,
listed, restored and verified, using the same commands an operator would type. No root, no server."""

from __future__ import annotations

import filecmp
import os
import tempfile
from typing import List, Optional

SERVICES = ("api", "console", "dispatcher", "km", "monitor", "worker")
EXCLUDE = '["logs/", "*.log", "*.log.*", "*.out", "catalina.out*", "localhost_access_log*", "temp/", "work/"]'


def _write(path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)


def build_sandbox(base: str) -> str:
    """Create services/, agent.toml and conf.d/ under `base`; returns the agent.toml path."""
    shared_jar = bytes(range(256)) * 4096  # the same 1 MiB library in every service: stored once
    for name in SERVICES:
        tomcat = os.path.join(base, "services", name, "tomcat")
        _write(os.path.join(tomcat, "conf", "server.xml"),
               f'<Server port="8005"><Service name="{name}"><Connector port="8080"/></Service></Server>\n'.encode())
        _write(os.path.join(tomcat, "webapps", "ROOT", "WEB-INF", "classes", f"{name}.properties"),
               f"service.name={name}\ndb.pool.size=20\n".encode())
        _write(os.path.join(tomcat, "lib", "enstratus-common.jar"), shared_jar)
        _write(os.path.join(tomcat, "lib", f"{name}.jar"), os.urandom(64 * 1024))
        _write(os.path.join(tomcat, "logs", "catalina.out"), b"INFO: Server startup in 4242 ms\n" * 500)
        _write(os.path.join(tomcat, "logs", "localhost_access_log.2026-11-27.txt"), b"GET / 200\n" * 200)
        _write(os.path.join(tomcat, "temp", "upload.tmp"), b"scratch")
    jobs = ["# The Enstratius policy, pointed at the sandbox's services/ tree."]
    for name in SERVICES:
        jobs += [f"[jobs.services-{name}]", 'type = "fs"', f'path = "{base}/services/{name}"', 'every = "24h"',
                 "on_change = true", 'quiet = "2s"', 'max_delay = "10s"', f"exclude = {EXCLUDE}", ""]
    _write(os.path.join(base, "conf.d", "services.toml"), "\n".join(jobs).encode())
    # a SQLite database stands in for the MySQL ones: no server needed, same dump path
    import sqlite3

    database = os.path.join(base, "db", "console.db")
    os.makedirs(os.path.dirname(database), exist_ok=True)
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, name TEXT, region TEXT)")
        connection.executemany("INSERT INTO accounts (name, region) VALUES (?, ?)",
                               [(f"account-{n}", ("us-east", "eu-west")[n % 2]) for n in range(5000)])
    _write(os.path.join(base, "conf.d", "databases.toml"),
           f'[jobs.db-console]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n'.encode())
    config = os.path.join(base, "agent.toml")
    _write(config, (f'host = "demo-node"\nrepository = "{base}/repository"\nstate_dir = "{base}/state"\n'
                    'jobs_dir = "conf.d"\n').encode())
    return config


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def start_collector(base: str, config: str) -> tuple:
    """A collector on a loopback port with a token for the sandbox's host; the agent reports to it."""
    import re
    import subprocess
    import sys
    import time

    from agent.collector.tokens import create_token

    directory = os.path.join(base, "collector")
    os.makedirs(directory, exist_ok=True)
    tokens = os.path.join(directory, "tokens.toml")
    token_file = os.path.join(base, "collector.token")
    _write(token_file, create_token(tokens, "demo-node").encode() + b"\n")
    os.chmod(token_file, 0o600)
    log_path = os.path.join(directory, "collector.log")
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the process, closed by stop_collector
    proc = subprocess.Popen([sys.executable, "-m", "agent", "collector", "serve", "--listen", "127.0.0.1:0",
                             "--tokens", tokens, "--db", f"sqlite:///{directory}/collector.db"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    url = None
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            match = re.search(r"listening on (http://\S+)", handle.read())
        url = match.group(1) if match else None
        time.sleep(0.1)
    if url is None:
        proc.kill()
        log.close()
        raise RuntimeError(f"the demo collector did not start; see {log_path}")
    with open(config, "a", encoding="utf-8") as handle:
        handle.write(f'\n[collector]\nurl = "{url}"\ntoken_file = "{token_file}"\nmax_backoff = "2s"\n')
    return proc, log, url


def stop_collector(proc, log) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except Exception:
        proc.kill()
    log.close()


def run_demo(directory: Optional[str] = None) -> int:
    import sys

    base = os.path.abspath(directory) if directory else tempfile.mkdtemp(prefix="backup-agent-demo-")
    os.makedirs(base, exist_ok=True)
    config = build_sandbox(base)
    proc, log, url = start_collector(base, config)
    try:
        code = _walkthrough(base, config, url)
        if sys.stdin.isatty() and sys.stdout.isatty():
            print(f"\nThe collector keeps serving the dashboard at {url}/ until you press Ctrl-C.", flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
    finally:
        stop_collector(proc, log)
    return code


def _walkthrough(base: str, config: str, url: str) -> int:
    from agent.cli import main

    cli: List[str] = ["--config", config]
    print(f"Sandbox: {base}\n  services/*/tomcat with conf/, webapps/, lib/ and logs/ (logs are never stored)")
    print(f"Collector: {url} (every run is reported to it; dashboard {url}/)")

    _step("backup-agent check-config")
    main([*cli, "check-config"])
    _step("backup-agent backup --all   (first backup: everything is new; the shared jar is stored once)")
    main([*cli, "backup", "--all"])
    _step("backup-agent backup --all   (nothing changed: no new snapshots)")
    main([*cli, "backup", "--all"])

    server_xml = os.path.join(base, "services", "api", "tomcat", "conf", "server.xml")
    with open(server_xml, "a") as handle:
        handle.write("<!-- maxThreads raised to 400 -->\n")
    with open(os.path.join(base, "services", "api", "tomcat", "logs", "catalina.out"), "a") as handle:
        handle.write("INFO: a busy log line that never triggers or enters a backup\n")
    _step("edited services/api/tomcat/conf/server.xml; backup-agent backup --all")
    main([*cli, "backup", "--all"])

    _step("backup-agent snapshots services-api")
    main([*cli, "snapshots", "services-api"])

    restore_dir = os.path.join(base, "restore", "api")
    _step(f"backup-agent restore services-api:latest --target {restore_dir}")
    code = main([*cli, "restore", "services-api:latest", "--target", restore_dir])
    restored = os.path.join(restore_dir, "tomcat", "conf", "server.xml")
    same = os.path.exists(restored) and filecmp.cmp(server_xml, restored, shallow=False)
    logs = os.path.exists(os.path.join(restore_dir, "tomcat", "logs"))
    print(f"  server.xml restored identical: {same}; logs/ restored: {logs} (excluded by policy)")

    _step("backup-agent verify --read-data")
    verified = main([*cli, "verify", "--read-data"])

    watched = _daemon_demo(base, config)
    reported = _collector_demo(cli, url)
    print(f"\nDone. Try: backup-agent --config {config} snapshots   (or: ... run, status, pause, resume, reports)")
    ok = code == 0 and verified == 0 and same and not logs and watched and reported
    return 0 if ok else 1


def _collector_demo(cli: List[str], url: str) -> bool:
    """Every run above went to the collector: show the fleet view it computed from the reports."""
    import httpx

    from agent.cli import main

    _step("backup-agent reports   (the spool: what has not reached the collector yet)")
    main([*cli, "reports"])
    _step(f"the collector's fleet view ({url}/api/v1/status; dashboard {url}/; metrics {url}/metrics)")
    status = httpx.get(url + "/api/v1/status", timeout=10).json()
    for row in status["jobs"]:
        print(f"  {row['host']}  {row['job']:<20} {row['state']:<8} last ok {row['last_ok']}")
    stored = len(httpx.get(url + "/api/v1/reports", params={"limit": 1000}, timeout=10).json())
    print(f"  {stored} run reports stored; dashboard: {url}/")
    return bool(status["jobs"]) and all(row["state"] == "ok" for row in status["jobs"])


def _daemon_demo(base: str, config: str) -> bool:
    """Run the agent for a few seconds and show a change-triggered backup."""
    import signal
    import subprocess
    import sys
    import time

    from agent.store import Repository

    _step("backup-agent run   (the daemon: watches the trees; quiet 2s in this sandbox)")
    repo = Repository.open(os.path.join(base, "repository"))
    before = len(repo.snapshots("services-worker"))
    log_path = os.path.join(base, "daemon.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", config, "run"], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(os.path.join(base, "state", "daemon.json")) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            properties = os.path.join(base, "services", "worker", "tomcat", "webapps", "ROOT", "WEB-INF", "classes",
                                      "worker.properties")
            print("  editing services/worker/.../worker.properties while the agent runs ...", flush=True)
            with open(properties, "a") as handle:
                handle.write("db.pool.size=40\n")
            while len(repo.snapshots("services-worker")) == before and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if "services-worker" in line or "running" in line:
                print("  " + line.rstrip())
    taken = len(repo.snapshots("services-worker")) > before
    print(f"  change-triggered snapshot taken: {taken}")
    return taken
