"""The timer module with an injected clock: no test waits for hours."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent.config import Job, parse_interval
from agent.report import RunReport
from agent.schedule import interval, next_due, retry_delay, spread
from agent.state import JobState, StateDir

DAY = 86400.0
T0 = 1_800_000_000.0  # "now" for these tests


def job(name: str = "db-analytics", every: str = "4h..6h") -> Job:
    return Job(name=name, type="mysql", every=parse_interval(every), source="test.toml", database="analytics")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def ran(ok_at: float, failures: int = 0, last_run_at: float = 0.0) -> JobState:
    report = {"finished_at": iso(last_run_at or ok_at), "status": "failed" if failures else "ok"}
    return JobState(last_run=report, last_ok=iso(ok_at), failures=failures, last_full=iso(ok_at))


def test_range_interval_is_inside_the_range_and_differs_between_hosts():
    j = job()
    values = {interval(j, f"node-{n}") for n in range(50)}
    assert all(4 * 3600 <= v <= 6 * 3600 for v in values)
    assert len(values) == 50 and max(values) - min(values) > 3600  # a fleet is spread out
    assert interval(j, "node-1") == interval(j, "node-1")  # stable per host and job


def test_next_due_after_success_and_never_beyond_high_end():
    j = job()
    due = next_due(j, "node-1", ran(T0 - 3600), started_at=T0 - 7200, now=T0)
    assert due.trigger == "schedule" and T0 - 3600 + 4 * 3600 <= due.at <= T0 - 3600 + 6 * 3600


def test_fresh_install_runs_first_backup_within_minutes_staggered():
    dues = [next_due(job(name=f"job-{n}", every="24h"), "node-1", JobState(), started_at=T0) for n in range(12)]
    assert all(T0 < d.at <= T0 + 200 for d in dues) and all(d.trigger == "schedule" for d in dues)
    assert len({round(d.at) for d in dues}) > 6


def test_downtime_catch_up_runs_soon_once_with_catch_up_trigger():
    j = job(every="24h")
    state = ran(T0 - 3 * DAY)  # the node was down for two days
    due = next_due(j, "node-1", state, started_at=T0)
    assert due.trigger == "catch-up" and T0 < due.at <= T0 + 140
    # after the catch-up run succeeded, the normal interval applies again
    after = next_due(j, "node-1", ran(due.at + 60), started_at=T0, now=due.at + 60)
    assert after.trigger == "schedule" and after.at == pytest.approx(due.at + 60 + DAY, abs=1e-3)


def test_restart_does_not_reset_the_clock():
    j = job(every="24h")
    state = ran(T0 - 3600)
    assert next_due(j, "node-1", state, started_at=T0).at == T0 - 3600 + DAY


def test_failed_runs_retry_with_growing_capped_backoff():
    j = job(every="4h..6h")
    delays = [retry_delay(j, n) for n in range(1, 10)]
    assert delays[0] == 300 and delays[1] == 600 and delays == sorted(delays)
    assert max(delays) < j.every.low
    due = next_due(j, "node-1", ran(T0 - 7200, failures=2, last_run_at=T0 - 60), started_at=T0 - 9000,
                   now=T0)
    assert due.trigger == "retry" and due.at == T0 - 60 + 600


def test_spread_is_uniform_enough():
    values = [spread("h", f"j{n}") for n in range(1000)]
    assert 0.45 < sum(values) / len(values) < 0.55


def _record(state: StateDir, name: str, finished: float, status: str = "ok") -> None:
    stamp = iso(finished)
    state.record(RunReport(id=f"r{finished}", host="node-1", job=name, type="mysql", trigger="schedule",
                           status=status, changed=True, snapshot=None, started_at=stamp, finished_at=stamp))


@pytest.mark.parametrize("ahead", [6 * 3600.0, 90 * DAY])
def test_a_clock_that_ran_ahead_once_does_not_hold_the_schedule_back(tmp_path, ahead):
    """Runs recorded while the clock was `ahead` (real state files, written as a run writes them): once the
    clock is right, the job is due within its policy, and the first run under the right clock sets the
    rhythm again."""
    j = job(every="4h..6h")
    state = StateDir(str(tmp_path))
    _record(state, j.name, T0 + ahead)
    running_for_a_day = next_due(j, "node-1", state.job(j.name), started_at=T0 - DAY, now=T0)
    assert running_for_a_day.trigger == "catch-up" and running_for_a_day.at <= T0
    just_started = next_due(j, "node-1", state.job(j.name), started_at=T0, now=T0)
    assert just_started.trigger == "catch-up" and T0 < just_started.at <= T0 + 140
    _record(state, j.name, T0 + 60)  # the run that followed, under the right clock
    after = next_due(j, "node-1", state.job(j.name), started_at=T0, now=T0 + 60)
    assert after.trigger == "schedule" and T0 + 60 + 4 * 3600 <= after.at <= T0 + 60 + 6 * 3600
    _record(state, j.name, T0 + ahead, status="failed")  # a failure stamped ahead: retried now, not then
    retry = next_due(j, "node-1", state.job(j.name), started_at=T0 - DAY, now=T0 + 120)
    assert retry.at <= T0 + 120
