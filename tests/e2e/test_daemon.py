"""The real `backup-agent run` process on real temp trees with real inotify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, List

import pytest

from tests.helpers import agent_command, fs_job, make_tree, read_tree

QUIET = 0.6
MAX_DELAY = 4.0


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Daemon:
    def __init__(self, agent) -> None:
        self.agent = agent
        self.log_path = os.path.join(agent.base, "daemon.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*agent_command(), "--config", self.agent.config, "run"],
                                     stdout=self.log, stderr=self.log, env={**os.environ, "TZ": "UTC"})
        wait_for(lambda: os.path.exists(os.path.join(self.agent.state_dir, "daemon.json")) or self.dead())
        assert not self.dead(), self.text()
        return self

    def dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def text(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def reports(self, job: str) -> List[str]:
        return [line for line in self.text().splitlines() if f"{job}: backup " in line and "started" not in line]

    def idle(self, job: str, count: int, timeout: float = 20.0) -> None:
        """Wait until `job` has finished `count` runs in this daemon's log."""
        wait_for(lambda: len(self.reports(job)) >= count, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code


@pytest.fixture
def daemon(agent):
    made: List[Daemon] = []

    def start() -> Daemon:
        made.append(Daemon(agent).start())
        return made[-1]

    yield start
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)
        d.log.close()  # also for a daemon the test killed itself


def watched_job(agent, src: str, name: str = "svc", exclude=("logs/", "*.log", "temp/")) -> None:
    agent.write_jobs(fs_job(name, src, list(exclude),
                            extra=f'on_change = true\nquiet = "{QUIET}s"\nmax_delay = "{MAX_DELAY}s"'))
    agent.backup(name)  # the first backup, so that the daemon's timer has a base


def snapshot_count(agent, job: str = "svc") -> int:
    return len(agent.snapshots(job))


def test_config_edit_gives_exactly_one_snapshot_and_logs_give_none(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"tomcat/conf/server.xml": "<Server/>", "tomcat/logs/catalina.out": "start\n"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)  # the start-up full scan, reported as such
    assert snapshot_count(agent) == 1
    assert "svc: backup ok (startup): unchanged" in d.reports("svc")[0]
    assert json.loads(agent.run("status", "--json", check=0).stdout)["jobs"][0]["last_trigger"] == "startup"
    with open(os.path.join(src, "tomcat/logs/catalina.out"), "a") as handle:
        for number in range(1000):
            handle.write(f"INFO line {number}\n")
            handle.flush()
    time.sleep(QUIET * 4)
    assert snapshot_count(agent) == 1 and len(d.reports("svc")) == 1
    with open(os.path.join(src, "tomcat/conf/server.xml"), "w") as handle:
        handle.write("<Server port='8006'/>")
    wait_for(lambda: snapshot_count(agent) == 2)
    time.sleep(QUIET * 4)
    assert snapshot_count(agent) == 2
    assert agent.snapshots("svc")[-1]["trigger"] == "change"
    assert d.stop() == 0


