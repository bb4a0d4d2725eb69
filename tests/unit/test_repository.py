"""The repository over its backends: damaged documents, JOB:latest and a wrong clock, descriptors of
packs another process deleted, writes that fail half way."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone

import pytest

from agent.backend import Handle, Kind, LocalBackend, NotFound
from agent.backend.faulty import Faults, FaultyBackend
from agent.backend.mem import MemBackend
from agent.checker import verify_repository
from agent.config.model import Retention
from agent.pruner import prune_repository
from agent.store import KIND_TREE, DamagedBlobError, LockTimeout, Repository, RepositoryError
from agent.store.index import Index
from agent.store.tree import Entry, write_tree
from tests.unit.repo_helpers import deleted_descriptors, store_files


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_latest_is_not_pinned_by_a_snapshot_from_a_wrong_clock():
    """Issue 15 kind 6: a snapshot made while the clock was far ahead must not stay JOB:latest."""
    repo = Repository.open(MemBackend(), create=True)
    now = time.time()
    older = store_files(repo, "svc", {"a": b"1"}, time=_iso(now - 7200))
    ahead = store_files(repo, "svc", {"a": b"2"}, time="2099-01-01T00:00:00Z")
    assert repo.find_snapshot("svc:latest").id == older.id
    right = store_files(repo, "svc", {"a": b"3"}, time=_iso(now - 60))
    assert repo.find_snapshot("svc:latest").id == right.id
    assert [snap.id for snap in repo.history("svc")] == [ahead.id, older.id, right.id]
    assert repo.snapshots("svc")[-1].id == ahead.id  # the listing itself stays ordered by time
    only = Repository.open(MemBackend(), create=True)
    lone = store_files(only, "db", {"d": b"x"}, time="2099-01-01T00:00:00Z")
    assert only.find_snapshot("db:latest").id == lone.id  # nothing better: still found
    with pytest.raises(RepositoryError, match="no snapshot of job 'nope'"):
        only.find_snapshot("nope:latest")


def test_prefixes_and_missing_snapshots_are_clear_errors():
    repo = Repository.open(MemBackend(), create=True)
    snap = store_files(repo, "svc", {"a": b"1"})
    assert repo.find_snapshot(snap.id[:8]).id == snap.id
    with pytest.raises(RepositoryError, match="no snapshot"):
        repo.find_snapshot("0" * 12 if not snap.id.startswith("0") else "f" * 12)
    with pytest.raises(RepositoryError, match="no snapshot"):
        repo.find_snapshot("")


@pytest.mark.parametrize("content", [b"", b'{"job": "svc", "type"', b"[]", b'{"job": "svc"}', b"\xff\xfe"])
def test_an_unreadable_snapshot_document_is_named_and_the_others_listed(content):
    repo = Repository.open(MemBackend(), create=True)
    good = store_files(repo, "svc", {"a": b"1"})
    repo.backend.save(Handle(Kind.SNAPSHOT, "0d" * 32), [content])
    assert [snap.id for snap in repo.snapshots()] == [good.id]
    [damaged] = repo.damaged_snapshots()
    assert damaged.id == "0d" * 32 and "0d" * 32 in damaged.reason
    assert not repo.has_snapshot("0d" * 32) and repo.has_snapshot(good.id)
    with pytest.raises(RepositoryError, match="damaged"):
        repo.load_snapshot("0d" * 32)
    assert repo.find_snapshot("svc:latest").id == good.id


def test_a_snapshot_document_the_storage_does_not_serve_is_named_and_the_others_stay_usable():
    from agent.store import SnapshotUnreadable

    backend = FaultyBackend(MemBackend())
    repo = Repository.open(backend, create=True)
    good = store_files(repo, "svc", {"a": b"1"})
    lost = store_files(repo, "db", {"d": b"2"}, time="2026-11-28T07:00:00Z")
    backend.faults.fail_load = lost.id  # an HTTP 500 after the client's retries
    readable, [unserved] = repo.all_snapshots()
    assert [snap.id for snap in readable] == [good.id] and [snap.id for snap in repo.snapshots()] == [good.id]
    assert unserved.id == lost.id and unserved.unserved
    assert unserved.reason.startswith(f"snapshot {lost.id} cannot be read: ") and "not served" in unserved.reason
    assert repo.find_snapshot("svc:latest").id == good.id
    assert repo.histories(None) == ({"svc": [good]}, [unserved])
    with pytest.raises(SnapshotUnreadable, match="cannot be read") as raised:
        repo.load_snapshot(lost.id)
    assert raised.value.unserved
    damaged = store_files(repo, "svc", {"b": b"3"})
    repo.backend.remove(Handle(Kind.SNAPSHOT, damaged.id))
    repo.backend.save(Handle(Kind.SNAPSHOT, damaged.id), [b'{"job": "svc", "ti'])
    assert {(doc.id, doc.unserved) for doc in repo.damaged_snapshots()} == {(lost.id, True), (damaged.id, False)}
    backend.faults.fail_load = ""  # served again: nothing was lost
    assert [snap.id for snap in repo.snapshots()] == [good.id, lost.id]


@pytest.mark.parametrize("content", [b"", b"garbage", b"[]", b'{"format": 1}',
                                     b'{"format": 1, "id": "x", "chunker": 3}'])
def test_a_garbage_config_names_the_file(tmp_path, content):
    Repository.open(str(tmp_path / "r"), create=True)
    (tmp_path / "r" / "config.json").write_bytes(content)
    with pytest.raises(RepositoryError) as raised:
        Repository.open(str(tmp_path / "r"))
    assert str(tmp_path / "r" / "config.json") in str(raised.value)


def _elsewhere(path: str, action):
    """Run `action` on a repository object of its own, closed afterwards (another process, in effect)."""
    other = Repository.open(path)
    try:
        return action(other)
    finally:
        other.close()


def test_packs_pruned_by_another_process_are_let_go_by_a_busy_reader(tmp_path):
    """Issue 15 kind 12: a daemon's repository read packs (descriptors cached); a prune elsewhere
    deletes them; its next run lets them go (on taking the lock, or a writer's first look at the
    index), so their space is freed at once rather than after the idle time."""
    path = str(tmp_path / "r")
    before = deleted_descriptors()
    daemon = Repository.open(path, create=True)
    old = [store_files(daemon, "svc", {f"f{n}": os.urandom(5000)}, time=f"2026-11-{n + 1:02d}T07:00:00Z")
           for n in range(4)]
    for snap in old:
        daemon.read_blob(bytes.fromhex(snap.tree[0]))
    pruned = _elsewhere(path, lambda repo: prune_repository(repo, {"svc": Retention(1, 0, 0, 0)}))
    assert pruned.packs_deleted >= 6
    assert deleted_descriptors() > before  # held open: their space is not freed yet
    with daemon.lock(exclusive=False, purpose="backup"):  # the next run, whether it writes or not
        assert deleted_descriptors() == before
    assert daemon.read_blob(bytes.fromhex(old[-1].tree[0]))
    _elsewhere(path, lambda repo: store_files(repo, "svc", {"new": b"n" * 5000}, time="2026-11-29T07:00:00Z"))
    pruned = _elsewhere(path, lambda repo: prune_repository(repo, {"svc": Retention(1, 0, 0, 0)}))
    assert pruned.packs_deleted >= 2 and deleted_descriptors() > before
    daemon.writer()  # a backup's writer looks at the index first
    assert deleted_descriptors() == before
    daemon.close()


def test_release_lets_go_of_the_index_and_the_packs(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    snap = store_files(repo, "svc", {"a": b"1" * 100})
    repo.read_blob(bytes.fromhex(snap.tree[0]))
    assert repo.holds_index and repo.backend.cached_descriptors() == 1
    repo.release()
    assert not repo.holds_index and repo.backend.cached_descriptors() == 0
    assert repo.read_blob(bytes.fromhex(snap.tree[0]))


@pytest.mark.parametrize("fault", [Faults(fail_save=2), Faults(truncate_save=1, kinds=frozenset({Kind.INDEX}))],
                         ids=["disk-full-on-the-tree-pack", "torn-index-write"])
def test_a_backup_whose_writes_fail_leaves_no_snapshot_and_a_verifiable_repository(tmp_path, fault):
    inner = LocalBackend(str(tmp_path / "r"))
    Repository.open(inner, create=True)
    store_files(Repository.open(inner), "svc", {"a": b"kept" * 100})
    broken = Repository.open(FaultyBackend(inner, fault))
    if fault.fail_save:
        with pytest.raises(OSError):
            store_files(broken, "svc", {"b": os.urandom(10000)})
        after = Repository.open(inner)
        assert len(after.snapshots()) == 1 and verify_repository(after).ok
        return
    # a torn write the storage did not report: the snapshot exists, its index file is torn; its packs are
    # indexed from their own blob lists, verify names the index file, and prune writes a whole index
    store_files(broken, "svc", {"b": b"torn" * 3000})
    after = Repository.open(inner)
    result = verify_repository(after)
    assert [problem for problem in result.problems if problem.startswith("index: ")] == result.problems
    assert len(result.problems) == 1 and "truncated" in result.problems[0] and "prune" in result.problems[0]
    assert not result.damaged and not result.affected
    prune_repository(after, {"svc": Retention(5, 0, 0, 0)})
    assert verify_repository(Repository.open(inner), read_data=True).ok


def test_the_repository_lock_passes_on_what_it_is_given(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    waits = []
    with repo.lock(exclusive=True, purpose="prune"):
        assert json.loads((tmp_path / "r" / "lock.holder").read_text())["purpose"] == "prune"
        shared = repo.lock(exclusive=False, purpose="backup")
        with pytest.raises(LockTimeout, match="prune"):
            shared.acquire(0.2, on_wait=waits.append)  # a positional timeout reaches the backend's lock
    assert waits and "repository lock" in waits[0]
    with repo.lock(exclusive=False, purpose="backup"), repo.lock(exclusive=False, purpose="verify"):
        pass  # shared: both at once


def test_an_empty_damage_listing_is_believed_for_a_while_and_not_after(monkeypatch):
    import agent.store.repository as repository

    listed = []

    class Counting(MemBackend):
        def list(self, kind):
            listed.append(kind)
            return super().list(kind)

    backend = Counting()
    repo = Repository.open(backend, create=True)
    snap = store_files(repo, "svc", {"a": b"a" * 100})
    daemon = Repository.open(backend)  # a long-lived repository, as the daemon holds one
    now = [1000.0]
    monkeypatch.setattr(repository.time, "monotonic", lambda: now[0])
    listed.clear()
    assert daemon.unhealed() == frozenset() and daemon.unhealed() == frozenset()
    assert listed == [Kind.DAMAGE]  # the jobs of one run share one listing
    blob = bytes.fromhex(snap.tree[0])
    repo.record_damage([(blob, repo.index.get(blob).pack)])  # verify, in another process
    assert daemon.unhealed() == frozenset()  # not seen yet
    now[0] += repository.UNDAMAGED_S + 1
    assert daemon.unhealed() == {blob}  # seen at the next listing: the next run heals it


def test_unhealed_damage_costs_no_index_load_until_some_is_recorded():
    backend = MemBackend()
    repo = Repository.open(backend, create=True)
    snap = store_files(repo, "svc", {"a": b"a" * 100})
    fresh = Repository.open(backend)
    assert fresh.unhealed() == frozenset() and not fresh.holds_index
    blob = bytes.fromhex(snap.tree[0])
    repo.record_damage([(blob, repo.index.get(blob).pack)])
    assert Repository.open(backend).unhealed() == {blob}
    assert repo.record_damage([]) is None
    with pytest.raises(DamagedBlobError, match=f"blob {blob.hex()}: content in pack .* does not match"):
        Repository.open(backend).read_blob(blob)


def test_history_and_pack_lists_are_per_job_and_per_pack():
    repo = Repository.open(MemBackend(), create=True)
    mine = store_files(repo, "svc", {"a": b"1"})
    store_files(repo, "db", {"d": b"2"})
    assert [snap.id for snap in repo.history("svc")] == [mine.id]
    with pytest.raises(NotFound):
        repo.pack_blobs(b"\x00" * 32, 100)
    blob = bytes.fromhex(mine.tree[0])
    loc = repo.index.get(blob)
    assert (blob, loc) in repo.pack_blobs(loc.pack, repo.packs()[loc.pack])
    with pytest.raises(ValueError, match="malformed"):
        repo.pack_blobs(loc.pack, repo.packs()[loc.pack] - 1)


def test_prepared_blobs_are_stored_once_and_read_back(tmp_path):
    """The dump path: blobs hashed and compressed off the writer's thread, then added in order."""
    repo = Repository.open(str(tmp_path / "r"), create=True)
    writer = repo.writer()
    text, noise = b"INSERT INTO t VALUES (1);\n" * 5000, os.urandom(200_000)
    first = writer.prepare(text, probe=False)
    assert first.stored is not None and len(first.stored) < len(text) / 10 and first.length == len(text)
    assert writer.save_prepared(first) is True
    assert writer.save_prepared(writer.prepare(text)) is False  # added since it was prepared
    raw = writer.prepare(noise)
    assert raw.stored == noise and writer.save_prepared(raw, kind=KIND_TREE) is True
    assert writer.new_blobs == 2 and writer.new_bytes == len(text)  # tree blobs are not new data
    assert writer.stored_bytes == len(first.stored) + len(noise)
    writer.flush()
    again = Repository.open(repo.location).writer()
    known = again.prepare(text)
    assert known.stored is None and known.blob_id == first.blob_id and again.save_prepared(known) is False
    assert repo.read_blob(first.blob_id) == text and repo.read_blob(raw.blob_id) == noise
    pack = repo.index.get(first.blob_id).pack.hex()
    assert repo.describe_pack(bytes.fromhex(pack)) == str(tmp_path / "r" / "data" / pack[:2] / pack)


