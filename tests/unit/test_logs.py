"""The agent's log handler: every line it writes is bounded, whatever the message, a library's warning
or a thread's crash."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest

from agent.logs import LINE_MAX, bound_lines, setup_logging


@pytest.fixture
def agent_logging(monkeypatch):
    """The agent's logging set up as the daemon does (its own stderr handler), restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, threading.excepthook
    yield setup_logging
    logging.captureWarnings(False)
    root.handlers[:], level, threading.excepthook = saved
    root.setLevel(level)


@pytest.mark.parametrize("journal", [False, True])
def test_no_line_the_agent_lets_through_is_longer_than_the_bound(agent_logging, capsys, monkeypatch, journal):
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    agent_logging()
    table = "{" + ", ".join(f"{n}: b'/services/api/work/Catalina/localhost/app{n}'" for n in range(2000)) + "}"
    logging.getLogger("backup-agent").error("svc: backup failed\n  error: %s\n  error: short", table)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"Callback with id '1' already exists for watch {table}. It will be Overwritten.",
                      RuntimeWarning, stacklevel=1)
    crash = threading.Thread(target=lambda: [][0] if table else None, name="crashing")
    crash.start()
    crash.join()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 6 and max(len(line) for line in lines) <= LINE_MAX
    assert any("error: short" in line for line in lines)           # the lines after a long one are kept
    assert any("already exists" in line for line in lines)         # warnings go through the handler
    assert any("thread crashing crashed" in line for line in lines)
    assert any("more characters)" in line for line in lines)       # a cut line says so


def test_bound_lines_counts_what_it_cut():
    assert bound_lines("short\nline") == "short\nline"
    cut = bound_lines("x" * 1000, 100)
    kept = cut.index(".")
    assert len(cut) <= 100 and kept > 60 and cut == "x" * kept + f"... ({1000 - kept} more characters)"
