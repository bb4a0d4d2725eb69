"""`demo [--dir DIR]`: back up a sandbox /services tree, change it, back up again, list, restore and
verify it, run the daemon for a change-triggered backup, and show the collector's fleet view, through
the same functions the operator's commands call. No root, no external server."""

from __future__ import annotations

import argparse
import filecmp
import os
import tempfile
from typing import Optional

from agent.cli.commands import reports as reports_command
from agent.cli.commands.backup import backup
from agent.cli.commands.config import check_config
from agent.cli.commands.repository import verify
from agent.cli.commands.restore import RestoreOptions, restore
from agent.cli.commands.snapshots import snapshots
from agent.cli.common import load_config


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def run_demo(directory: Optional[str] = None) -> int:
    """Build the sandbox in `directory` (default: a new temp dir) and walk through it; 0 if every step
    did what it should, else 1."""
    import sys

    from agent.demo import build_sandbox, start_collector, stop_collector

    base = os.path.abspath(directory) if directory else tempfile.mkdtemp(prefix="backup-agent-demo-")
    os.makedirs(base, exist_ok=True)
    config_path = build_sandbox(base)
    proc, log, url = start_collector(base, config_path)
    try:
        code = _walkthrough(base, config_path, url)
        if sys.stdin.isatty() and sys.stdout.isatty():
            print(f"\nThe collector keeps serving the dashboard at {url}/ until you press Ctrl-C.", flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
    finally:
        stop_collector(proc, log)
    return code


def _walkthrough(base: str, config_path: str, url: str) -> int:
    print(f"Sandbox: {base}\n  services/*/tomcat with conf/, webapps/, lib/ and logs/ (logs are never stored)")
    print(f"Collector: {url} (every run is reported to it; dashboard {url}/)")

    _step("backup-agent check-config")
    config = load_config(config_path)
    check_config(config)
    names = [job.name for job in config.jobs]
    _step("backup-agent backup --all   (first backup: everything is new; the shared jar is stored once)")
    backup(config, names)
    _step("backup-agent backup --all   (nothing changed: no new snapshots)")
    backup(config, names)

    server_xml = os.path.join(base, "services", "api", "tomcat", "conf", "server.xml")
    with open(server_xml, "a") as handle:
        handle.write("<!-- maxThreads raised to 400 -->\n")
    with open(os.path.join(base, "services", "api", "tomcat", "logs", "catalina.out"), "a") as handle:
        handle.write("INFO: a busy log line that never triggers or enters a backup\n")
    _step("edited services/api/tomcat/conf/server.xml; backup-agent backup --all")
    backup(config, names)

    _step("backup-agent snapshots services-api")
    snapshots(config, "services-api")

    restore_dir = os.path.join(base, "restore", "api")
    _step(f"backup-agent restore services-api:latest --target {restore_dir}")
    code = restore(config, RestoreOptions(snapshot="services-api:latest", target=restore_dir))
    restored = os.path.join(restore_dir, "tomcat", "conf", "server.xml")
    same = os.path.exists(restored) and filecmp.cmp(server_xml, restored, shallow=False)
    # an excluded directory comes back empty (Tomcat needs logs/ to start); its contents stay out
    logs_dir = os.path.join(restore_dir, "tomcat", "logs")
    logs = not os.path.isdir(logs_dir) or bool(os.listdir(logs_dir))
    print(f"  server.xml restored identical: {_yes(same)}; logs/ restored empty (its contents excluded by "
          f"policy): {_yes(not logs)}")

    _step("backup-agent verify --read-data")
    verified = verify(config, read_data=True)

    watched = _daemon_demo(base, config_path)
    reported = _collector_demo(config, url)
    print(f"\nDone. Try: backup-agent --config {config_path} snapshots   (or: ... run, status, pause, resume, "
          "reports)")
    ok = code == 0 and verified == 0 and same and not logs and watched and reported
    return 0 if ok else 1


def _collector_demo(config, url: str) -> bool:
    """Every run above went to the collector: show the fleet view it computed from the reports."""
    import httpx

    _step("backup-agent reports   (the spool: what has not reached the collector yet)")
    reports_command.reports(config)
    _step(f"the collector's fleet view ({url}/api/v1/status; dashboard {url}/; metrics {url}/metrics)")
    status = httpx.get(url + "/api/v1/status", timeout=10).json()
    for row in status["jobs"]:
        print(f"  {row['host']}  {row['job']:<20} {row['state']:<8} last ok {row['last_ok']}")
    stored = len(httpx.get(url + "/api/v1/reports", params={"limit": 1000}, timeout=10).json())
    print(f"  {stored} run reports stored; dashboard: {url}/")
    return bool(status["jobs"]) and all(row["state"] == "ok" for row in status["jobs"])


def _daemon_demo(base: str, config_path: str) -> bool:
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
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", config_path, "run"], stdout=log,
                                stderr=log)
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
    print(f"  change-triggered snapshot taken: {_yes(taken)}")
    return taken


def run(args: argparse.Namespace) -> int:
    return run_demo(args.dir)
