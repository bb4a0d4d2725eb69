"""Filesystem benchmark: backup-agent against restic, borg (-e none and -e repokey) and tar --zstd on a
generated Tomcat-like /services tree, all in the same run, on the same warm page cache.

    python bench/fs.py --profile small|large [--workdir DIR] [--tools backup-agent,restic,...]

Prints a Markdown table with each figure and its ratio to restic, and writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from treegen import PROFILES, SERVICES, all_files, generate, shipped_exclude  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# PYTHONDONTWRITEBYTECODE (set in some sandboxes) would make every start recompile the agent's modules,
# which no installed package does.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "RESTIC_PASSWORD": "bench-only", "BORG_PASSPHRASE": "bench-only",
       "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
       "RESTIC_CACHE_DIR": "", "TZ": "UTC"}


class Measure:
    """wall, user, sys seconds and peak RSS (KiB) of one shell command, from GNU time."""

    def __init__(self, wall: float, user: float, system: float, rss_kib: int) -> None:
        self.wall, self.user, self.system, self.rss_kib = wall, user, system, rss_kib


def timed(command: str, cwd: Optional[str] = None) -> Measure:
    marker = "BENCHTIME"
    full = ["/usr/bin/time", "-f", f"{marker} %e %U %S %M", "bash", "-c", command]
    start = time.monotonic()
    result = subprocess.run(full, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed ({result.returncode}): {command}\n{result.stderr[-2000:]}")
    line = [ln for ln in result.stderr.splitlines() if ln.startswith(marker)][-1]
    _, _, user, system, rss = line.split()
    return Measure(wall, float(user), float(system), int(rss))


def publish(text: str, name: str) -> None:
    """Print a result table and write it to bench/results/NAME."""
    print("\n" + text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", name), "w") as handle:
        handle.write(text + "\n")


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


class Tool:
    name = ""

    def __init__(self, work: str, tree: str) -> None:
        self.work, self.tree = work, tree
        self.repo = os.path.join(work, f"repo-{self.name}")

    def init(self) -> None: ...
    def backup(self, step: int) -> str: raise NotImplementedError
    def verify(self) -> Optional[str]: return None
    def restore(self, target: str) -> str: raise NotImplementedError


class BackupAgent(Tool):
    name = "backup-agent"
    directory = "ba"

    def settings(self) -> str:
        """Extra agent.toml tables."""
        return ""

    def init(self) -> None:
        conf = os.path.join(self.work, self.directory, "conf.d")
        os.makedirs(conf, exist_ok=True)
        self.config = os.path.join(self.work, self.directory, "agent.toml")
        with open(self.config, "w") as handle:
            handle.write(f'host = "bench"\nrepository = "{self.repo}"\n'
                         f'state_dir = "{self.work}/{self.directory}/state"\n{self.settings()}')
        with open(os.path.join(conf, "services.toml"), "w") as handle:
            for service in SERVICES:
                handle.write(f'[jobs.services-{service}]\ntype = "fs"\npath = "{self.tree}/{service}"\n'
                             'every = "24h"\non_change = true\n'
                             f'exclude = {shipped_exclude()}\n\n')
        self.cmd = f"{os.path.join(os.path.dirname(sys.executable), 'backup-agent')} --config {self.config}"

    def backup(self, step: int) -> str:
        return f"{self.cmd} backup --all >/dev/null"

    def verify(self) -> str:
        return f"{self.cmd} verify --read-data >/dev/null"

    def restore(self, target: str) -> str:
        return f"{self.cmd} restore --all --target {target}"  # every service, as after losing the node


class BackupAgentEncrypted(BackupAgent):
    """The same, into an encrypted repository (README "Encryption"); restores with the identity."""

    name = "backup-agent-encrypted"
    directory = "ba-encrypted"

    def settings(self) -> str:
        self.identity = os.path.join(self.work, self.directory, "identity")
        if os.path.exists(self.identity):  # a previous run's: `key generate` rightly refuses to overwrite it
            os.unlink(self.identity)
        made = subprocess.run([os.path.join(os.path.dirname(sys.executable), "backup-agent"), "key", "generate",
                               "--identity", self.identity], capture_output=True, text=True, check=True)
        return f'[encryption]\nrecipients = ["{made.stdout.strip().splitlines()[-1]}"]\n'

    def restore(self, target: str) -> str:
        return f"{self.cmd} restore --all --target {target} --identity {self.identity}"


class Restic(Tool):
    name = "restic"

    def init(self) -> None:
        subprocess.run(["restic", "-r", self.repo, "init", "-q"], env=ENV, check=True, capture_output=True)

    def backup(self, step: int) -> str:
        return f"restic -r {self.repo} backup -q --exclude 'logs' {self.tree}"

    def verify(self) -> str:
        return f"restic -r {self.repo} check --read-data -q"

    def restore(self, target: str) -> str:
        return f"restic -r {self.repo} restore latest -q --target {target}"


class Borg(Tool):
    encryption = "none"

    def __init__(self, work: str, tree: str) -> None:
        self.name = f"borg-{self.encryption}"
        super().__init__(work, tree)

    def init(self) -> None:
        subprocess.run(["borg", "init", "-e", self.encryption, self.repo], env=ENV, check=True,
                       capture_output=True)

    def backup(self, step: int) -> str:
        return f"borg create --exclude 'sh:**/logs' {self.repo}::s{step} {self.tree}"

    def verify(self) -> str:
        return f"borg check --verify-data {self.repo}"

    def restore(self, target: str) -> str:
        return f"mkdir -p {target} && cd {target} && borg extract {self.repo}::s3"


class BorgRepokey(Borg):
    encryption = "repokey"


class Tar(Tool):
    name = "tar-zstd"

    def init(self) -> None:
        os.makedirs(self.repo, exist_ok=True)

    def backup(self, step: int) -> str:
        return (f"tar --zstd --exclude=logs --listed-incremental={self.repo}/snar -cf {self.repo}/level{step}.tar.zst"
                f" -C {os.path.dirname(self.tree)} {os.path.basename(self.tree)}")

    def restore(self, target: str) -> str:
        return (f"mkdir -p {target} && for f in {self.repo}/level*.tar.zst; do "
                f"tar --zstd --listed-incremental=/dev/null -xf $f -C {target}; done")


TOOLS = {"backup-agent": BackupAgent, "backup-agent-encrypted": BackupAgentEncrypted, "restic": Restic,
         "borg-none": Borg, "borg-repokey": BorgRepokey,
         "tar-zstd": Tar}
STEPS = ("initial backup", "no-change backup", "1-file-changed backup", "1%-changed backup")


def change_one(tree: str) -> None:
    with open(os.path.join(tree, "api", "tomcat", "conf", "server.xml"), "a") as handle:
        handle.write("<!-- changed -->\n")


def change_percent(tree: str) -> int:
    files = list(all_files(tree))
    chosen = files[::100]
    for path in chosen:
        with open(path, "ab") as handle:
            handle.write(b"\n# changed by bench\n")
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="small")
    parser.add_argument("--workdir", default="/tmp/backup-agent-bench")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--label", default="", help="results go to results/fs-PROFILE[-LABEL].md")
    args = parser.parse_args()
    work = os.path.join(args.workdir, args.profile)
    shutil.rmtree(work, ignore_errors=True)
    tree = os.path.join(work, "services")
    started = time.monotonic()
    files = generate(tree, PROFILES[args.profile])
    size = du(tree)
    print(f"generated {files} files, {size / 2**20:.0f} MiB in {time.monotonic() - started:.0f} s", flush=True)
    tools = [TOOLS[name](work, tree) for name in args.tools.split(",")]
    for tool in tools:
        tool.init()
    results: Dict[str, Dict[str, str]] = {tool.name: {} for tool in tools}
    numbers: Dict[str, Dict[str, float]] = {tool.name: {} for tool in tools}

    def record(tool: Tool, label: str, value: float, text: str) -> None:
        numbers[tool.name][label] = value
        results[tool.name][label] = text

    for step, label in enumerate(STEPS):
        if step == 2:
            change_one(tree)
        elif step == 3:
            change_percent(tree)
        for tool in tools:
            m = timed(tool.backup(step))
            record(tool, label, m.wall, f"{m.wall:.2f} s")
            if step == 0:
                record(tool, "peak RSS, initial backup", m.rss_kib, f"{m.rss_kib / 1024:.0f} MiB")
            print(f"{tool.name:>13} {label}: {m.wall:.2f} s (user {m.user:.2f}, rss {m.rss_kib // 1024} MiB)",
                  flush=True)
    for tool in tools:
        record(tool, "repository size", du(tool.repo), f"{du(tool.repo) / 2**20:.0f} MiB")
        command = tool.verify()
        if command:
            m = timed(command)
            record(tool, "verify --read-data", m.wall, f"{m.wall:.2f} s")
        target = os.path.join(work, f"restore-{tool.name}")
        m = timed(tool.restore(target))
        record(tool, "restore (wall)", m.wall, f"{m.wall:.2f} s")
        record(tool, "restore (user CPU)", m.user, f"{m.user:.2f} s")
        shutil.rmtree(target, ignore_errors=True)
        print(f"{tool.name:>13} done", flush=True)

    labels = [*STEPS, "repository size", "verify --read-data", "restore (wall)", "restore (user CPU)",
              "peak RSS, initial backup"]
    lines = [f"Profile `{args.profile}`: {files} files, {size / 2**20:.0f} MiB (logs included, excluded by all "
             f"tools); warm page cache; {os.cpu_count()} cores. Ratio to restic in brackets.", "",
             "| | " + " | ".join(tool.name for tool in tools) + " |",
             "|---|" + "---|" * len(tools)]
    for label in labels:
        cells = []
        base = numbers.get("restic", {}).get(label)
        for tool in tools:
            text = results[tool.name].get(label, "n/a")
            value = numbers[tool.name].get(label)
            if base and value is not None and text != "n/a":
                text += f" ({value / base:.2f}x)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    plain, encrypted = numbers.get("backup-agent"), numbers.get("backup-agent-encrypted")
    if plain and encrypted:
        lines += ["", "Encrypted against unencrypted backup-agent, same run: " + ", ".join(
            f"{label} {encrypted[label] / plain[label]:.2f}x" for label in
            ("initial backup", "1%-changed backup", "verify --read-data", "restore (wall)", "restore (user CPU)")
            if plain.get(label))]
    publish("\n".join(lines), f"fs-{args.profile}-{args.label}.md" if args.label else f"fs-{args.profile}.md")


if __name__ == "__main__":
    main()
