"""The demo as the README runs it: the real command, to the end by itself; and `demo --serve`, which keeps
the dashboard up (a failing and an overdue job on it) until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from agent.demo import build_sandbox
from tests.helpers import agent_command

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _excludes(path: str) -> set:
    with open(path, "rb") as handle:
        return {tuple(job["exclude"]) for job in tomllib.load(handle)["jobs"].values()}


def test_the_demo_runs_the_shipped_tomcat_policy(tmp_path):
    """The sandbox's service jobs exclude exactly what conf.d/services.toml does (the anchored logs/, temp/
    and work/), so the demo shows what the shipped policy keeps."""
    sandbox = build_sandbox(str(tmp_path))
    shipped = _excludes(os.path.join(REPO_ROOT, "conf.d", "services.toml"))
    assert len(shipped) == 1 and "/tomcat/logs/" in next(iter(shipped))
    assert _excludes(os.path.join(sandbox.base, "conf.d", "services.toml")) == shipped


def shown_command(cwd: str) -> str:
    """How the demo must name the command it was started as, seen from `cwd`."""
    command = agent_command()
    if len(command) > 1:
        return f"{sys.executable} -m agent"
    relative = os.path.relpath(command[0], cwd)
    return command[0] if relative.startswith("..") else relative


@pytest.mark.timeout(300)
def test_demo_finishes_by_itself_and_shows_a_failing_and_an_overdue_job(tmp_path):
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(agent_command()[0])))  # where .venv/ is
    result = subprocess.run([*agent_command(), "demo", "--dir", str(tmp_path / "demo")], cwd=cwd,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^  demo-node +db-billing +failing ", out, re.M), out
    assert re.search(r"^  demo-node-2 +services-legacy +overdue ", out, re.M), out
    assert re.search(r"^M    tomcat/conf/server.xml  \(content\)$", out, re.M), out
    assert "server.xml restored identical: yes; logs/ restored empty" in out
    assert "change-triggered snapshot taken: yes" in out
    command = shown_command(cwd)
    assert f"Done. Try: {command} --config {tmp_path / 'demo' / 'agent.toml'} snapshots" in out
    assert f"`{command} demo --serve` keeps it up" in out
    assert "Try: backup-agent " not in out or command == "backup-agent"
    assert "True" not in out and "False" not in out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_demo_serve_keeps_the_dashboard_until_ctrl_c(tmp_path, stop):
    """Ctrl-C (SIGINT to the foreground group) or a SIGTERM to the demo alone: the collector stops too."""
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        # its own process group, as a shell gives a foreground job: Ctrl-C reaches the demo and its collector
        proc = subprocess.Popen([*agent_command(), "demo", "--dir", str(tmp_path / "demo"), "--serve"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        match = None
        while match is None and time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"serving the dashboard at (http://\S+)/ until you press Ctrl-C", log_path.read_text())
            time.sleep(0.2)
        assert match, log_path.read_text()
        url = match.group(1)
        time.sleep(1.0)
        assert proc.poll() is None  # still serving after the walk-through
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "db-billing" in page.text and "demo-node-2" in page.text
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)  # the collector child must not outlive it
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
