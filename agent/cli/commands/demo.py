"""`demo [--dir DIR] [--serve]`: back up a sandbox /services tree, change it, back up again, list, diff,
restore and verify it, run the daemon for a change-triggered backup, and show the collector's fleet view
(one job failing, one overdue), through the same functions the operator's commands call. No root, no
external server. With --serve the collector keeps serving the dashboard until Ctrl-C."""

from __future__ import annotations

import argparse
import filecmp
import os
import signal
import tempfile
from typing import Optional

from agent.cli.commands import reports as reports_command
from agent.cli.commands.backup import backup
from agent.cli.commands.config import check_config
from agent.cli.commands.inspect import diff
from agent.cli.commands.repository import verify
from agent.cli.commands.restore import RestoreOptions, restore
from agent.cli.commands.snapshots import snapshots
from agent.cli.common import UsageError, load_config, with_identity
from agent.demo import FAILING_JOB, STALE_HOST, STALE_JOB, Sandbox


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def installed_command() -> str:
    """How the operator runs this very command: `backup-agent` when that is what PATH finds, else the
    path of the running executable (`.venv/bin/backup-agent`, relative to the current directory when it
    lies beneath it), or `PYTHON -m agent`."""
    import shutil
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if not argv0 or os.path.basename(argv0) == "__main__.py":
        return f"{sys.executable} -m agent"
    path = os.path.abspath(argv0)
    name = os.path.basename(path)
    if shutil.which(name) == path:
        return name
    shown = os.path.relpath(path)
    if shown.startswith(".."):
        return path
    return shown if "/" in shown else "./" + shown


def run_demo(directory: Optional[str] = None, serve: bool = False) -> int:
    """Build the sandbox in `directory` (default: a new temp dir) and walk through it; with `serve`, keep
    the collector (and its dashboard) running until Ctrl-C. 0 if every step did what it should, else 1."""
    from agent.demo import build_sandbox, start_collector, stop_collector

    base = os.path.abspath(directory) if directory else tempfile.mkdtemp(prefix="backup-agent-demo-")
    os.makedirs(base, exist_ok=True)
    sandbox = build_sandbox(base)
    proc, log, url = start_collector(base, [sandbox.config, sandbox.stale_config])
    command = installed_command()
    # SIGTERM (a `kill`, a closing session) ends the demo like Ctrl-C: the collector child goes with it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = _walkthrough(sandbox, url, command)
        if serve:
            print(f"\nThe collector keeps serving the dashboard at {url}/ until you press Ctrl-C.", flush=True)
            try:
                proc.wait()
            except KeyboardInterrupt:
                print(" stopping the collector", flush=True)
        else:
            print(f"The dashboard stops with the demo; `{command} demo --serve` keeps it up until Ctrl-C.")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_collector(proc, log)
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _walkthrough(sandbox: Sandbox, url: str, command: str) -> int:
    print(f"Sandbox: {sandbox.base}\n  services/*/tomcat with conf/, webapps/, lib/ and logs/ (logs are never "
          "stored)")
    print(f"Collector: {url} (every run is reported to it; dashboard {url}/)")
    stale = load_config(sandbox.stale_config)
    _step(f"{command} --config {sandbox.stale_config} backup --all   (a second node, {stale.host}: its agent "
          "stops after this backup, so its job becomes overdue)")
    backup(stale, [job.name for job in stale.jobs])

    _step(f"{command} key generate --identity {sandbox.identity}   (the operator's identity: the node's "
          "[encryption] recipients names its age1… recipient; the identity stays off the node)")
    _step(f"{command} check-config")
    config = load_config(sandbox.config)
    check_config(config)
    names = [job.name for job in config.jobs]
    _step(f"{command} backup --all   (first backup: everything is new; the shared jar is stored once; "
          f"{FAILING_JOB}'s database server is down)")
    backup(config, names)
    _step(f"{command} backup --all   (nothing changed: no new snapshots)")
    backup(config, names)

    server_xml = os.path.join(sandbox.base, "services", "api", "tomcat", "conf", "server.xml")
    with open(server_xml, "a") as handle:
        handle.write("<!-- maxThreads raised to 400 -->\n")
    with open(os.path.join(sandbox.base, "services", "api", "tomcat", "logs", "catalina.out"), "a") as handle:
        handle.write("INFO: a busy log line that never triggers or enters a backup\n")
    _step(f"edited services/api/tomcat/conf/server.xml; {command} backup --all")
    backup(config, names)
    _step(f"{command} snapshots services-api")
    snapshots(config, "services-api")
    _step(f"{command} diff services-api:latest~1 services-api:latest   (what that edit changed)")
    diff(config, "services-api:latest~1", "services-api:latest")

    restored = _restore_demo(config, sandbox, server_xml, command)
    _step(f"{command} verify --read-data")
    verified = verify(config, read_data=True)

    watched = _daemon_demo(sandbox.base, sandbox.config, command)
    reported = _collector_demo(config, url, command)
    print(f"\nDone. Try: {command} --config {sandbox.config} snapshots   (or: ... ls, diff, find, status, "
          "run, pause, resume, reports)")
    return 0 if restored and verified == 0 and watched and reported else 1