def test_a_damaged_file_list_marks_its_snapshot_for_healing():
    repo = Repository.open(MemBackend(), create=True)
    snap = store_files(repo, "svc", {"a": b"a" * 100})
    tree_blob = bytes.fromhex(snap.tree[0])
    assert not repo.tree_unhealed(snap.id, frozenset({os.urandom(32)}))
    assert repo.tree_unhealed(snap.id, frozenset({tree_blob}))
    assert repo.tree_unhealed("0" * 64, frozenset({tree_blob}))  # a snapshot that cannot be read


def test_listing_names_each_damaged_document_and_filters_by_job(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    mine = [store_files(repo, "svc", {"a": bytes([n])}, time=f"2026-11-{n + 1:02d}T07:00:00Z") for n in range(12)]
    store_files(repo, "db", {"d": b"2"})
    snapshots = tmp_path / "r" / "snapshots"
    (snapshots / ".half-written.json").write_text("{")
    (snapshots / "README").write_text("not a snapshot")
    (snapshots / ("ab" * 32 + ".json")).write_text('{"job": "svc", "ti')
    assert [snap.id for snap in repo.snapshots("svc")] == [snap.id for snap in mine]
    [damaged] = repo.damaged_snapshots()
    assert damaged.id == "ab" * 32 and damaged.name == str(snapshots / ("ab" * 32 + ".json"))
    assert "unreadable" in damaged.reason and damaged.name in damaged.reason
    with pytest.raises(RepositoryError, match="^no snapshot 'cd"):
        repo.load_snapshot("cd" * 32)


def test_file_lists_are_not_counted_as_new_data(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    writer = repo.writer()
    data = os.urandom(1000)
    writer.save(data)
    write_tree(writer, [Entry(".", "dir", 0o755, 0, 0, 0), Entry("a", "file", 0o644, 0, 0, 0, 1000,
                                                                  (hashlib.sha256(data).digest(),))])
    writer.flush()
    assert writer.new_bytes == 1000 and writer.new_blobs == 2
    assert Index(repo.backend).damaged() == {}
