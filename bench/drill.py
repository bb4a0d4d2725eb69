"""Restore drill benchmark: `backup-agent drill` against what an operator would do by hand to prove the
same snapshots -- a plain `backup-agent restore --all` of the six /services jobs, and a plain `mariadb < dump.sql`
into a fresh server -- on the same machine and page cache, repetitions alternating, medians compared.

    python bench/drill.py --profile small|large [--repeat N] [--workdir DIR] [--parts fs,mysql]

Prints a Markdown table with the ratios (target, issue 14: a drill within 1.3x of the plain restore)
and writes it to bench/results/drill-PROFILE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from fs import BackupAgent, Measure, du, publish, timed  # noqa: E402
from mysql import agent_for, create_events  # noqa: E402
from treegen import PROFILES, generate  # noqa: E402

from agent.drill.server import ThrowawayServer  # noqa: E402
from tests.fixtures.mariadb import start_mariadb  # noqa: E402

ROWS = {"small": 250_000, "large": 4_000_000}  # rows of the MariaDB table, by profile
TARGET = 1.3


@dataclass(frozen=True)
class Pair:
    """One comparison: the drill's and the plain way's measures, one per repetition."""

    label: str
    drill: List[Measure]
    plain: List[Measure]

    def wall(self, which: List[Measure]) -> float:
        return statistics.median(m.wall for m in which)

    def cpu(self, which: List[Measure]) -> float:
        return statistics.median(m.user + m.system for m in which)


def drill_reports(command: str, out: str) -> Tuple[Measure, list]:
    """Time `command` (a `drill ... --json`), its reports checked: every drill must have passed."""
    measure = timed(f"{command} > {out}")
    with open(out) as handle:
        reports = json.load(handle)
    failed = [report for report in reports if report["status"] != "ok"]
    if failed:
        raise SystemExit(f"a drill failed: {failed}")
    return measure, reports


def bench_fs(work: str, profile: str, repeat: int, notes: List[str]) -> Pair:
    """The six fs jobs: `drill --all` against `restore --all --target DIR` (the same six latest snapshots)."""
    work = os.path.join(work, "fs")
    shutil.rmtree(work, ignore_errors=True)
    tree = os.path.join(work, "services")
    files = generate(tree, PROFILES[profile])
    agent = BackupAgent(work, tree)
    agent.init()
    backup = timed(agent.backup(0))
    print(f"fs: {files} files, {du(tree) / 2**20:.0f} MiB generated; backed up in {backup.wall:.1f} s", flush=True)
    target = os.path.join(work, "restore")
    drills: List[Measure] = []
    restores: List[Measure] = []
    removals: List[float] = []
    reports: list = []
    def drill() -> None:
        nonlocal reports
        measure, reports = drill_reports(f"{agent.cmd} drill --all --json", os.path.join(work, "drill.json"))
        drills.append(measure)

    def restore() -> None:
        restores.append(timed(agent.restore(target)))
        started = time.monotonic()
        shutil.rmtree(target)
        removals.append(time.monotonic() - started)

    for run in range(repeat):
        for step in (drill, restore) if run % 2 == 0 else (restore, drill):
            step()
        print(f"fs run {run + 1}: drill {drills[-1].wall:.2f} s, restore {restores[-1].wall:.2f} s, "
              f"its removal {removals[-1]:.2f} s", flush=True)
    proven = sum(report["files"] for report in reports)
    pair = Pair(f"six `fs` jobs ({files} files)", drills, restores)
    notes.append(f"- fs: {len(reports)} drill reports, {proven} files proven ({files} generated, logs "
                 f"excluded by the jobs); walls of the runs: drill {_walls(drills)}, restore {_walls(restores)}. "
                 f"A drill also removes its scratch tree; removing the plain restore took a median "
                 f"{statistics.median(removals):.2f} s more, not counted above (with it, the drill is "
                 f"{pair.wall(drills) / (pair.wall(restores) + statistics.median(removals)):.2f}x the plain way).")
    return pair


def bench_mysql(work: str, rows: int, repeat: int, notes: List[str]) -> Pair:
    """A `mysql` job's snapshot: `drill JOB` against a fresh server loading the same dump with `mariadb <`."""
    work = os.path.join(work, "mysql")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    source = start_mariadb(os.path.join(work, "source"))
    try:
        create_events(source, rows)
        agent = agent_for(work, source)
        backup = timed(f"{agent} backup db-analytics >/dev/null")
    finally:
        source.stop()  # the drills need no source: it would only hold memory during the timing
    dump = os.path.join(work, "dump.sql")
    timed(f"{agent} restore db-analytics:latest --target {dump}")  # once, outside the timing
    print(f"mysql: {rows} rows, {os.path.getsize(dump) / 2**20:.0f} MiB of dump; backed up in {backup.wall:.1f} s",
          flush=True)
    drills: List[Measure] = []
    loads: List[Measure] = []
    phases: List[dict] = []

    def drill() -> None:
        measure, reports = drill_reports(f"{agent} drill db-analytics --json", os.path.join(work, "drill.json"))
        counted = {table["table"]: table["rows"] for table in reports[0]["tables"]}
        if counted != {"analytics.events": rows}:
            raise SystemExit(f"the drill counted {counted}, the table has {rows} rows")
        drills.append(measure)

    def load() -> None:
        scratch = os.path.join(work, "plain")
        os.mkdir(scratch, 0o700)
        phase_file = os.path.join(work, "phases.json")
        timed(f"{sys.executable} {os.path.abspath(__file__)} --plain-load {dump} --scratch {scratch} > {phase_file}")
        with open(phase_file) as handle:
            phases.append(json.load(handle))
        loads.append(Measure(phases[-1]["start"] + phases[-1]["load"] + phases[-1]["stop"], phases[-1]["user"],
                             phases[-1]["system"], 0))
        shutil.rmtree(scratch)

    for run in range(repeat):
        for step in (drill, load) if run % 2 == 0 else (load, drill):
            step()
        print(f"mysql run {run + 1}: drill {drills[-1].wall:.2f} s, plain load {loads[-1].wall:.2f} s "
              f"(start {phases[-1]['start']:.2f}, load {phases[-1]['load']:.2f}, stop {phases[-1]['stop']:.2f})",
              flush=True)
    middle = {name: statistics.median(phase[name] for phase in phases) for name in phases[0]}
    notes.append(f"- mysql: server start and stop are counted in both (the drill cannot leave them out); the "
                 f"drill's time is the whole command's, from its interpreter's start-up to the removal of its "
                 f"scratch directory, the plain way's from `mariadb-install-db` to the server's exit. The "
                 f"plain load runs on the drill's own server settings (agent/drill/server.py: no binary log, "
                 f"`innodb_flush_log_at_trx_commit=0`), so the ratio is what the drill adds: streaming the dump "
                 f"out of the repository, `CHECK TABLE`, `COUNT(*)`. Plain load phases, medians: install and "
                 f"start {middle['start']:.2f} s, `mariadb < dump.sql` {middle['load']:.2f} s, stop "
                 f"{middle['stop']:.2f} s; walls of the runs: drill {_walls(drills)}, plain {_walls(loads)}.")
    return Pair(f"`mysql` job ({rows} rows, {os.path.getsize(dump) / 2**20:.0f} MiB of dump)", drills, loads)


