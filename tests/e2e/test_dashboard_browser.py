"""The dashboard in a real headless Chromium: the states and the job history's SVG marks and bars are read
from the rendered page. Screenshots go to test-artifacts/, or to $DASHBOARD_SCREENSHOTS (the README's
pictures: `DASHBOARD_SCREENSHOTS=docs/screenshots pytest tests/e2e/test_dashboard_browser.py`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Dict, List, Tuple

import pytest

from agent.collector.charts import FAILED
from tests.e2e.test_collector import iso, report
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


def screenshot(url: str, name: str, size: str) -> str:
    """A PNG of the page at `url` in a window of `size` ("W,H"), as `name` under $DASHBOARD_SCREENSHOTS
    (relative to the checkout) or test-artifacts/; returns its path."""
    root = os.path.dirname(ARTIFACTS)
    directory = os.path.join(root, os.environ.get("DASHBOARD_SCREENSHOTS") or ARTIFACTS)
    os.makedirs(directory, exist_ok=True)
    shot = os.path.join(directory, name)
    if os.path.exists(shot):
        os.unlink(shot)
    browse(url, f"--screenshot={shot}", f"--window-size={size}")
    with open(shot, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    return shot


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
    screenshot(collector.url + "/", "dashboard.png", "1100,500")
    history = browse(collector.url + "/hosts/node-2/jobs/services-api", "--dump-dom")
    assert 'data-status="failed"' in history and "dump failed: boom" in history


class Svg(HTMLParser):
    """The history page's marks (timeline) and bars (charts) with their attributes, and the legend."""

    def __init__(self) -> None:
        super().__init__()
        self.svg = ""
        self.marks: List[Dict[str, str]] = []
        self.bars: Dict[str, List[Dict[str, str]]] = {}
        self.legend: Dict[str, str] = {}
        self.swatch = ""

    def handle_starttag(self, tag: str, attrs) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "svg":
            self.svg = attr.get("id", "")
        elif tag == "rect" and attr.get("class") == "run":
            self.marks.append(attr)
        elif tag == "rect" and attr.get("class") == "bar":
            self.bars.setdefault(self.svg, []).append(attr)
        elif tag == "i" and "background:" in attr.get("style", ""):
            self.swatch = attr["style"].split("background:")[1]

    def handle_data(self, data: str) -> None:
        if self.swatch and data.strip():
            self.legend[data.strip()] = self.swatch
            self.swatch = ""


def job_history(now: datetime) -> List[dict]:
    """95 days of a Tomcat tree's runs, oldest first: a nightly schedule run (three failed), and a
    deployment every sixth day (change-triggered, one failed) whose new bytes and duration stand out."""
    runs = []
    for day in range(94, -1, -1):
        runs.append({"age": timedelta(days=day, hours=2), "trigger": "schedule", "status": "ok",
                     "new_bytes": (day % 5 + 1) * 2**20, "seconds": 20 + day % 7})
        if day in (3, 4, 40):
            runs[-1]["status"] = "failed"
        if day % 6 == 1:
            runs.append({"age": timedelta(days=day, hours=-5), "trigger": "change",
                         "status": "failed" if day == 19 else "ok",
                         "new_bytes": (40 + day % 4) * 2**20, "seconds": 95 + day % 3,
                         "changes": {"added": 2, "removed": 1, "changed": 5, "paths": [
                             "webapps/api.war", "webapps/api/WEB-INF/web.xml", "conf/server.xml"]}})
    bodies = []
    for seq, run in enumerate(sorted(runs, key=lambda run: -run["age"]), 1):
        finished = now - run["age"]
        extra = {"changes": run["changes"]} if "changes" in run else {}
        body = report("node-3", "services-api", seq, status=run["status"], trigger=run["trigger"], type="fs",
                      started_at=iso(finished - timedelta(seconds=run["seconds"])), finished_at=iso(finished),
                      bytes=(800 + (94 * 24 - run["age"].days * 24)) * 2**20 // 8, new_bytes=run["new_bytes"],
                      files=5120, low=86400, high=86400, **extra)
        if run["status"] == "failed":
            body["errors"] = ["/services/api/webapps/api/WEB-INF/classes/app.properties: Permission denied"]
        bodies.append(body)
    return bodies


def test_job_history_draws_90_days_of_runs_and_three_charts(start_collector):
    collector = start_collector()
    token = make_token(collector.tokens_file, "node-3")
    now = datetime.now(timezone.utc)
    bodies = job_history(now)
    for body in bodies:
        assert collector.post(token, body).status_code == 200
    url = collector.url + "/hosts/node-3/jobs/services-api"
    dom = browse(url, "--dump-dom")
    page = Svg()
    page.feed(dom)

    def finished(body: dict) -> datetime:
        return datetime.fromisoformat(body["finished_at"].replace("Z", "+00:00"))

    window = [body for body in bodies if now - finished(body) < timedelta(days=90)]
    assert 0 < len(window) < len(bodies)  # older runs are in the table, not drawn
    assert dom.count('<tr data-status="') == len(bodies)
    assert Counter((m["data-run-status"], m["data-trigger"]) for m in page.marks) == \
        Counter((body["status"], body["trigger"]) for body in window)
    # colour: a failed run is red whatever its trigger; a good one has its trigger's colour, as the legend says
    assert {m["fill"] for m in page.marks if m["data-run-status"] == "failed"} == {FAILED}
    for trigger in ("schedule", "change"):
        fills = {m["fill"] for m in page.marks if m["data-run-status"] == "ok" and m["data-trigger"] == trigger}
        assert fills == {page.legend[trigger]} and FAILED not in fills
    assert page.legend["schedule"] != page.legend["change"] and page.legend["failed"] == FAILED
    # one lane per trigger; the newest run is the rightmost mark
    lanes = {(m["data-trigger"], m["y"]) for m in page.marks if m["data-run-status"] == "ok"}
    assert len(lanes) == 2 and len({y for _, y in lanes}) == 2
    newest = max(page.marks, key=lambda m: float(m["x"]))
    assert (newest["data-trigger"], newest["data-run-status"]) == (window[-1]["trigger"], window[-1]["status"])

    assert set(page.bars) == {"new-bytes", "size", "duration"}
    seconds = {body["id"]: (finished(body) - datetime.fromisoformat(
        body["started_at"].replace("Z", "+00:00"))).total_seconds() for body in window}
    expected = {"new-bytes": sorted(body["new_bytes"] for body in window),
                "size": sorted(body["bytes"] for body in window), "duration": sorted(seconds.values())}
    for chart, values in expected.items():
        bars = page.bars[chart]
        assert sorted(float(bar["data-value"]) for bar in bars) == pytest.approx(values), chart
        tallest = max(bars, key=lambda bar: float(bar["height"]))
        assert float(tallest["data-value"]) == pytest.approx(max(values))
        for bar in bars:  # heights proportional to the values
            share = float(bar["data-value"]) / max(values)
            assert float(bar["height"]) == pytest.approx(share * float(tallest["height"]), abs=1.0)
    # the deployments' new bytes and durations stand out from the nightly runs
    change_bars = [bar for bar in page.bars["new-bytes"] if bar["data-trigger"] == "change"]
    assert min(float(bar["height"]) for bar in change_bars) > max(
        float(bar["height"]) for bar in page.bars["new-bytes"] if bar["data-trigger"] == "schedule")
    screenshot(url, "history.png", "1100,900")
