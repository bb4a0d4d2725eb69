"""The job history's SVG (agent.collector.charts) at its edges: an empty window, a trigger the collector
does not know, runs at the window's ends, sizes and durations for people."""

from __future__ import annotations

import re
import time

from agent.collector import charts
from agent.collector.storage import Run

NOW = time.mktime((2026, 11, 30, 12, 0, 0, 0, 0, 0)) - time.timezone  # 2026-11-30T12:00:00Z


def run(days_ago: float, trigger: str = "schedule", status: str = "ok", new: int = 10, size: int = 100,
        seconds: float = 5.0) -> Run:
    finished = NOW - days_ago * 86400
    return Run(finished - seconds, finished, status, trigger, size, new)


def marks(svg: str) -> list:
    return re.findall(r'<rect class="run" data-run-status="(\w+)" data-trigger="([\w-]+)" x="([\d.]+)"', svg)


def test_an_empty_window_says_so_and_draws_nothing():
    page = charts.history_charts(NOW, [])
    assert "No runs in the last 90 days" in page and "<svg" not in page


def test_a_trigger_the_collector_does_not_know_gets_a_lane_and_a_colour_of_its_own():
    runs = [run(1, "schedule"), run(2, "audit"), run(3, "change", status="failed")]
    svg = charts.timeline(NOW, runs)
    lanes = re.findall(rf'<text x="{charts.LEFT - 6}" y="\d+" text-anchor="end">([\w-]+)</text>', svg)
    assert lanes == ["change", "schedule", "audit"]  # known triggers first, in their order
    fills = dict(re.findall(r'data-trigger="([\w-]+)" x="[\d.]+" y="\d+" width="[\d.]+" height="\d+" '
                            r'fill="(#[0-9a-f]+)"', svg))
    assert fills == {"schedule": charts.TRIGGER_COLOURS["schedule"], "audit": charts.OTHER, "change": charts.FAILED}


def test_runs_are_placed_by_time_between_the_window_ends():
    runs = [run(0), run(45), run(89.9)]
    xs = sorted(float(x) for _, _, x in marks(charts.timeline(NOW, runs)))
    width = charts._bar_width(runs)
    centres = [x + width / 2 for x in xs]
    assert centres[0] < charts.LEFT + 2 and abs(centres[1] - (charts.LEFT + charts.WIDTH / 2)) < 1
    assert abs(centres[2] - (charts.LEFT + charts.WIDTH)) < 0.01


def test_bars_scale_to_the_largest_value_and_a_tiny_value_stays_visible():
    runs = [run(1, new=1000), run(2, new=1), run(3, new=0)]
    svg = charts.bar_chart("new-bytes", "new bytes", NOW, runs, lambda r: r.new_bytes, charts.size_text)
    heights = dict(re.findall(r'data-value="([\d.]+)" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg))
    assert float(heights["1000.0"]) == charts.CHART and float(heights["1.0"]) == 1.0 and float(heights["0.0"]) == 0
    assert ">1000 B</text>" in svg


def test_date_ticks_fall_on_the_first_and_fifteenth():
    labels = [label for _, label in charts._Scale(NOW).ticks()]
    assert labels == ["Sep 15", "Oct 1", "Oct 15", "Nov 1", "Nov 15"]


def test_sizes_and_durations_for_people():
    assert [charts.size_text(n) for n in (0, 1023, 1536, 5 * 2**30)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]
    assert [charts.duration_text(s) for s in (0.42, 42, 210, 4 * 3600)] == ["0.4 s", "42 s", "3.5 min", "4.0 h"]