def _restore_demo(config, sandbox: Sandbox, server_xml: str, command: str) -> bool:
    """The repository is encrypted to the sandbox operator's identity: the node alone cannot restore."""
    restore_dir = os.path.join(sandbox.base, "restore", "api")
    _step(f"{command} restore services-api:latest --target {restore_dir}   (no identity on this node)")
    try:
        restore(config, RestoreOptions(snapshot="services-api:latest", target=restore_dir))
        refused = False
    except UsageError as exc:
        print(f"  refused, as it must be: {exc}")
        refused = True
    _step(f"{command} restore services-api:latest --target {restore_dir} --identity {sandbox.identity}")
    code = restore(with_identity(config, sandbox.identity),
                   RestoreOptions(snapshot="services-api:latest", target=restore_dir))
    restored = os.path.join(restore_dir, "tomcat", "conf", "server.xml")
    same = os.path.exists(restored) and filecmp.cmp(server_xml, restored, shallow=False)
    # an excluded directory comes back empty (Tomcat needs logs/ to start); its contents stay out
    logs_dir = os.path.join(restore_dir, "tomcat", "logs")
    logs = not os.path.isdir(logs_dir) or bool(os.listdir(logs_dir))
    print(f"  server.xml restored identical: {_yes(same)}; logs/ restored empty (its contents excluded by "
          f"policy): {_yes(not logs)}")
    return refused and code == 0 and same and not logs


def _collector_demo(config, url: str, command: str) -> bool:
    """Every run above went to the collector: show the fleet view it computed from the reports, once the
    stopped node's job is overdue."""
    import time

    import httpx

    _step(f"{command} reports   (the spool: what has not reached the collector yet)")
    reports_command.reports(config)
    _step(f"the collector's fleet view ({url}/api/v1/status; dashboard {url}/; metrics {url}/metrics)")
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(url + "/api/v1/status", timeout=10).json()
        states = {(row["host"], row["job"]): row["state"] for row in status["jobs"]}
        if states.get((STALE_HOST, STALE_JOB)) == "overdue" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    shown = [row for row in status["jobs"] if row["state"] != "never"]  # "never": not a job of that host
    for row in shown:
        print(f"  {row['host']:<12} {row['job']:<20} {row['state']:<8} last ok {row['last_ok'] or 'never'}")
    stored = len(httpx.get(url + "/api/v1/reports", params={"limit": 1000}, timeout=10).json())
    print(f"  {stored} run reports stored; dashboard: {url}/ ({FAILING_JOB} failing, {STALE_HOST}'s "
          f"{STALE_JOB} overdue)")
    states = {(row["host"], row["job"]): row["state"] for row in shown}
    expected = {key: "failing" if key[1] == FAILING_JOB else "overdue" if key[0] == STALE_HOST else "ok"
                for key in states}
    return len(states) == len(config.jobs) + 1 and states == expected  # every job here, and the stale one


def _daemon_demo(base: str, config_path: str, command: str) -> bool:
    """Run the agent for a few seconds and show a change-triggered backup."""
    import signal
    import subprocess
    import sys
    import time

    from agent.store import Repository

    _step(f"{command} run   (the daemon: watches the trees; quiet 2s in this sandbox)")
    repo = Repository.open(os.path.join(base, "repository"), encryption=load_config(config_path).encryption)
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
    return run_demo(args.dir, args.serve)