def test_burst_of_500_files_gives_one_snapshot_with_final_contents(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"tomcat/conf/server.xml": "<Server/>"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    for number in range(500):
        make_tree(src, {f"tomcat/webapps/ROOT/f{number // 50}/file{number}.class": f"v1 {number}"})
    for number in range(0, 500, 7):
        make_tree(src, {f"tomcat/webapps/ROOT/f{number // 50}/file{number}.class": f"v2 {number}"})
    d.idle("svc", 2)
    time.sleep(QUIET * 4)
    assert snapshot_count(agent) == 2
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert read_tree(target) == read_tree(src)
    assert d.stop() == 0


def test_mkdir_p_rename_saves_and_swapped_tree_are_captured(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"tomcat/conf/server.xml": "<Server/>"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    # mkdir -p and immediate writes
    deep = os.path.join(src, "tomcat/webapps/new/WEB-INF/classes")
    os.makedirs(deep)
    with open(os.path.join(deep, "app.properties"), "w") as handle:
        handle.write("a=1")
    # an editor saving by rename
    tmp = os.path.join(src, "tomcat/conf/.server.xml.swp")
    with open(tmp, "w") as handle:
        handle.write("<Server edited='yes'/>")
    os.rename(tmp, os.path.join(src, "tomcat/conf/server.xml"))
    wait_for(lambda: snapshot_count(agent) >= 2)
    d.idle("svc", 2)
    target = str(tmp_path / "out1")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert read_tree(target) == read_tree(src)
    # the whole tree replaced by a rename (deploy by swap)
    staged = str(tmp_path / "staged")
    shutil.copytree(src, staged, symlinks=True)
    make_tree(staged, {"tomcat/conf/server.xml": "<Server release='2'/>", "tomcat/lib/new.jar": "jar"})
    old = str(tmp_path / "old")
    os.rename(src, old)
    os.rename(staged, src)
    wait_for(lambda: any(s["files"] == 3 for s in agent.snapshots("svc")))
    before = snapshot_count(agent)
    # ... and the new tree is watched: a later edit is captured too
    time.sleep(QUIET * 3)
    make_tree(src, {"tomcat/conf/context.xml": "<Context/>"})
    wait_for(lambda: snapshot_count(agent) > before)
    d.idle("svc", len(d.reports("svc")))
    time.sleep(QUIET * 3)
    target = str(tmp_path / "out2")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert read_tree(target) == read_tree(src)
    assert d.stop() == 0


def test_forced_inotify_overflow_ends_with_a_snapshot_equal_to_a_full_scan(agent, daemon, tmp_path):
    with open("/proc/sys/fs/inotify/max_queued_events") as handle:
        limit = int(handle.read())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to flood in a test")
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        for number in range(limit + 2000):  # each create + write + close is 3 events at least
            with open(os.path.join(src, "conf", f"f{number % 3000}.xml"), "w") as handle:
                handle.write(f"<v n='{number}'/>")
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_for(lambda: "overflow" in d.text().lower(), timeout=30)
    wait_for(lambda: "scans the whole tree" in d.text(), timeout=30)
    time.sleep(QUIET * 3)
    wait_for(lambda: not os.path.exists(os.path.join(agent.base, "busy")) and
             d.reports("svc")[-1] and "started" not in d.text().splitlines()[-1], timeout=60)
    time.sleep(QUIET * 4)
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert read_tree(target) == read_tree(src)
    assert d.stop() == 0


def test_kill_9_during_backup_then_restart_verifies_and_runs_again(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    for number in range(40):
        with open(os.path.join(src, f"big{number}.bin"), "wb") as handle:
            handle.write(os.urandom(2_500_000))
    wait_for(lambda: "backup started (change" in d.text().split("svc: backup ok")[-1], timeout=20)
    time.sleep(0.3)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    assert agent.run("verify", "--read-data").returncode == 0
    d2 = daemon()
    d2.idle("svc", 1, timeout=60)  # the start-up full scan takes the interrupted change
    wait_for(lambda: read_tree_restored(agent, tmp_path) == read_tree(src), timeout=60)
    assert d2.stop() == 0


def read_tree_restored(agent, tmp_path):
    target = str(tmp_path / f"out-{time.monotonic_ns()}")
    if agent.run("restore", "svc:latest", "--target", target).returncode != 0:
        return None
    return read_tree(target)


def test_sigterm_during_a_long_backup_exits_0_within_bounds_and_repository_verifies(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    os.makedirs(src)
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    with open(os.path.join(src, "huge.dump"), "wb") as handle:
        block = os.urandom(1 << 20)
        for number in range(1500):  # 1.5 GB: longer than the shutdown grace
            handle.write(number.to_bytes(8, "little") + block[8:])
    wait_for(lambda: "backup started (change" in d.text().split("svc: backup ok")[-1], timeout=30)
    time.sleep(0.5)
    started = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - started < 11
    assert agent.run("verify").returncode == 0


def test_downtime_catch_up_and_status(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src, extra='every = "40s"'.replace("every", "# every")).replace(
        'every = "24h"', 'every = "40s"'))
    agent.backup("svc")
    # pretend the last backup was two days ago and the agent was down since
    state_file = os.path.join(agent.state_dir, "jobs", "svc.json")
    with open(state_file) as handle:
        data = json.load(handle)
    old = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    data["last_ok"] = data["last_full"] = data["last_run"]["finished_at"] = old
    with open(state_file, "w") as handle:
        json.dump(data, handle)
    status = json.loads(agent.run("status", "--json", check=0).stdout)
    [row] = status["jobs"]
    assert set(row) >= {"name", "type", "last_run", "last_ok", "last_status", "last_trigger", "next_due", "watch"}
    assert row["watch"] == "off" and status["agent"]["running"] is False
    d = daemon()
    d.idle("svc", 1, timeout=15)
    assert "backup ok (catch-up)" in d.text()
    assert len([line for line in d.text().splitlines() if "(catch-up)" in line]) == 1
    status = json.loads(agent.run("status", "--json", check=0).stdout)
    assert status["jobs"][0]["last_trigger"] == "catch-up" and status["agent"]["running"] is True
    assert d.stop() == 0


def test_sighup_reload_adds_jobs_and_keeps_old_config_when_invalid(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    other = str(tmp_path / "other")
    make_tree(src, {"a": "a"})
    make_tree(other, {"b": "b"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    agent.write_jobs(fs_job("other", other, extra=f'on_change = true\nquiet = "{QUIET}s"'), "other.toml")
    agent.backup("other")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded configuration: 2 jobs (1 added" in d.text())
    make_tree(other, {"c": "c"})
    wait_for(lambda: len(agent.snapshots("other")) == 2)
    agent.write_jobs("[jobs.broken]\ntype = \"fs\"\n", "broken.toml")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the old one" in d.text())
    assert "jobs.broken.path: missing" in d.text()
    make_tree(src, {"z": "z"})
    # still watching under the old configuration (the CLI itself now refuses the broken one)
    wait_for(lambda: any("svc: backup ok (change): snapshot" in line for line in d.reports("svc")))
    assert d.stop() == 0


def test_pause_holds_change_backups_and_resume_takes_one(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    assert "paused until" in agent.run("pause", "svc", "--for", "10m", check=0).stdout
    for number in range(5):
        make_tree(src, {f"deploy/{number}.war": "w"})
    time.sleep(QUIET * 5)
    assert snapshot_count(agent) == 1
    agent.run("resume", "svc", check=0)
    wait_for(lambda: snapshot_count(agent) == 2)
    time.sleep(QUIET * 4)
    assert snapshot_count(agent) == 2
    assert d.stop() == 0


def test_systemd_notify_readiness_watchdog_and_journal_format(agent, tmp_path):
    import socket

    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    watched_job(agent, src)
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000", "JOURNAL_STREAM": "8:1234"}
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages = []
        while "WATCHDOG=1" not in messages or "READY=1" not in messages:
            messages.append(sock.recv(4096).decode())
        assert messages.index("READY=1") < messages.index("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line.startswith(("<6>", "<4>", "<3>")) for line in lines), lines[:5]
    assert not any(line[3:7].isdigit() for line in lines)  # no timestamp of our own under journald


def test_a_paused_change_does_not_wake_the_loop_and_the_index_is_let_go(agent, tmp_path, monkeypatch):
    """The daemon in-process, on a real tree: while a pause holds a settled change, the loop sleeps until
    the pause ends (it woke ~20 times a second before), and the index is let go after the idle time."""
    import threading

    from agent import daemon as daemon_module
    from agent.state import StateDir

    monkeypatch.setattr(daemon_module, "IDLE_RELEASE", 1.0)
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    watched_job(agent, src)
    d = daemon_module.Daemon(agent.config)
    loop = threading.Thread(target=d.run_forever, name="daemon-loop")
    loop.start()
    try:
        state = StateDir(agent.state_dir)
        wait_for(lambda: (state.job("svc").last_run or {}).get("trigger") == "startup" and not d.running)
        make_tree(src, {"b": "b"})
        wait_for(lambda: snapshot_count(agent) == 2 and not d.running and not d.debouncer.pending("svc"))
        state.set_pause("svc", time.time() + 600)
        d.wake.set()  # what `pause` does through SIGUSR1
        make_tree(src, {"c": "c"})
        wait_for(lambda: d.debouncer.pending("svc") and time.monotonic() > d.debouncer.deadline("svc") + 0.5)
        wait_for(lambda: not d.repo.holds_index, timeout=10)
        passes = d.passes
        time.sleep(2.0)  # a window to count wake-ups in, not a speed
        assert d.passes - passes <= 2, f"{d.passes - passes} wake-ups in 2 s of pause"
        assert snapshot_count(agent) == 2
        state.set_pause("svc", None)
        d.wake.set()
        wait_for(lambda: snapshot_count(agent) == 3)
    finally:
        d.request_stop()
        loop.join(30)


def test_a_last_run_recorded_by_a_clock_that_ran_ahead_does_not_hold_the_timer(agent, daemon, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src).replace('every = "24h"', 'every = "40s"'))
    agent.backup("svc")
    state_file = os.path.join(agent.state_dir, "jobs", "svc.json")  # as a run under a wrong clock left it
    with open(state_file) as handle:
        data = json.load(handle)
    ahead = (datetime.now(timezone.utc) + timedelta(days=90)).isoformat().replace("+00:00", "Z")
    data["last_ok"] = data["last_full"] = data["last_run"]["finished_at"] = ahead
    with open(state_file, "w") as handle:
        json.dump(data, handle)
    [row] = json.loads(agent.run("status", "--json", check=0).stdout)["jobs"]
    next_due = datetime.fromisoformat(row["next_due"].replace("Z", "+00:00"))
    assert next_due <= datetime.now(timezone.utc) + timedelta(seconds=40), row
    d = daemon()
    d.idle("svc", 1, timeout=30)
    assert "svc: backup ok (catch-up)" in d.reports("svc")[0]
    [row] = json.loads(agent.run("status", "--json", check=0).stdout)["jobs"]
    assert row["last_run"] < ahead and row["next_trigger"] == "schedule"
    assert datetime.fromisoformat(row["next_due"].replace("Z", "+00:00")) <= \
        datetime.now(timezone.utc) + timedelta(seconds=40)
    assert d.stop() == 0


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 2 MiB tmpfs mounted for the test (root only), unmounted whatever happens."""
    return tmpfs("2m")


def fill(directory: str) -> str:
    """Write a file in `directory` until its filesystem is full; returns its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28, exc
    try:
        while True:  # the last partial page
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def open_files(pid: int) -> List[str]:
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return names


def test_a_full_state_dir_fails_runs_truthfully_and_leaks_no_lock(agent, small_tmpfs, daemon, tmp_path):
    """state_dir on a full filesystem: each run fails, says "No space left on device" and where, in the
    log, in `status` and in `backup`'s answer (which does not hang); the job's lock is not held between
    runs; once space is freed, the next run succeeds."""
    with open(agent.config) as handle:
        text = handle.read().replace(f'state_dir = "{agent.state_dir}"', f'state_dir = "{small_tmpfs}/state"')
    with open(agent.config, "w") as handle:
        handle.write(text)
    agent.state_dir = f"{small_tmpfs}/state"  # the daemon fixture's agent too
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    filler = fill(small_tmpfs)
    make_tree(src, {"conf/server.xml": "<Server port='1'/>"})
    wait_for(lambda: any("svc: backup failed (change)" in line for line in d.reports("svc")))
    failed = d.text().split("svc: backup failed (change)")[1]
    assert "No space left on device" in failed and os.path.join(small_tmpfs, "state") in failed
    assert "snapshot " in failed.splitlines()[0]  # what was committed is named, whatever failed after it
    lock = os.path.join(small_tmpfs, "state", "locks", "svc.lock")
    wait_for(lambda: not d.text().rstrip().endswith("started (change, changes)") and lock not in open_files(d.proc.pid))
    [row] = json.loads(agent.run("status", "--json", check=0).stdout)["jobs"]
    assert row["last_status"] == "failed" and "No space left on device" in row["last_error"], row
    manual = agent.run("backup", "svc", "--json", timeout=60)
    assert manual.returncode == 1 and "No space left on device" in manual.stdout + manual.stderr
    assert "waiting for the lock" not in manual.stderr
    os.unlink(filler)
    make_tree(src, {"conf/server.xml": "<Server port='2'/>"})
    wait_for(lambda: "svc: backup ok (change)" in d.text().split("svc: backup failed")[-1])
    assert agent.backup("svc")[0]["status"] == "ok"
    [row] = json.loads(agent.run("status", "--json", check=0).stdout)["jobs"]
    assert row["last_status"] == "ok" and row["last_error"] is None
    assert lock not in open_files(d.proc.pid)
    assert d.stop() == 0
