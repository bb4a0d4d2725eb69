"""The dashboard in a real headless Chromium: the states are read from the rendered page, and a
screenshot is kept as a test artifact (test-artifacts/dashboard.png)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from typing import Dict, List, Tuple

import pytest

from tests.e2e.test_collector import report
from tests.fixtures.collector import make_token

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "test-artifacts")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is required in CI (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")
    raise AssertionError


def browse(url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: Dict[Tuple[str, str], str] = {}
        self.hosts: Dict[str, str] = {}
        self.titles: Dict[Tuple[str, str], str] = {}
        self.rows: List[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        attr = dict(attrs)
        if tag == "tr" and "data-host-state" in attr:
            self.hosts[attr["data-host"]] = attr["data-host-state"]
            self.rows.append(attr["data-host"])
        if tag == "td" and "data-state" in attr:
            key = (self.rows[-1], attr["data-job"])
            self.cells[key] = attr["data-state"]
            self.titles[key] = attr.get("title", "")


def test_dashboard_shows_each_state_in_the_browser(start_collector):
    collector = start_collector()
    tokens = {host: make_token(collector.tokens_file, host) for host in ("node-1", "node-2", "node-3")}
    posts = [
        ("node-1", report("node-1", "db-analytics", 1, age_hours=3)),
        ("node-1", report("node-1", "services-api", 2, age_hours=2, low=86400, high=86400)),
        ("node-2", report("node-2", "db-analytics", 1, age_hours=8)),
        ("node-2", report("node-2", "services-api", 2, status="failed", low=86400, high=86400)),
    ]
    for host, body in posts:
        assert collector.post(tokens[host], body).status_code == 200
    dom = browse(collector.url + "/", "--dump-dom")
    page = Cells()
    page.feed(dom)
    assert page.cells == {
        ("node-1", "db-analytics"): "ok", ("node-1", "services-api"): "ok",
        ("node-2", "db-analytics"): "overdue", ("node-2", "services-api"): "failing",
        ("node-3", "db-analytics"): "never", ("node-3", "services-api"): "never",
    }
    assert "last error: dump failed: boom" in page.titles[("node-2", "services-api")]
    assert page.rows[0] == "node-2"  # problems first
    assert "3 h ago" in dom and "1 failing" in dom and "1 overdue" in dom
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "dashboard.png")
    if os.path.exists(shot):
        os.unlink(shot)
    browse(collector.url + "/", f"--screenshot={shot}", "--window-size=1100,500")
    with open(shot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    history = browse(collector.url + "/hosts/node-2/jobs/services-api", "--dump-dom")
    assert 'data-status="failed"' in history and "dump failed: boom" in history
