"""Daemon benchmark on the generated /services tree (see treegen.py):

1. change latency: one config file written -> its snapshot committed (minus `quiet`), against a full
   `backup-agent backup` of the same job and a `restic backup` of the same tree;
2. the idle daemon watching all six trees: CPU seconds per hour and RSS.

    python bench/daemon.py --profile large [--idle-seconds 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs import ENV, HERE, timed  # noqa: E402
from treegen import PROFILES, SERVICES, generate, shipped_exclude  # noqa: E402

QUIET = 1.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def snapshot_files(repo: str) -> set:
    return set(os.listdir(os.path.join(repo, "snapshots")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="small")
    parser.add_argument("--workdir", default="/tmp/backup-agent-bench")
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    work = os.path.join(args.workdir, f"daemon-{args.profile}")
    shutil.rmtree(work, ignore_errors=True)
    tree = os.path.join(work, "services")
    files = generate(tree, PROFILES[args.profile])
    repo = os.path.join(work, "repo")
    conf = os.path.join(work, "conf.d")
    os.makedirs(conf)
    config = os.path.join(work, "agent.toml")
    with open(config, "w") as handle:
        handle.write(f'host = "bench"\nrepository = "{repo}"\nstate_dir = "{work}/state"\n')
    with open(os.path.join(conf, "services.toml"), "w") as handle:
        for service in SERVICES:
            handle.write(f'[jobs.services-{service}]\ntype = "fs"\npath = "{tree}/{service}"\nevery = "24h"\n'
                         f'on_change = true\nquiet = "{QUIET}s"\nmax_delay = "10s"\n'
                         f'exclude = {shipped_exclude()}\n\n')
    agent = [os.path.join(os.path.dirname(sys.executable), "backup-agent"), "--config", config]
    subprocess.run([*agent, "backup", "--all"], check=True, capture_output=True, env=ENV)
    restic_repo = os.path.join(work, "restic")
    subprocess.run(["restic", "-r", restic_repo, "init", "-q"], check=True, capture_output=True, env=ENV)
    subprocess.run(["restic", "-r", restic_repo, "backup", "-q", "--exclude", "logs", tree], check=True,
                   capture_output=True, env=ENV)

    log = open(os.path.join(work, "daemon.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*agent, "run"], stdout=log, stderr=log, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the six start-up scans
            with open(os.path.join(work, "daemon.log"), errors="replace") as handle:
                if handle.read().count("backup ok") >= len(SERVICES):
                    break
            time.sleep(0.2)
        time.sleep(2)
        latencies = []
        target = os.path.join(tree, "api", "tomcat", "conf", "server.xml")
        for sample in range(args.samples):
            before = snapshot_files(repo)
            written = time.time()
            with open(target, "a") as handle:
                handle.write(f"<!-- change {sample} -->\n")
            while snapshot_files(repo) == before and time.time() - written < 60:
                time.sleep(0.005)
            new = (snapshot_files(repo) - before).pop()
            committed = os.stat(os.path.join(repo, "snapshots", new)).st_mtime
            latencies.append(committed - written - QUIET)
            time.sleep(QUIET * 2)
        latencies.sort()
        change = latencies[len(latencies) // 2]
        idle_cpu0, idle_start = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu = cpu_seconds(proc.pid) - idle_cpu0
        per_hour = idle_cpu * 3600 / (time.monotonic() - idle_start)
        rss = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()

    with open(target, "a") as handle:
        handle.write("<!-- change for the full runs -->\n")
    full = timed(f"{' '.join(agent)} backup services-api >/dev/null").wall
    with open(target, "a") as handle:
        handle.write("<!-- change for restic -->\n")
    restic = timed(f"restic -r {restic_repo} backup -q --exclude logs {tree}").wall
    table = "\n".join([
        f"Profile `{args.profile}`: {files} files in six watched trees; median of {args.samples} changes.", "",
        "| | time | ratio to restic |", "|---|---|---|",
        f"| change-triggered: file written → snapshot committed (minus quiet) | {change:.3f} s | "
        f"{change / restic:.3f}x ({restic / change:.0f}x faster) |",
        f"| `backup-agent backup services-api` (full scan of that tree) | {full:.2f} s | {full / restic:.2f}x |",
        f"| `restic backup` of the whole tree | {restic:.2f} s | 1.00x |",
        "",
        "| idle daemon watching all six trees | measured | target |", "|---|---|---|",
        f"| CPU per idle hour (over {args.idle_seconds:.0f} s) | {per_hour:.2f} s | < 1 s |",
        f"| RSS | {rss:.0f} MiB | < 60 MiB |",
    ])
    print(table)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"daemon-{args.profile}.md"), "w") as handle:
        handle.write(table + "\n")


if __name__ == "__main__":
    main()
