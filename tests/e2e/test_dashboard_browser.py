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
        self.texts: Dict[Tuple[str, str], str] = {}
        self.rows: List[str] = []
        self.cell: Tuple[str, str] = ("", "")

    def handle_starttag(self, tag: str, attrs) -> None:
        attr = dict(attrs)
        if tag == "tr" and "data-host-state" in attr:
            self.hosts[attr["data-host"]] = attr["data-host-state"]
            self.rows.append(attr["data-host"])
        if tag == "td" and "data-state" in attr:
            key = (self.rows[-1], attr["data-job"])
            self.cells[key] = attr["data-state"]
            self.titles[key] = attr.get("title", "")
            self.texts[key] = ""
            self.cell = key

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.cell = ("", "")

    def handle_data(self, data: str) -> None:
        if self.cell[0]:
            self.texts[self.cell] += data


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
    assert "3 h ago" in dom and "1 failing job<" in dom and "1 overdue job<" in dom and "2 ok jobs<" in dom
    assert "0 silent hosts<" in dom and "1 host</span>" not in dom and "1 host with no report yet" in dom
    assert " never<" not in dom and "host(s)" not in dom  # cells without a report are blank, not counted
    assert page.texts[("node-3", "db-analytics")] == page.texts[("node-3", "services-api")] == ""
    assert page.texts[("node-2", "db-analytics")] == "overdue; last ok 8 h ago"
    assert page.texts[("node-2", "services-api")] == "failed; no success yet"
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
        body = report("node-03", "services-api", seq, status=run["status"], trigger=run["trigger"], type="fs",
                      started_at=iso(finished - timedelta(seconds=run["seconds"])), finished_at=iso(finished),
                      bytes=(800 + (94 * 24 - run["age"].days * 24)) * 2**20 // 8, new_bytes=run["new_bytes"],
                      files=5120, low=86400, high=86400, **extra)
        if run["status"] == "failed":
            body["errors"] = ["/services/api/webapps/api/WEB-INF/classes/app.properties: Permission denied"]
        bodies.append(body)
    return bodies


def test_job_history_draws_90_days_of_runs_and_three_charts(start_collector):
    collector = start_collector()
    token = make_token(collector.tokens_file, "node-03")
    now = datetime.now(timezone.utc)
    bodies = job_history(now)
    for body in bodies:
        assert collector.post(token, body).status_code == 200
    url = collector.url + "/hosts/node-03/jobs/services-api"
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
    screenshot(url, "deployment.png", "1100,1000")


POLICY = {**{job: (4 * 3600, 6 * 3600) for job in ("db-analytics", "db-provisioning", "db-riak")},
          **{job: (86400, 86400) for job in ("db-console", "db-credentials", "db-enstratus-console")},
          **{f"services-{name}": (86400, 86400)
             for name in ("api", "console", "dispatcher", "km", "monitor", "worker")}}
DENIED = ("mariadb-dump: Got error: 1045: \"Access denied for user 'backup'@'localhost' "
          "(using password: YES)\" when trying to connect")