def plain_load(dump: str, scratch: str) -> None:
    """The plain way, run as a child of the benchmark: a fresh throwaway server in `scratch`, the dump fed
    to the client from the file, the server stopped. Prints the phases' wall seconds and the CPU seconds
    of everything from the server's initialisation on (this interpreter's start-up left out) as JSON."""
    phases = {}
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with ThrowawayServer(scratch) as server:
        server.start()
        phases["start"] = time.monotonic() - started
        started = time.monotonic()
        with open(dump, "rb") as handle:
            subprocess.run([server.client or "mariadb", "--no-defaults", f"--socket={server.socket}", "--user=root",
                            "--max-allowed-packet=1G"], stdin=handle, check=True)
        phases["load"] = time.monotonic() - started
        started = time.monotonic()
    phases["stop"] = time.monotonic() - started
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    phases["user"] = own.ru_utime - before.ru_utime + children.ru_utime
    phases["system"] = own.ru_stime - before.ru_stime + children.ru_stime
    print(json.dumps(phases))


def _walls(measures: List[Measure]) -> str:
    return ", ".join(f"{m.wall:.2f}" for m in measures) + " s"


def table(profile: str, repeat: int, pairs: List[Pair], notes: List[str]) -> str:
    lines = [f"Profile `{profile}`; median of {repeat} runs, drill and plain way taking turns to go first; "
             f"warm page cache; {os.cpu_count()} cores.", "",
             f"| | `backup-agent drill` | plain way | drill / plain (target ≤ {TARGET}x) |", "|---|---|---|---|"]
    for pair in pairs:
        plain = "`restore --all`" if pair.label.startswith("six") else "fresh server, `mariadb < dump.sql`"
        ratio = pair.wall(pair.drill) / pair.wall(pair.plain)
        verdict = "met" if ratio <= TARGET else "missed"
        lines.append(f"| {pair.label}: wall | {pair.wall(pair.drill):.2f} s | {pair.wall(pair.plain):.2f} s ({plain}) "
                     f"| **{ratio:.2f}x** ({verdict}) |")
        lines.append(f"| {pair.label}: user+sys CPU | {pair.cpu(pair.drill):.2f} s | {pair.cpu(pair.plain):.2f} s "
                     f"| {pair.cpu(pair.drill) / pair.cpu(pair.plain):.2f}x |")
    return "\n".join([*lines, "", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(ROWS), default="small",
                        help="the tree of bench/treegen.py and the table's rows: small 250k, large 4M")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each timing (medians)")
    parser.add_argument("--workdir", default="/tmp/backup-agent-bench")
    parser.add_argument("--parts", default="fs,mysql", help="fs, mysql or both")
    parser.add_argument("--rows", type=int, help="rows of the MariaDB table instead of the profile's")
    parser.add_argument("--plain-load", help=argparse.SUPPRESS)  # the timed plain way, run as a child
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_load:
        plain_load(args.plain_load, args.scratch)
        return
    work = os.path.join(args.workdir, f"drill-{args.profile}")
    parts = args.parts.split(",")
    notes: List[str] = []
    pairs: List[Pair] = []
    if "fs" in parts:
        pairs.append(bench_fs(work, args.profile, args.repeat, notes))
    if "mysql" in parts:
        pairs.append(bench_mysql(work, args.rows or ROWS[args.profile], args.repeat, notes))
    publish(table(args.profile, args.repeat, pairs, notes), f"drill-{args.profile}.md")


if __name__ == "__main__":
    main()
