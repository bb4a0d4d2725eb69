"""The demo's sandbox: a /services-like tree with Tomcat logs, a SQLite database, a database dump that
fails (its server is down), the agent's configuration, a second node whose agent stopped after one
backup (its job becomes overdue), and a collector on loopback. The walk-through itself is the `demo`
command (agent/cli/commands/demo.py), which runs the operator's commands against this sandbox."""

from __future__ import annotations

import json
import os
from typing import List, NamedTuple

HOST, STALE_HOST = "demo-node", "demo-node-2"
FAILING_JOB, STALE_JOB = "db-billing", "services-legacy"
STALE_EVERY = 5.0  # seconds: the stale node's job is overdue this long (plus GRACE) after its one backup
GRACE = "2s"  # the demo collector's grace beyond a job's policy


class Sandbox(NamedTuple):
    """The sandbox's paths: `config` is the node the demo runs; `stale_config` the node that stopped."""

    base: str
    config: str
    stale_config: str
    identity: str  # the operator's age identity: the node's repository is encrypted to its recipient

SERVICES = ("api", "console", "dispatcher", "km", "monitor", "worker")
# The shipped policy's excludes (conf.d/services.toml, which the wheel does not carry): Tomcat's own logs/,
# temp/ and work/, anchored to the instance directory, so a webapp's *.log.* or *.out files are kept.
# tests/e2e/test_demo.py holds the two equal.
EXCLUDE = ("/logs/", "/temp/", "/work/", "/tomcat/logs/", "/tomcat/temp/", "/tomcat/work/")


def _write(path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)


def build_sandbox(base: str) -> Sandbox:
    """Create services/, db/, agent.toml, conf.d/ and the stale node's node-2/ under `base`."""
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
                 "on_change = true", 'quiet = "2s"', 'max_delay = "10s"',
                 f"exclude = {json.dumps(list(EXCLUDE))}", ""]  # a JSON array of strings is a TOML one
    _write(os.path.join(base, "conf.d", "services.toml"), "\n".join(jobs).encode())
    # a SQLite database stands in for the MySQL ones: no server needed, same dump path
    import sqlite3

    database = os.path.join(base, "db", "console.db")
    os.makedirs(os.path.dirname(database), exist_ok=True)
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, name TEXT, region TEXT)")
        connection.executemany("INSERT INTO accounts (name, region) VALUES (?, ?)",
                               [(f"account-{n}", ("us-east", "eu-west")[n % 2]) for n in range(5000)])
    # the billing database's server is down: its dump fails (the dashboard shows it failing)
    down = ("echo 'pg_dump: error: connection to server on socket \\\"/run/postgresql/.s.PGSQL.5432\\\" "
            "failed: No such file or directory' >&2; exit 1")
    _write(os.path.join(base, "conf.d", "databases.toml"),
           (f'[jobs.db-console]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n\n'
            f'[jobs.{FAILING_JOB}]\ntype = "command"\nargv = ["sh", "-c", "{down}"]\nevery = "24h"\n').encode())
    identity = os.path.join(base, "operator", "identity")
    config = os.path.join(base, "agent.toml")
    _write(config, (f'host = "{HOST}"\nrepository = "{base}/repository"\nstate_dir = "{base}/state"\n'
                    f'jobs_dir = "conf.d"\n[encryption]\nrecipients = ["{_recipient(identity)}"]\n').encode())
    # a second node, whose agent stops after one backup: its job becomes overdue
    legacy = os.path.join(base, "node-2", "services", "legacy")
    _write(os.path.join(legacy, "tomcat", "conf", "server.xml"), b'<Server port="8005"/>\n')
    _write(os.path.join(base, "node-2", "conf.d", "services.toml"),
           (f'[jobs.{STALE_JOB}]\ntype = "fs"\npath = "{legacy}"\nevery = "{STALE_EVERY:.0f}s"\n').encode())
    stale_config = os.path.join(base, "node-2", "agent.toml")
    _write(stale_config, (f'host = "{STALE_HOST}"\nrepository = "{base}/node-2/repository"\n'
                          f'state_dir = "{base}/node-2/state"\njobs_dir = "conf.d"\n').encode())
    return Sandbox(base, config, stale_config, identity)


def _recipient(identity: str) -> str:
    """The recipient of the sandbox's identity, made now unless an earlier demo in this directory did."""
    from agent.crypt.keys import generate_identity

    if not os.path.exists(identity):
        return generate_identity(identity)
    with open(identity) as handle:
        return next(line.split(": ", 1)[1].strip() for line in handle if line.startswith("# public key: "))


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def start_collector(base: str, configs: List[str]) -> tuple:
    """A collector on a loopback port with a token for each configuration's host (`configs` of hosts HOST
    and STALE_HOST, in that order); their agents report to it. Returns (process, its log, its URL)."""
    import re
    import subprocess
    import sys
    import time

    from agent.collector.tokens import create_token

    directory = os.path.join(base, "collector")
    os.makedirs(directory, exist_ok=True)
    tokens = os.path.join(directory, "tokens.toml")
    token_files = []
    for host in (HOST, STALE_HOST)[:len(configs)]:
        token_files.append(os.path.join(base, f"{host}.token"))
        _write(token_files[-1], create_token(tokens, host).encode() + b"\n")
        os.chmod(token_files[-1], 0o600)
    log_path = os.path.join(directory, "collector.log")
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the process, closed by stop_collector
    proc = subprocess.Popen([sys.executable, "-m", "agent", "collector", "serve", "--listen", "127.0.0.1:0",
                             "--tokens", tokens, "--db", f"sqlite://{directory}/collector.db", "--grace", GRACE],
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
    for config, token_file in zip(configs, token_files):
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
