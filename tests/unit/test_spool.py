"""The report spool on real files: sequence numbers, delivery order, dead letters and bounds."""

from __future__ import annotations

import json
import os

from agent.report.spool import Spool, encode
from tests.unit.test_report_schema import make


def test_reports_get_increasing_numbers_and_are_kept_as_posted(tmp_path):
    spool = Spool(str(tmp_path))
    first = spool.add(make(job="a"))
    second = spool.add(make(job="b", status="failed", errors=("boom",)))
    assert (first.seq, second.seq) == (1, 2)
    entries = spool.pending()
    assert [(entry.seq, entry.status) for entry in entries] == [(1, "ok"), (2, "failed")]
    assert spool.read(entries[1]) == encode(second)
    assert json.loads(spool.read(entries[1]))["seq"] == 2
    assert os.stat(os.path.join(spool.pending_dir, entries[0].name)).st_mode & 0o077 == 0


def test_numbers_continue_after_the_seq_file_is_lost(tmp_path):
    spool = Spool(str(tmp_path))
    for _ in range(3):
        spool.add(make())
    os.unlink(os.path.join(spool.path, "seq"))
    assert Spool(str(tmp_path)).add(make()).seq == 4


def test_the_newest_report_of_each_job_goes_first_then_the_backlog_oldest_first(tmp_path):
    spool = Spool(str(tmp_path))
    for job in ("a", "b", "a", "c", "b", "a"):
        spool.add(make(job=job))
    assert [entry.seq for entry in spool.delivery_order()] == [6, 5, 4, 1, 2, 3]


def test_a_rejected_report_moves_to_the_dead_letters_with_its_reason(tmp_path):
    spool = Spool(str(tmp_path))
    spool.add(make())
    entry = spool.pending()[0]
    spool.dead_letter(entry, "HTTP 422: status: must be one of ok, failed")
    assert spool.pending() == []
    [(dead, reason)] = spool.dead()
    assert dead.seq == 1 and reason == "HTTP 422: status: must be one of ok, failed"
    assert spool.read(dead, dead=True) is not None and spool.read(entry) is None  # gone from pending
    spool.remove(entry)  # removing what another process already removed is fine


def test_bounds_drop_the_oldest_successes_but_never_failures_nor_a_jobs_newest(tmp_path):
    spool = Spool(str(tmp_path), max_reports=3)
    spool.add(make(job="a", status="failed", errors=("x",)))  # 1: failed, kept
    spool.add(make(job="a"))  # 2: dropped
    spool.add(make(job="b"))  # 3: dropped
    spool.add(make(job="b"))  # 4: b's newest
    spool.add(make(job="a"))  # 5: a's newest
    assert [entry.seq for entry in spool.pending()] == [1, 4, 5]
    assert spool.dropped() == 2


def test_a_report_with_a_name_that_is_not_utf8_is_spooled_as_valid_json(tmp_path):
    spool = Spool(str(tmp_path))
    spool.add(make(warnings=(os.fsdecode(b"pipe\xff") + ": FIFO skipped",)))
    raw = spool.read(spool.pending()[0])
    assert raw is not None
    assert json.loads(raw.decode("utf-8"))["warnings"] == ["pipe\\xff: FIFO skipped"]
