"""The README's first command ends in `backup-agent demo`: the real command, as a new user runs it (no
terminal), walks through the sandbox and exits 0 only if every step did what it shows."""

from __future__ import annotations

import subprocess

from tests.helpers import agent_command


def test_the_demo_walks_through_and_exits_0(tmp_path):
    result = subprocess.run([*agent_command(), "demo", "--dir", str(tmp_path / "demo")], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "server.xml restored identical: yes; logs/ restored empty" in result.stdout
    assert "change-triggered snapshot taken: yes" in result.stdout
    assert "\nDone." in result.stdout
