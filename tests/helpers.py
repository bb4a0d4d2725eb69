"""Shared test helpers: declarative trees on disk and the real `backup-agent` command."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import pytest


@dataclass(frozen=True)
class Link:
    target: str


TreeSpec = Dict[str, Union[str, bytes, Link, None]]


def make_tree(root: str, spec: TreeSpec) -> None:
    """Create files (str/bytes content), directories (key ending in '/' or value None) and symlinks."""
    os.makedirs(root, exist_ok=True)
    for rel, value in spec.items():
        path = os.path.join(os.fsencode(root), os.fsencode(rel.rstrip("/")))
        if rel.endswith("/") or value is None:
            os.makedirs(path, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(value, Link):
            os.symlink(value.target, path)
        else:
            with open(path, "wb") as handle:
                handle.write(value.encode() if isinstance(value, str) else value)


def nobody_can_use(area) -> List[str]:
    """setpriv argv for a user without CAP_DAC_OVERRIDE (nobody), after handing it `area` (a shared_tmp);
    skips the test where setpriv is missing."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    for directory, dirs, files in os.walk(str(area)):
        for name in dirs + files + [""]:
            os.lchown(os.path.join(directory, name), 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


NOBODY = 65534


def as_nobody(run: Callable[[], object]) -> object:
    """What `run()` returns when called in a forked child that is uid and gid NOBODY: a process without
    CAP_DAC_OVERRIDE, as an operator restoring their own files is. Raises AssertionError with the
    child's exception."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer = pickle.dumps(("ok", run()))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the test
            answer = pickle.dumps(("failed", repr(exc)))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(answer)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(answer)
    assert status == "ok", value
    return value


def agent_command() -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "backup-agent")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "agent"]


@dataclass
class Agent:
    """A configuration in a temp dir and a way to run the real command against it."""

    base: str
    config: str
    repository: str
    state_dir: str

    def run(self, *args: str, check: Optional[int] = None, timeout: float = 120,
            user: Optional[Sequence[str]] = None) -> subprocess.CompletedProcess:
        argv = [*(user or ()), *agent_command(), "--config", self.config, *args]
        env = {**os.environ, "TZ": "UTC"}  # retention buckets are local days: make them predictable
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check is not None:
            assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
        return result

    def backup(self, *jobs: str, expect: int = 0) -> List[dict]:
        result = self.run("backup", *(jobs or ("--all",)), "--json", check=expect)
        return json.loads(result.stdout)

    def snapshots(self, job: Optional[str] = None) -> List[dict]:
        return json.loads(self.run("snapshots", *([job] if job else []), "--json", check=0).stdout)

    def write_jobs(self, text: str, name: str = "jobs.toml") -> None:
        with open(os.path.join(self.base, "conf.d", name), "w") as handle:
            handle.write(text)


def new_agent(base: str) -> Agent:
    """An agent configuration (repository and state below `base`) with an empty conf.d."""
    os.makedirs(os.path.join(base, "conf.d"))
    config = os.path.join(base, "agent.toml")
    repository = os.path.join(base, "repo")
    state_dir = os.path.join(base, "state")
    with open(config, "w") as handle:
        handle.write(f'host = "test-node"\nrepository = "{repository}"\nstate_dir = "{state_dir}"\n')
    return Agent(base, config, repository, state_dir)


def fs_job(name: str, path: str, exclude: Sequence[str] = (), extra: str = "") -> str:
    return (f'[jobs.{name}]\ntype = "fs"\npath = "{path}"\nevery = "24h"\n'
            f"exclude = {json.dumps(list(exclude))}\n{extra}\n")


def read_tree(root: str) -> Dict[bytes, tuple]:
    """Everything about a tree that a restore must reproduce: type, mode, mtime, content or target."""
    found: Dict[bytes, tuple] = {}
    root_b = os.fsencode(root)
    for directory, dirs, files in os.walk(root_b):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root_b)
            st = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(path, "rb") as handle:
                    found[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, handle.read())
    return found


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 20) -> None:
    """Terminate a server the test started, killing it if it does not stop within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def child_pids(parent: int) -> List[int]:
    """The live processes whose parent is `parent` (read from /proc; no process is found by name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == parent and fields[0] != b"Z":
            found.append(int(entry))
    return found


def process_argv(pid: int) -> List[bytes]:
    """`pid`'s argv, or [] once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")[:-1]
    except OSError:
        return []


def wait_for_child(parent: int, programs: Sequence[str], timeout: float = 60) -> int:
    """The pid of `parent`'s child running one of `programs` (its argv[0]'s basename), once it exists."""
    names = {os.fsencode(program) for program in programs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in child_pids(parent):
            argv = process_argv(pid)
            if argv and os.path.basename(argv[0]) in names:
                return pid
        time.sleep(0.005)
    raise AssertionError(f"process {parent} started none of {', '.join(programs)} within {timeout} s")


def process_state(pid: int) -> str:
    """One letter from /proc/PID/stat: R, S, D, T (stopped), Z (exited, not reaped); '' once reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


def deep_path(levels: int = 25, length: int = 200) -> str:
    """A relative path of `levels` directories of `length`-character names: 25 x 200 is about 5,000
    bytes, beyond PATH_MAX (4096), so only descriptor-relative calls can reach its end."""
    return "/".join(f"{level:02}".ljust(length, "d") for level in range(levels))


def _open_dirs(root: str, names: Sequence[str], create: bool) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
        fd, parent = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), fd
        os.close(parent)
    return fd


def write_deep(root: str, path: str, data: bytes) -> None:
    """Create `path` (directories and file) under `root`, one component at a time."""
    *dirs, name = path.split("/")
    os.makedirs(root, exist_ok=True)
    fd = _open_dirs(root, dirs, create=True)
    try:
        with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd), "wb") as handle:
            handle.write(data)
    finally:
        os.close(fd)


def read_deep(root: str, path: str) -> bytes:
    """The content of `path` under `root`, read one component at a time."""
    *dirs, name = path.split("/")
    fd = _open_dirs(root, dirs, create=False)
    try:
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


def flip_a_byte_in_the_biggest_pack(repository: str, at: int = 5000) -> str:
    """Damage a local repository the way a bad disk does: one bit of its biggest pack flipped at byte
    `at`; returns the pack's path."""
    packs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repository, "data")) for f in fs]
    biggest = max(packs, key=os.path.getsize)
    with open(biggest, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))
    return biggest
