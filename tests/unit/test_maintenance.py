"""When the daemon's maintenance lane drills and prunes (agent.maintenance.due_tasks), on an injected clock;
and that each of its drills ends in a report, also where the repository fails (run_task, agent.drill)."""

from __future__ import annotations

from dataclasses import replace

from agent.config import Config, Job, Retention, parse_interval
from agent.crypt.settings import EncryptionSettings
from agent.maintenance import FIRST_DRILL_WITHIN, FIRST_PRUNE_WITHIN, START_DELAY, Records, Task, due_tasks, run_task

STARTED = 1_800_000_000.0
DAY = 86400.0


def config(*jobs: Job, **values) -> Config:
    return Config(path="/etc/agent.toml", host="node-1", repository="/repo", state_dir="/state", jobs_dir="/conf.d",
                  retention=Retention(), jobs=jobs, **values)


def job(name: str, drill_every=None) -> Job:
    return Job(name=name, type="fs", every=parse_interval("24h"), source="jobs.toml", path="/srv",
               drill_every=drill_every)


def records(drills=None, prune=None) -> dict:
    return {"drills": dict(drills or {}), "prune": {} if prune is None else {"last": prune}}


def by_kind(tasks) -> dict:
    return {(task.kind, task.job): task.at for task in tasks}


def test_first_drills_come_after_start_up_staggered_and_only_for_jobs_with_a_backup():
    cfg = config(job("api"), job("db"), job("new"))
    tasks = by_kind(due_tasks(cfg, records(), lambda name: name != "new", STARTED))
    assert ("drill", "new") not in tasks
    for name in ("api", "db"):
        assert STARTED + START_DELAY <= tasks[("drill", name)] < STARTED + START_DELAY + FIRST_DRILL_WITHIN
    assert tasks[("drill", "api")] != tasks[("drill", "db")]
    assert STARTED + START_DELAY <= tasks[("prune", None)] < STARTED + START_DELAY + FIRST_PRUNE_WITHIN


def test_later_drills_and_prunes_follow_their_period_and_a_job_may_set_its_own():
    cfg = replace(config(job("api"), job("db", drill_every=DAY)), prune_every=6 * 3600.0)
    tasks = by_kind(due_tasks(cfg, records({"api": STARTED - 100, "db": STARTED - 100}, prune=STARTED - 50),
                              lambda name: True, STARTED))
    assert tasks == {("drill", "api"): STARTED - 100 + 7 * DAY, ("drill", "db"): STARTED - 100 + DAY,
                     ("prune", None): STARTED - 50 + 6 * 3600}
    soonest = due_tasks(cfg, records({"api": STARTED - 100, "db": STARTED - 100}, prune=STARTED - 50),
                        lambda name: True, STARTED)[0]
    assert soonest == Task("prune", None, STARTED - 50 + 6 * 3600)


def test_a_short_period_shortens_the_start_up_delay():
    cfg = replace(config(job("api", drill_every=4.0)), prune_every=2.0)
    tasks = by_kind(due_tasks(cfg, records(), lambda name: True, STARTED))
    assert STARTED + 2.0 <= tasks[("drill", "api")] <= STARTED + 2.0 + 4.0
    assert STARTED + 1.0 <= tasks[("prune", None)] <= STARTED + 1.0 + 2.0


def test_a_node_that_encrypts_without_an_identity_runs_no_drills():
    encrypting = EncryptionSettings(recipients=("age1example",))
    cfg = config(job("api"), encryption=encrypting)
    assert [task.kind for task in due_tasks(cfg, records(), lambda name: True, STARTED)] == ["prune"]
    cfg = config(job("api"), encryption=replace(encrypting, identity_file="/etc/backup-agent/identity"))
    assert {task.kind for task in due_tasks(cfg, records(), lambda name: True, STARTED)} == {"drill", "prune"}


def test_records_keep_the_times_across_restarts(tmp_path):
    kept = Records(str(tmp_path))
    assert kept.load() == records()
    kept.record(Task("drill", "api", 0.0), STARTED)
    kept.record(Task("prune", None, 0.0), STARTED + 1)
    assert Records(str(tmp_path)).load() == records({"api": STARTED}, prune=STARTED + 1)
    (tmp_path / "maintenance.json").write_text("{not json")
    assert Records(str(tmp_path)).load() == records()  # a damaged file: as if nothing ran (all due again)


def test_start_up_clears_leftovers_and_names_what_it_will_not_follow(tmp_path, caplog):
    from agent.maintenance import Lane

    state = tmp_path / "state"
    (state / "drill" / "run-dead" / "fs").mkdir(parents=True)  # a killed drill's: removed
    Lane(replace(config(), state_dir=str(state)), STARTED, lambda name: True, print, lambda: None, lambda: STARTED)
    assert list((state / "drill").iterdir()) == []
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "run-important").mkdir(parents=True)
    (state / "drill").rmdir()
    (state / "drill").symlink_to(elsewhere)
    with caplog.at_level("WARNING", logger="backup-agent"):
        Lane(replace(config(), state_dir=str(state)), STARTED, lambda name: True, print, lambda: None, lambda: STARTED)
    assert [record.getMessage() for record in caplog.records] == [
        f"{state}/drill: a symbolic link, not followed: drills keep their scratch directories in a directory of "
        "their own (remove the link)"]
    assert [path.name for path in elsewhere.iterdir()] == ["run-important"]


def _spooled(state_dir: str) -> list:
    import json

    from agent.report.spool import Spool

    spool = Spool(state_dir)
    return [json.loads(spool.read(entry) or b"null") for entry in spool.pending()]


def test_the_daemons_drill_of_a_repository_that_cannot_be_opened_is_a_failed_report(tmp_path):
    from agent.store import Repository

    repository = str(tmp_path / "repo")
    Repository.open(repository, create=True).close()
    with open(tmp_path / "repo" / "config.json", "w") as handle:
        handle.write('{"format": 1, "id": "8a3')  # cut short
    cfg = replace(config(job("api")), repository=repository, state_dir=str(tmp_path / "state"))
    heard = []
    report = run_task(cfg, Task("drill", "api", 0.0), heard.append)
    assert report is not None and heard == [report]
    assert report.trigger == "drill" and report.status == "failed" and report.job == "api"
    assert report.snapshot is None and report.drill_every == 7 * DAY
    [error] = report.errors
    assert error.startswith("the repository cannot be opened: ") and str(tmp_path / "repo" / "config.json") in error
    assert "not valid JSON" in error
    [spooled] = _spooled(cfg.state_dir)  # on its way to the collector, as every report
    assert spooled["id"] == report.id and spooled["errors"] == [error]


def test_a_drill_whose_storage_fails_midway_is_a_failed_report(tmp_path):
    from agent.backend import LocalBackend
    from agent.backend.faulty import Faults, FaultyBackend
    from agent.drill import DrillTarget, drill
    from agent.store import Repository
    from tests.unit.repo_helpers import store_files

    backend = FaultyBackend(LocalBackend(str(tmp_path / "repo")))
    repo = Repository.open(backend, create=True)
    store_files(repo, "api", {"a": b"alpha"})
    backend.faults = Faults(fail_list=True)  # an object store that stops answering listings
    report = drill(repo, DrillTarget("api", "node-1", DAY, DAY, 7 * DAY, "fs"), str(tmp_path / "state"))
    assert report.status == "failed" and report.trigger == "drill" and report.snapshot is None
    assert report.errors == (f"{tmp_path / 'repo'}: listing index failed (injected fault)",)
