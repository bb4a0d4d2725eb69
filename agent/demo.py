"""The demo's sandbox: a /services-like tree with Tomcat logs, a SQLite database, the agent's
configuration, and a collector on loopback. The walk-through itself is the `demo` command
(agent/cli/commands/demo.py), which runs the operator's commands against this sandbox."""

from __future__ import annotations

import os

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
