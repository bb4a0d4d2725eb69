"""The job history's pictures, drawn on the server as inline SVG (no scripts, no front-end framework):
a timeline of the last 90 days with one mark per run, in the lane and colour of its trigger (red when
the run failed), and bar charts of new bytes, snapshot size and duration on the same time axis.

Every mark and bar carries `data-run-status` and `data-trigger` (the browser test reads them), and a mark's
`<title>` is its tooltip. Colours: Tableau 10 (Tableau's default categorical palette), red kept for
failures and never given to a trigger."""

from __future__ import annotations

import time
from html import escape
from typing import Callable, Dict, List, Sequence, Tuple

from agent.collector.storage import Run
from agent.text import plural

WINDOW = 90 * 86400.0        # seconds of history drawn
MAX_RUNS = 2000              # newest runs drawn; beyond that the page would weigh megabytes
WIDTH = 900                  # px of the time axis
LEFT = 80                    # px left of it: lane names, value labels
RIGHT = 12
LANE = 18                    # px per timeline lane
CHART = 70                   # px of a bar chart's value axis
AXIS = 16                    # px under a plot for the date labels

FAILED = "#d62728"
OTHER = "#e377c2"            # a trigger this collector does not know yet
TRIGGER_COLOURS: Dict[str, str] = {
    "change": "#1f77b4", "schedule": "#2ca02c", "catch-up": "#17becf", "retry": "#ff7f0e",
    "manual": "#7f7f7f", "startup": "#bcbd22", "drill": "#9467bd", "prune": "#8c564b",
}

STYLE = """
svg.chart{display:block;margin:.3em 0 .8em;max-width:100%;height:auto;font:11px system-ui,sans-serif}
svg.chart text{fill:#555}svg.chart .grid{stroke:#e4e4e4}svg.chart .base{stroke:#999}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:.8em;height:.8em;
margin-right:.3em;vertical-align:-.05em}
"""

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def colour(run: Run) -> str:
    """A failed run is red whatever its trigger; a good one takes its trigger's colour."""
    return FAILED if run.status != "ok" else TRIGGER_COLOURS.get(run.trigger, OTHER)


def size_text(count: float) -> str:
    """Bytes for people, binary units: `512 B`, `1.5 KiB` ... `2.0 TiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """`0.4 s`, `42 s`, `3.5 min`, `1.2 h`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _Scale:
    """Time (epoch seconds) to x (px) over the window ending at `now`."""

    def __init__(self, now: float) -> None:
        self.start = now - WINDOW
        self.now = now

    def x(self, ts: float) -> float:
        return LEFT + (min(max(ts, self.start), self.now) - self.start) / WINDOW * WIDTH

    def ticks(self) -> List[Tuple[float, str]]:
        """(x, label) at UTC midnight of every 1st and 15th of a month inside the window."""
        result = []
        day = int(self.start // 86400 + 1) * 86400
        while day <= self.now:
            parts = time.gmtime(day)
            if parts.tm_mday in (1, 15):
                result.append((self.x(day), f"{MONTHS[parts.tm_mon - 1]} {parts.tm_mday}"))
            day += 86400
        return result


def _axis(scale: _Scale, top: int, bottom: int) -> str:
    """Vertical grid lines from `top` to `bottom` and the date labels under them."""
    parts = [f'<line class="base" x1="{LEFT}" y1="{bottom}" x2="{LEFT + WIDTH}" y2="{bottom}"/>']
    for x, label in scale.ticks():
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}"/>'
                     f'<text x="{x:.1f}" y="{bottom + 12}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{LEFT + WIDTH}" y="{bottom + 12}" text-anchor="end">now</text>')
    return "".join(parts)


def _svg(name: str, height: int, body: str, label: str) -> str:
    width = LEFT + WIDTH + RIGHT
    return (f'<svg class="chart" id="{name}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">{body}</svg>')


