"""The one report contract: what the agent makes always passes what the collector checks."""

from __future__ import annotations

import json
import os

from agent.collector.schema import validate
from agent.report import Changes, RunReport, new_run_id, utc_now
from agent.report.schema import MAX_LIST, MAX_TEXT, TRIGGERS, escape, problems
from agent.report.spool import encode


def make(**values: object) -> RunReport:
    base = dict(id=new_run_id(), host="node-1", job="services-api", type="fs", trigger="manual", status="ok",
                changed=True, snapshot="8eae8297", started_at=utc_now(), finished_at=utc_now(), files=3,
                bytes=10, new_bytes=4, every_low=86400.0, every_high=86400.0, seq=7)
    base.update(values)
    return RunReport(**base)  # type: ignore[arg-type]


def wire(report: RunReport) -> dict:
    return json.loads(encode(report))  # exactly the bytes the spool keeps and the sender posts


def test_todays_report_json_is_kept_exactly():
    body = wire(make())
    assert sorted(body) == sorted(["id", "host", "job", "type", "trigger", "status", "changed", "snapshot",
                                   "started_at", "finished_at", "files", "bytes", "new_bytes", "errors",
                                   "warnings", "seq", "every"])
    assert body["every"] == {"low": 86400.0, "high": 86400.0} and body["errors"] == [] and body["warnings"] == []
    report, found = validate(body)
    assert found == [] and report is not None and report.body == body
    assert RunReport.from_json(body) == make(id=body["id"], started_at=body["started_at"],
                                             finished_at=body["finished_at"])


def test_every_trigger_and_the_changes_field_are_accepted():
    for trigger in TRIGGERS:
        assert problems(wire(make(trigger=trigger))) == [], trigger
    assert {"startup", "prune", "drill"} <= set(TRIGGERS)
    changes = Changes(added=2, removed=1, changed=3, paths=tuple(f"webapps/x{i}.jsp" for i in range(30)))
    body = wire(make(trigger="change", changes=changes))
    assert body["changes"]["added"] == 2 and body["changes"]["paths"][:2] == ["webapps/x0.jsp", "webapps/x1.jsp"]
    assert len(body["changes"]["paths"]) == 20 and body["changes"]["paths"][-1] == "… and 11 more"
    assert problems(body) == []
    assert RunReport.from_json(body).changes == Changes(2, 1, 3, tuple(body["changes"]["paths"]))
    body["changes"]["added"] = -1
    assert problems(body) == ['changes: must be {"added": N, "removed": N, "changed": N, "paths": [texts]}']
    body["changes"] = {"added": 1}
    assert problems(body)[0].startswith("changes: must be")


def test_names_that_are_not_utf8_are_escaped_in_every_text_field():
    fifo = os.fsdecode(b"pipe\xff")  # what os.listdir gives for a name that is not UTF-8
    assert escape(fifo) == "pipe\\xff" and escape(escape(fifo)) == "pipe\\xff"
    assert escape("caf\u00e9 \u2603") == "caf\u00e9 \u2603"  # valid text is left alone
    assert escape("a\ud800b") == "a\\ud800b" and escape("nul\x00") == "nul\\x00"
    report = make(status="failed", warnings=(f"{fifo}: FIFO skipped",), errors=(f"cannot read {fifo}\x00",),
                  changes=Changes(1, 0, 0, (fifo,)))
    body = wire(report)
    assert body["warnings"] == ["pipe\\xff: FIFO skipped"] and body["errors"] == ["cannot read pipe\\xff\\x00"]
    assert body["changes"]["paths"] == ["pipe\\xff"]
    assert problems(body) == []


def test_lists_and_texts_are_cut_to_the_contract():
    body = wire(make(status="failed", errors=tuple("e" * (MAX_TEXT + 10) for _ in range(MAX_LIST + 5))))
    assert problems(body) == []
    assert len(body["errors"]) == MAX_LIST and body["errors"][-1] == "… and 6 more"
    assert len(body["errors"][0]) == MAX_TEXT and body["errors"][0].endswith("(shortened)")


def test_problems_are_short_and_name_the_field():
    body = wire(make())
    body.update(status="fine", seq=0, trigger="sometime", every={"low": 5, "high": 1}, files=True)
    del body["job"]
    found = problems(body)
    assert "status: must be one of ok, failed" in found and "seq: must be a positive integer" in found
    assert "job: missing" in found and "files: must be a non-negative integer" in found
    assert any(problem.startswith("trigger: must be one of manual, change") for problem in found)
    assert problems([1]) == ["the body must be a JSON object"]
    body = wire(make())
    body["finished_at"] = "2020-01-01T00:00:00Z"
    assert problems(body) == ["finished_at: before started_at"]
    body = wire(make())
    body["every"] = {"low": 5, "high": 1}
    assert problems(body) == ['every: must be {"low": seconds, "high": seconds} with 0 < low <= high']


def test_a_host_name_the_collector_would_refuse_is_a_configuration_error(tmp_path):
    import pytest

    from agent.config import ConfigError, load_config

    config = tmp_path / "agent.toml"
    config.write_text(f'host = "node 1"\nrepository = "{tmp_path}/repo"\nstate_dir = "{tmp_path}/state"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(str(config))
    assert f"{config}: host: 'node 1' is not a host name the collector accepts" in str(raised.value)
    config.write_text(f'host = "node-1.example"\nrepository = "{tmp_path}/repo"\nstate_dir = "{tmp_path}/state"\n')
    assert problems(wire(make(host=load_config(str(config)).host))) == []


def test_any_report_the_agent_can_make_is_one_the_collector_accepts():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    texts = st.lists(st.text(max_size=5000), max_size=1100)  # any code points: surrogates, NUL, too long
    reports = st.builds(
        make, trigger=st.sampled_from(TRIGGERS), status=st.sampled_from(["ok", "failed"]), errors=texts,
        warnings=texts, files=st.integers(0, 2**63 - 1), bytes=st.integers(0, 2**63 - 1),
        every_low=st.floats(1, 1e12), changed=st.booleans(),
        changes=st.none() | st.builds(Changes, st.integers(0, 10**9), st.integers(0, 10**9),
                                      st.integers(0, 10**9), st.lists(st.text(max_size=300), max_size=50)))

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(report=reports)
    def check(report: RunReport) -> None:
        report = RunReport.from_json({**report.to_json(), "every": {"low": report.every_low,
                                                                    "high": report.every_low * 2}})
        assert problems(wire(report)) == []

    check()
