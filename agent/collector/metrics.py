"""Prometheus exposition of the fleet view, computed from storage at scrape time (so several collector
processes sharing PostgreSQL all expose the same numbers)."""

from __future__ import annotations

from typing import Sequence, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.collector.freshness import HostView


class _Fleet:
    def __init__(self, now: float, views: Sequence[HostView], reports: int, grace: float) -> None:
        self.now, self.views, self.reports, self.grace = now, views, reports, grace

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        labels = ["host", "job"]
        last_ok = GaugeMetricFamily("backup_last_success_timestamp_seconds",
                                    "Finish time of the newest successful run", labels=labels)
        last_status = GaugeMetricFamily("backup_last_run_status",
                                        "1 if the newest run succeeded, 0 if it failed", labels=labels)
        overdue = GaugeMetricFamily("backup_overdue", "1 if the newest success is older than the policy's high "
                                                      "end plus the grace (or there is none)", labels=labels)
        silent = GaugeMetricFamily("backup_host_silent", "1 if the host sent nothing for longer than its "
                                                         "shortest policy plus the grace", labels=["host"])
        missing = GaugeMetricFamily("backup_missing_reports", "Reports lost on the way (sequence gaps)",
                                    labels=["host"])
        for view in self.views:
            silent.add_metric([view.host], 1.0 if view.state == "silent" else 0.0)
            missing.add_metric([view.host], float(view.missing))
            for cell in view.cells:
                row = cell.row
                if row is None:
                    continue
                if row.last_ok_ts is not None:
                    last_ok.add_metric([view.host, cell.job], row.last_ok_ts)
                last_status.add_metric([view.host, cell.job], 1.0 if row.last_status == "ok" else 0.0)
                late = row.last_ok_ts is None or self.now - row.last_ok_ts > row.every_high + self.grace
                overdue.add_metric([view.host, cell.job], 1.0 if late else 0.0)
        total = CounterMetricFamily("backup_reports", "Run reports stored by the collector", value=self.reports)
        return [last_ok, last_status, overdue, silent, missing, total]


def render(now: float, jobs: Sequence[str], views: Sequence[HostView], reports: int,
           grace: float = 3600.0) -> Tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fleet(now, views, reports, grace))
    return generate_latest(registry), CONTENT_TYPE_LATEST