def _bar_width(runs: Sequence[Run]) -> float:
    """0.7 of the median distance between two runs on the time axis, within 1-6 px: wide bars for a
    sparse history, touching hairlines for a dense one."""
    times = sorted(run.finished_ts for run in runs)
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    if not gaps:
        return 6.0
    return max(1.0, min(6.0, 0.7 * gaps[len(gaps) // 2] / WINDOW * WIDTH))


def timeline(now: float, runs: Sequence[Run]) -> str:
    """One lane per trigger seen (known triggers first, in TRIGGER_COLOURS order); each run a mark at its
    finish time. A failed mark is red and spans the lane's height, a good one is shorter."""
    scale = _Scale(now)
    seen = {run.trigger for run in runs}
    lanes = [trigger for trigger in TRIGGER_COLOURS if trigger in seen] + sorted(seen - set(TRIGGER_COLOURS))
    row = {trigger: index for index, trigger in enumerate(lanes)}
    bottom = 4 + LANE * len(lanes)
    width = _bar_width(runs)
    parts = [_axis(scale, 2, bottom)]
    for trigger, index in row.items():
        parts.append(f'<text x="{LEFT - 6}" y="{4 + index * LANE + 13}" text-anchor="end">{escape(trigger)}</text>')
    # good runs first, so that a failure drawn at the same place stays visible on top
    for run in sorted(runs, key=lambda run: (run.status != "ok", run.finished_ts)):
        top = 4 + row[run.trigger] * LANE
        failed = run.status != "ok"
        y, height = (top + 1, LANE - 2) if failed else (top + 4, LANE - 8)
        tip = (f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(run.finished_ts))} UTC, {run.trigger}, {run.status}: "
               f"{size_text(run.new_bytes)} new of {size_text(run.bytes)}, "
               f"{duration_text(run.finished_ts - run.started_ts)}")
        parts.append(f'<rect class="run" data-run-status="{escape(run.status)}" data-trigger="{escape(run.trigger)}" '
                     f'x="{scale.x(run.finished_ts) - width / 2:.1f}" y="{y}" width="{width:.1f}" height="{height}" '
                     f'fill="{colour(run)}"><title>{escape(tip)}</title></rect>')
    return _svg("timeline", bottom + AXIS, "".join(parts), "runs of the last 90 days by trigger and status")


def bar_chart(name: str, title: str, now: float, runs: Sequence[Run], value: Callable[[Run], float],
              text: Callable[[float], str]) -> str:
    """One bar per run at its finish time, height `value(run)` on a scale from 0 to the largest value;
    the axis is labelled with `text` of that largest value."""
    scale = _Scale(now)
    top, bottom = 18, 18 + CHART
    values = [float(max(value(run), 0.0)) for run in runs]
    largest = max(values, default=0.0)
    width = _bar_width(runs)
    parts = [f'<text x="{LEFT}" y="11" font-weight="600">{escape(title)}</text>',
             f'<line class="grid" x1="{LEFT}" y1="{top}" x2="{LEFT + WIDTH}" y2="{top}"/>',
             f'<text x="{LEFT - 6}" y="{top + 4}" text-anchor="end">{escape(text(largest))}</text>',
             f'<text x="{LEFT - 6}" y="{bottom}" text-anchor="end">0</text>', _axis(scale, top, bottom)]
    for run, amount in sorted(zip(runs, values), key=lambda pair: (pair[0].status != "ok", pair[0].finished_ts)):
        height = amount / largest * CHART if largest else 0.0
        if amount > 0:
            height = max(height, 1.0)  # a small but real value stays visible
        parts.append(f'<rect class="bar" data-run-status="{escape(run.status)}" data-trigger="{escape(run.trigger)}" '
                     f'data-value="{amount}" x="{scale.x(run.finished_ts) - width / 2:.1f}" '
                     f'y="{bottom - height:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{colour(run)}"/>')
    return _svg(name, bottom + AXIS, "".join(parts), title)


def legend(runs: Sequence[Run]) -> str:
    seen = {run.trigger for run in runs}
    items = [(trigger, TRIGGER_COLOURS.get(trigger, OTHER)) for trigger in
             [t for t in TRIGGER_COLOURS if t in seen] + sorted(seen - set(TRIGGER_COLOURS))]
    items.append(("failed", FAILED))
    return '<p class="legend muted">' + "".join(
        f'<span><i style="background:{fill}"></i>{escape(name)}</span>' for name, fill in items) + "</p>"


def history_charts(now: float, runs: Sequence[Run]) -> str:
    """The pictures of a job's history page: legend, timeline, new bytes, snapshot size, duration.
    `runs`: the job's runs that finished in the last WINDOW seconds before `now` (any order)."""
    if not runs:
        return '<p class="muted">No runs in the last 90 days.</p>'
    failed = sum(1 for run in runs if run.status != "ok")
    capped = f" (the newest {MAX_RUNS})" if len(runs) >= MAX_RUNS else ""
    return (f'<h2>Last 90 days: {plural(len(runs), "run")}{capped}, {failed} failed</h2>' + legend(runs)
            + timeline(now, runs)
            + bar_chart("new-bytes", "new bytes", now, runs, lambda run: run.new_bytes, size_text)
            + bar_chart("size", "snapshot size", now, runs, lambda run: run.bytes, size_text)
            + bar_chart("duration", "duration", now, runs, lambda run: run.finished_ts - run.started_ts,
                        duration_text))