def fleet(now: datetime) -> Tuple[Dict[str, List[dict]], Dict[Tuple[str, str], str]]:
    """Seven nodes of the Enstratius policy: node-03's db-analytics fails since its password changed
    (two weeks of history before), node-05's services-worker is a day behind, node-07 has a token and
    never reported. Returns the reports per host (in sequence order) and the state each cell must show."""
    runs: Dict[str, List[tuple]] = {}
    expected: Dict[Tuple[str, str], str] = {}
    for number in range(1, 7):
        host = f"node-{number:02d}"
        for index, (job, (low, high)) in enumerate(POLICY.items()):
            hours = (1 + (number + index) % 4) * (1 if low < 86400 else 4)
            if (host, job) == ("node-05", "services-worker"):
                hours = 31
            trigger = "change" if job.startswith("services") and (number + index) % 3 == 0 else "schedule"
            runs.setdefault(host, []).append((hours, job, trigger, "ok"))
            expected[(host, job)] = "overdue" if hours * 3600 > high + 3600 else "ok"
    history = runs["node-03"]
    history.remove(next(run for run in history if run[1] == "db-analytics"))
    for step in range(14 * 24 // 5, -1, -1):  # every 5 hours for two weeks; the last two runs failed
        history.append((step * 5 + 0.5, "db-analytics", "schedule", "failed" if step < 2 else "ok"))
    expected[("node-03", "db-analytics")] = "failing"
    expected.update({("node-07", job): "never" for job in POLICY})
    bodies: Dict[str, List[dict]] = {"node-07": []}
    for host, host_runs in runs.items():
        for seq, (hours, job, trigger, status) in enumerate(sorted(host_runs, key=lambda run: -run[0]), 1):
            low, high = POLICY[job]
            body = report(host, job, seq, status=status, age_hours=hours, low=low, high=high, trigger=trigger,
                          type="mysql" if job.startswith("db-") else "fs", bytes=(300 + 7 * seq) * 2**20,
                          new_bytes=(seq % 7 + 1) * 2**18)
            finished = datetime.fromisoformat(body["finished_at"].replace("Z", "+00:00"))
            body["started_at"] = iso(finished - timedelta(seconds=20 + seq % 9 * 3))
            if status == "failed":  # a dump that never started stores nothing
                body.update(errors=[DENIED], bytes=0, new_bytes=0, started_at=iso(finished - timedelta(seconds=1)))
            bodies.setdefault(host, []).append(body)
    return bodies, expected


def test_a_fleet_shows_its_failing_overdue_and_new_nodes(start_collector):
    collector = start_collector()
    bodies, expected = fleet(datetime.now(timezone.utc))
    for host, host_bodies in bodies.items():
        token = make_token(collector.tokens_file, host)
        for body in host_bodies:
            posted = collector.post(token, body)
            assert posted.status_code == 200, posted.text
    page = Cells()
    page.feed(browse(collector.url + "/", "--dump-dom"))
    assert page.cells == expected
    assert page.hosts["node-07"] == "never"
    assert f"last error: {DENIED}" in page.titles[("node-03", "db-analytics")]
    assert page.rows.index("node-03") < page.rows.index("node-05") < page.rows.index("node-01")
    screenshot(collector.url + "/", "fleet.png", "1790,280")
    history = Svg()
    url = collector.url + "/hosts/node-03/jobs/db-analytics"
    history.feed(browse(url, "--dump-dom"))
    failed = [mark for mark in history.marks if mark["data-run-status"] == "failed"]
    assert len(failed) == 2 and {mark["fill"] for mark in failed} == {FAILED}
    assert len(history.marks) == sum(1 for body in bodies["node-03"] if body["job"] == "db-analytics")
    screenshot(url, "failing.png", "1100,760")


def test_a_fleet_of_twelve_jobs_fits_a_1400_px_window(start_collector, tmp_path):
    """The fleet table with the shipped policy's twelve jobs: its last column ("lost reports") must end
    inside a 1400 px wide window (headers wrap). The page is measured by a script appended to a copy of it,
    since the dashboard itself has none."""
    import httpx

    collector = start_collector()
    jobs = ["db-analytics", "db-console", "db-credentials", "db-enstratus-console", "db-provisioning", "db-riak",
            "services-api", "services-console", "services-dispatcher", "services-km", "services-monitor",
            "services-worker"]
    for number, host in enumerate(("enstratus-node-01", "enstratus-node-02")):
        token = make_token(collector.tokens_file, host)
        for seq, job in enumerate(jobs, 1):
            body = report(host, job, seq, age_hours=30 if number else 2, status="failed" if seq % 5 == 0 else "ok")
            posted = collector.post(token, body)
            assert posted.status_code == 200, posted.text
    html = httpx.get(collector.url + "/").text
    probe = ("<script>const t = document.querySelector('#fleet tr th:last-child').getBoundingClientRect();"
             "document.body.setAttribute('data-right', Math.ceil(t.right));"
             "document.body.setAttribute('data-width', document.documentElement.clientWidth);</script>")
    copy = tmp_path / "fleet.html"
    copy.write_text(html.replace('<meta http-equiv="refresh"', '<meta name="x"').replace("</body>", probe + "</body>"))
    dom = browse(copy.as_uri(), "--dump-dom", "--window-size=1400,900")
    right = int(dom.split('data-right="')[1].split('"')[0])
    width = int(dom.split('data-width="')[1].split('"')[0])
    assert width <= 1400 and 0 < right <= width, (right, width)
