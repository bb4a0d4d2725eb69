"""Run reports: the one record of every run, printed by `backup --json` and sent to the collector."""

from agent.report.model import Changes, RunReport, new_run_id, utc_now

__all__ = ["Changes", "RunReport", "new_run_id", "utc_now"]
