"""Prometheus exposition of the fleet view, computed from storage at scrape time (so several collector
processes sharing PostgreSQL all expose the same numbers).

The per-host families go through prometheus_client. The three per-host/job families (3 x hosts x jobs
samples: 36,000 for 1,000 hosts x 12 jobs) are written directly in the same text format: prometheus_client's
generic writer validates and escapes every label of every sample and took 0.45 s there, against a 200 ms
budget for the whole page. Host and job names are validated on intake (letters, digits, `._:-`), and are
escaped anyway; the tests parse the whole output with prometheus_client's parser.
"""

from __future__ import annotations

from typing import List, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.collector.freshness import HostView

PER_JOB = (
    ("backup_last_success_timestamp_seconds", "Finish time of the newest successful run"),
    ("backup_last_run_status", "1 if the newest run succeeded, 0 if it failed"),
    ("backup_overdue", "1 if the newest success is older than the policy's high end plus the grace (or there is none)"),
    ("backup_last_drill_success_timestamp_seconds", "Finish time of the newest restore drill that passed"),
    ("backup_drill_failing", "1 if the newest restore drill failed, 0 if it passed (absent before the first)"),
)


class _Hosts:
    def __init__(self, views: Sequence[HostView], reports: int) -> None:
        self.views, self.reports = views, reports

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        silent = GaugeMetricFamily("backup_host_silent", "1 if the host sent nothing for longer than its "
                                                         "shortest policy plus the grace", labels=["host"])
        missing = GaugeMetricFamily("backup_missing_reports", "Reports lost on the way (sequence gaps)",
                                    labels=["host"])
        for view in self.views:
            silent.add_metric([view.host], 1.0 if view.state == "silent" else 0.0)
            missing.add_metric([view.host], float(view.missing))
        total = CounterMetricFamily("backup_reports", "Run reports stored by the collector", value=self.reports)
        return [silent, missing, total]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _per_job(now: float, views: Sequence[HostView], grace: float) -> str:
    last_ok: List[str] = []
    status: List[str] = []
    overdue: List[str] = []
    drill_ok: List[str] = []
    drill_failing: List[str] = []
    for view in views:
        host = _label(view.host)
        for cell in view.cells:
            row, drill = cell.row, cell.drill
            if row is None:
                continue
            labels = f'{{host="{host}",job="{_label(cell.job)}"}}'
            if row.last_ok_ts is not None:
                last_ok.append(f"backup_last_success_timestamp_seconds{labels} {row.last_ok_ts!r}\n")
            status.append(f"backup_last_run_status{labels} {'1.0' if row.last_status == 'ok' else '0.0'}\n")
            late = row.last_ok_ts is None or now - row.last_ok_ts > row.every_high + grace
            overdue.append(f"backup_overdue{labels} {'1.0' if late else '0.0'}\n")
            if drill is not None:
                if drill.last_ok_ts is not None:
                    drill_ok.append(f"backup_last_drill_success_timestamp_seconds{labels} {drill.last_ok_ts!r}\n")
                drill_failing.append(f"backup_drill_failing{labels} {'0.0' if drill.last_status == 'ok' else '1.0'}\n")
    parts = []
    for (name, help_text), lines in zip(PER_JOB, (last_ok, status, overdue, drill_ok, drill_failing)):
        parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        parts.extend(lines)
    return "".join(parts)


CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(now: float, jobs: Sequence[str], views: Sequence[HostView], reports: int, grace: float = 3600.0) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Hosts(views, reports))
    return _per_job(now, views, grace).encode() + generate_latest(registry)
