"""prune (agent.pruner): retention, what is deleted, what is rewritten, and what a failure leaves."""

from __future__ import annotations

import os

import pytest

from agent.backend import Handle, Kind, LocalBackend
from agent.backend.faulty import Faults, FaultyBackend
from agent.checker import verify_repository
from agent.cleanup import collect_garbage
from agent.config.model import Retention
from agent.pruner import prune_repository, select_kept
from agent.store import Repository, RepositoryError, Snapshot
from agent.store.tree import read_tree
from tests.unit.repo_helpers import store_files

KEEP_ONE = Retention(keep_last=1, keep_daily=0, keep_weekly=0, keep_monthly=0)


def _snap(time: str, ident: str) -> Snapshot:
    return Snapshot(job="j", type="fs", host="h", time=time, trigger="manual", tree=(), files=0, bytes=0,
                    fingerprint="", id=ident)


def test_retention_keeps_the_newest_and_one_per_bucket(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    snaps = [_snap(f"2026-11-{day:02d}T{hour:02d}:00:00Z", f"{day}-{hour}") for day in (1, 2, 3) for hour in (6, 18)]
    assert select_kept(snaps, Retention(2, 0, 0, 0)) == {"3-18", "3-6"}
    assert select_kept(snaps, Retention(0, 2, 0, 0)) == {"3-18", "2-18"}
    assert select_kept(snaps, Retention(1, 0, 0, 1)) == {"3-18"}
    assert select_kept(snaps, Retention(0, 0, 0, 0)) == set()


def test_weekly_and_monthly_buckets_are_iso_weeks_and_calendar_months(monkeypatch):
    """2026-11-01 is a Sunday: ISO week 44 with 2026-10-31; 2026-11-02 starts week 45."""
    monkeypatch.setenv("TZ", "UTC")
    days = ["2026-09-30", "2026-10-15", "2026-10-31", "2026-11-01", "2026-11-02", "2026-11-08", "2026-11-09",
            "2026-11-20"]
    snaps = [_snap(f"{day}T07:00:00Z", day) for day in days]
    assert select_kept(snaps, Retention(0, 0, 4, 0)) == {"2026-11-20", "2026-11-09", "2026-11-08", "2026-11-01"}
    assert select_kept(snaps, Retention(0, 0, 0, 3)) == {"2026-11-20", "2026-10-31", "2026-09-30"}
    assert select_kept(snaps, Retention(0, 3, 0, 0)) == {"2026-11-20", "2026-11-09", "2026-11-08"}
    later_same_day = _snap("2026-11-20T08:00:00Z", "later")
    assert select_kept([*snaps, later_same_day], Retention(0, 1, 0, 0)) == {"later"}


def test_prune_forgets_beyond_retention_and_deletes_unreferenced_packs(repo):
    old = store_files(repo, "svc", {"a": os.urandom(40000)}, time="2026-11-27T07:00:00Z")
    new = store_files(repo, "svc", {"b": os.urandom(40000)}, time="2026-11-28T07:00:00Z")
    other = store_files(repo, "gone", {"c": b"c" * 100})
    before = repo.packs()
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert [snap.id for snap in result.removed] == [old.id]
    assert {snap.id for snap in result.kept} == {new.id, other.id}
    assert result.unknown_jobs == ["gone"]
    assert result.packs_deleted == 2 and result.bytes_freed > 40000  # old's data pack and tree pack
    assert len(repo.packs()) == len(before) - 2
    assert verify_repository(repo, read_data=True).ok


def test_dry_run_changes_nothing(repo):
    store_files(repo, "svc", {"a": b"a" * 1000}, time="2026-11-27T07:00:00Z")
    store_files(repo, "svc", {"b": b"b" * 1000}, time="2026-11-28T07:00:00Z")
    packs = repo.packs()
    result = prune_repository(repo, {"svc": KEEP_ONE}, dry_run=True)
    assert len(result.removed) == 1 and len(repo.snapshots()) == 2 and repo.packs() == packs


def test_a_mostly_garbage_pack_is_rewritten_with_only_its_live_blobs(repo):
    """Issue 11, breakage (a): a prune that never rewrites such packs keeps the garbage forever."""
    live = os.urandom(10000)
    store_files(repo, "svc", {"live": live, "dead1": os.urandom(50000), "dead2": os.urandom(50000)},
                time="2026-11-27T07:00:00Z")
    kept = store_files(repo, "svc", {"live": live}, time="2026-11-28T07:00:00Z")
    [mixed] = [pack for pack, size in repo.packs().items() if size > 100000]
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert result.packs_rewritten == 1
    assert mixed not in repo.packs()
    assert sum(repo.packs().values()) < 20000
    assert verify_repository(repo, read_data=True).ok
    [entry] = [e for e in read_tree(repo, kept.tree) if e.path == "live"]
    assert repo.read_blob(entry.chunks[0]) == live


def test_a_pack_with_little_garbage_is_kept_as_it_is(repo):
    live = os.urandom(90000)
    store_files(repo, "svc", {"live": live, "dead": os.urandom(5000)}, time="2026-11-27T07:00:00Z")
    store_files(repo, "svc", {"live": live}, time="2026-11-28T07:00:00Z")
    [mixed] = [pack for pack, size in repo.packs().items() if size > 90000]
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert result.packs_rewritten == 0 and mixed in repo.packs()


def test_orphaned_packs_and_leftovers_are_removed(tmp_path):
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    store_files(repo, "svc", {"a": b"a" * 100})
    repo.backend.save(Handle(Kind.DATA, "ab" * 32), [b"a pack no index names (a crash before its index)"])
    (tmp_path / "repo" / "tmp" / "data-crashed").write_bytes(b"half")
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert result.packs_deleted == 1 and bytes.fromhex("ab" * 32) not in repo.packs()
    assert os.listdir(tmp_path / "repo" / "tmp") == []


def test_a_damaged_snapshot_document_is_kept_named_and_the_rest_pruned(repo):
    store_files(repo, "svc", {"a": b"a" * 100}, time="2026-11-26T07:00:00Z")
    bad = store_files(repo, "svc", {"b": b"b" * 100}, time="2026-11-27T07:00:00Z")
    newest = store_files(repo, "svc", {"c": b"c" * 100}, time="2026-11-28T07:00:00Z")
    repo.backend.remove(Handle(Kind.SNAPSHOT, bad.id))
    repo.backend.save(Handle(Kind.SNAPSHOT, bad.id), [b'{"job": "svc", "ti'])
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert len(result.damaged) == 1 and bad.id in result.damaged[0]
    assert [snap.id for snap in result.kept] == [newest.id] and len(result.removed) == 1
    assert [d.id for d in repo.damaged_snapshots()] == [bad.id]


def test_a_snapshot_document_the_storage_does_not_serve_stops_prune_before_anything_is_deleted(tmp_path):
    backend = FaultyBackend(LocalBackend(str(tmp_path / "repo")))
    repo = Repository.open(backend, create=True)
    store_files(repo, "svc", {"a": b"a" * 100}, time="2026-11-26T07:00:00Z")
    store_files(repo, "svc", {"b": b"b" * 100}, time="2026-11-27T07:00:00Z")
    lost = store_files(repo, "db", {"c": os.urandom(1000)})  # only it needs its data
    backend.faults.fail_load = lost.id
    packs, listed = repo.packs(), [info.name for info in backend.list(Kind.SNAPSHOT)]
    with pytest.raises(RepositoryError, match=f"snapshot {lost.id} cannot be read: .*nothing was pruned"):
        prune_repository(repo, {"svc": KEEP_ONE, "db": KEEP_ONE})
    assert collect_garbage(repo) is None  # the clean-up after a failed backup: the same refusal
    assert repo.packs() == packs and [info.name for info in backend.list(Kind.SNAPSHOT)] == listed
    backend.faults.fail_load = ""
    result = prune_repository(repo, {"svc": KEEP_ONE, "db": KEEP_ONE})
    assert len(result.removed) == 1 and lost.id in {snap.id for snap in result.kept}
    assert verify_repository(repo).ok


def test_an_unreadable_file_list_stops_prune_before_anything_is_deleted(repo):
    snap = store_files(repo, "svc", {"a": b"a" * 100})
    repo.remove_pack(repo.index.get(bytes.fromhex(snap.tree[0])).pack)
    packs = repo.packs()
    with pytest.raises(RepositoryError, match="no data was deleted"):
        prune_repository(Repository.open(repo.backend), {"svc": KEEP_ONE})
    assert repo.packs() == packs


@pytest.mark.parametrize("failing", [1, 2])
def test_a_prune_failing_to_save_leaves_a_verifiable_repository(tmp_path, failing):
    """The rewritten pack (save 1) or the new index (save 2) cannot be written: disk full."""
    inner = LocalBackend(str(tmp_path / "repo"))
    repo = Repository.open(inner, create=True)
    live = os.urandom(10000)
    store_files(repo, "svc", {"live": live, "dead": os.urandom(90000)}, time="2026-11-27T07:00:00Z")
    store_files(repo, "svc", {"live": live}, time="2026-11-28T07:00:00Z")
    faulty = Repository.open(FaultyBackend(inner, Faults(fail_save=failing, kinds=frozenset({Kind.DATA, Kind.INDEX}))))
    with pytest.raises(OSError):
        prune_repository(faulty, {"svc": KEEP_ONE})
    after = Repository.open(inner)
    assert verify_repository(after, read_data=True).ok
    assert len(after.snapshots()) == 1
    assert prune_repository(after, {"svc": KEEP_ONE}).packs_rewritten == 1
    assert verify_repository(Repository.open(inner), read_data=True).ok


def test_a_damaged_copy_is_dropped_by_prune_with_its_record(repo):
    content = os.urandom(20000)
    store_files(repo, "svc", {"a": content, "b": os.urandom(20000)})
    [(blob_id, loc)] = [(b, loc) for b, loc in repo.index.items() if loc.raw_length == 20000 and
                        repo.read_blob(b) == content]
    repo.record_damage([(blob_id, loc.pack)])
    writer = Repository.open(repo.backend).writer()
    assert writer.save(content)[1]  # stored again
    writer.flush()
    fresh = Repository.open(repo.backend)
    result = prune_repository(fresh, {"svc": KEEP_ONE})
    assert result.packs_rewritten == 1 and loc.pack not in fresh.packs()
    assert fresh.backend.list(Kind.DAMAGE) == [] and fresh.unhealed() == frozenset()
    assert fresh.read_blob(blob_id) == content


def test_a_missing_pack_does_not_stop_the_others_being_kept(repo):
    live, other = os.urandom(10000), os.urandom(10000)
    store_files(repo, "svc", {"live": live, "dead": os.urandom(90000)}, time="2026-11-27T07:00:00Z")
    kept = store_files(repo, "svc", {"live": live, "other": other}, time="2026-11-28T07:00:00Z")
    [mixed] = [pack for pack, size in repo.packs().items() if size > 90000]
    repo.remove_pack(mixed)  # lost before prune: the blobs it held are gone whatever prune does
    prune_repository(Repository.open(repo.backend), {"svc": KEEP_ONE})
    after = Repository.open(repo.backend)
    [entry] = [e for e in read_tree(after, kept.tree) if e.path == "other"]
    assert after.read_blob(entry.chunks[0]) == other


def test_rewritten_blobs_fill_new_packs_of_the_target_size(repo, monkeypatch):
    monkeypatch.setattr("agent.pruner.prune.TARGET_SIZE", 25000)
    lives = {f"live{n}": os.urandom(10000) for n in range(6)}
    first = store_files(repo, "svc", {**dict(list(lives.items())[:3]), "dead1": os.urandom(60000)},
                        time="2026-11-26T07:00:00Z")
    second = store_files(repo, "svc", {**dict(list(lives.items())[3:]), "dead2": os.urandom(60000)},
                         time="2026-11-27T07:00:00Z")
    kept = store_files(repo, "svc", lives, time="2026-11-28T07:00:00Z")
    before = set(repo.packs())
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert result.packs_rewritten == 2
    new_packs = set(repo.packs()) - before
    # 60 kB of live blobs: two packs cut at the target size while filling, none left to finish at the end
    assert len(new_packs) == 2 and all(size < 40000 for pack, size in repo.packs().items() if pack in new_packs)
    fresh = Repository.open(repo.backend)
    for entry in read_tree(fresh, kept.tree):
        if entry.type == "file":
            assert fresh.read_blob(entry.chunks[0]) == lives[entry.path]
    assert {snap.id for snap in fresh.snapshots()} == {kept.id}
    assert {snap.id for snap in result.removed} == {first.id, second.id}


def test_an_unindexed_pack_a_snapshot_needs_is_indexed_again_and_its_garbage_dropped(tmp_path):
    """An index file lost its content (a torn write): prune finds the needed blob through the pack's
    own blob list, and rewrites that pack without the blobs nothing needs."""
    repo = Repository.open(str(tmp_path / "r"), create=True)
    live = os.urandom(10000)
    store_files(repo, "svc", {"live": live, "dead": os.urandom(90000)}, time="2026-11-27T07:00:00Z")
    kept = store_files(repo, "svc", {"live": live}, time="2026-11-28T07:00:00Z")
    [entry] = [e for e in read_tree(repo, kept.tree) if e.path == "live"]
    pack = repo.index.get(entry.chunks[0]).pack
    for name in repo.index.files:
        data = repo.backend.load(Handle(Kind.INDEX, name))
        if pack in data:
            (tmp_path / "r" / "index" / name).write_bytes(data[:-7])
    result = prune_repository(Repository.open(repo.location), {"svc": KEEP_ONE})
    assert result.packs_rewritten == 1 and pack not in repo.packs()
    after = Repository.open(repo.location)
    assert after.read_blob(entry.chunks[0]) == live
    assert verify_repository(after, read_data=True).ok


def test_retention_counts_each_hosts_snapshots_of_a_job_apart(repo):
    """A repository shared by a fleet: node-2's newer snapshots never push node-1's last one out."""
    one = store_files(repo, "svc", {"a": os.urandom(40000)}, time="2026-11-27T07:00:00Z", host="node-1")
    two_old = store_files(repo, "svc", {"b": os.urandom(40000)}, time="2026-11-28T07:00:00Z", host="node-2")
    two_new = store_files(repo, "svc", {"c": os.urandom(40000)}, time="2026-11-29T07:00:00Z", host="node-2")
    result = prune_repository(repo, {"svc": KEEP_ONE})
    assert [snap.id for snap in result.removed] == [two_old.id]
    assert {snap.id for snap in result.kept} == {one.id, two_new.id}
    assert verify_repository(repo, read_data=True).ok


def test_a_prune_for_some_hosts_applies_retention_to_their_snapshots_only(repo):
    """A node's daemon prunes a shared repository with its own retention: another host keeps more."""
    mine = [store_files(repo, "svc", {"a": os.urandom(40000)}, time=f"2026-11-2{day}T07:00:00Z", host="node-1")
            for day in (7, 8)]
    theirs = [store_files(repo, "svc", {"b": os.urandom(40000)}, time=f"2026-11-2{day}T07:00:00Z", host="node-2")
              for day in (7, 8)]
    result = prune_repository(repo, {"svc": KEEP_ONE}, hosts={"node-1"})
    assert [snap.id for snap in result.removed] == [mine[0].id]
    assert {snap.id for snap in result.kept} == {mine[1].id, theirs[0].id, theirs[1].id}
    assert {snap.id for snap in repo.snapshots()} == {mine[1].id, theirs[0].id, theirs[1].id}
    assert verify_repository(repo, read_data=True).ok


# --- encrypted repositories: the data key objects (agent.crypt.seal) ---------------------------------


def _encrypted(tmp_path):
    """A new encrypted repository on a local directory, opened as a node holding the identity too."""
    import pyrage

    from agent.crypt.settings import EncryptionSettings

    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "identity").write_text(f"{identity}\n")
    settings = EncryptionSettings(recipients=(str(identity.to_public()),), identity_file=str(tmp_path / "identity"),
                                  node_key_file=str(tmp_path / "node.key"))
    return Repository.open(str(tmp_path / "r"), create=True, encryption=settings), identity


def _keys(repo: Repository):
    """(the data key objects stored, the data keys the indexed blobs name)."""
    from agent.store.pack import data_key_names

    repo.index.reload()
    return ({info.name for info in repo.backend.list(Kind.PACK_KEYS)},
            data_key_names(repo.backend, list(repo.index.items())))


def test_prune_removes_the_data_keys_no_remaining_blob_names_and_keeps_those_copied_blobs_name(tmp_path):
    import hashlib

    import pyrage

    repo, identity = _encrypted(tmp_path)
    kept_content = os.urandom(60_000)
    store_files(repo, "j", {"gone": os.urandom(60_000)}, time="2026-11-25T07:00:00Z")  # a pack prune deletes
    store_files(repo, "j", {"old": os.urandom(60_000), "kept": kept_content}, time="2026-11-26T07:00:00Z")
    latest = store_files(repo, "j", {"kept": kept_content, "new": os.urandom(60_000)}, time="2026-11-27T07:00:00Z")
    # what a backup killed before its pack was saved (or a prune killed before removing keys) leaves
    orphan = pyrage.encrypt(os.urandom(32), [identity.to_public()])
    repo.backend.save(Handle(Kind.PACK_KEYS, hashlib.sha256(orphan).hexdigest()), [orphan])
    stored, named = _keys(repo)
    assert len(named) == 3 and stored == named | {hashlib.sha256(orphan).hexdigest()}
    result = prune_repository(repo, {"j": KEEP_ONE})
    assert result.packs_deleted >= 2 and result.packs_rewritten == 1  # `kept` copied out of a half-dead pack
    stored, named = _keys(repo)
    assert stored == named and len(stored) == 2 and result.keys_deleted == 2
    assert verify_repository(repo, read_data=True).ok
    entries = {entry.path: entry for entry in read_tree(repo, latest.tree)}
    assert b"".join(repo.read_blob(chunk) for chunk in entries["kept"].chunks) == kept_content



def test_a_data_key_object_missing_for_a_while_is_named_and_never_taken_for_damaged_blobs(tmp_path):
    """A missing packkeys/ object makes verify fail naming it, but records no damage: put back, nothing was
    lost, and a prune in between keeps the pack (it must never delete blobs whose key merely went away)."""
    repo, _ = _encrypted(tmp_path)
    content = os.urandom(300_000)
    snap = store_files(repo, "svc", {"big": content})
    [key] = _keys(repo)[0]
    stored = tmp_path / "r" / "packkeys" / key
    away = tmp_path / "key.saved"
    os.rename(stored, away)
    result = verify_repository(repo, read_data=True)
    assert not result.ok and not result.damaged
    assert any(f"packkeys/{key}" in problem and "missing" in problem for problem in result.problems), result.problems
    assert repo.backend.list(Kind.DAMAGE) == [] and result.damage_record is None
    os.rename(away, stored)
    prune_repository(repo, {"svc": KEEP_ONE})
    assert verify_repository(repo, read_data=True).ok
    [entry] = [e for e in read_tree(repo, repo.load_snapshot(snap.id).tree) if e.path == "big"]
    assert b"".join(repo.read_blob(chunk) for chunk in entry.chunks) == content


def test_verify_without_an_identity_names_a_missing_data_key_object(tmp_path):
    from agent.crypt.settings import EncryptionSettings

    repo, _ = _encrypted(tmp_path)
    store_files(repo, "svc", {"big": os.urandom(300_000)})
    [key] = _keys(repo)[0]
    node = Repository.open(str(tmp_path / "r"),  # what a node holds: its node key, no identity
                           encryption=EncryptionSettings(recipients=(), node_key_file=str(tmp_path / "node.key")))
    assert node.cipher is not None and node.cipher.identity_file is None
    assert verify_repository(node, read_data=True).ok
    os.unlink(tmp_path / "r" / "packkeys" / key)
    result = verify_repository(node, read_data=True)
    assert not result.ok and not result.damaged
    assert any(f"packkeys/{key}" in problem and "missing" in problem for problem in result.problems), result.problems


@pytest.mark.parametrize("format_field", ['"format": 1', '"formax": 2'])
def test_an_encrypted_config_whose_format_was_changed_is_an_authentication_error(tmp_path, format_field):
    _encrypted(tmp_path)
    config = tmp_path / "r" / "config.json"
    text = config.read_text()
    assert '"format": 2' in text
    config.write_text(text.replace('"format": 2', format_field))
    with pytest.raises(RepositoryError, match=r"config\.json: authentication failed"):
        Repository.open(str(tmp_path / "r"))


def test_a_failed_runs_packs_still_being_written_land_before_its_clean_up(tmp_path, monkeypatch):
    """A run that fails leaves its writer with packs still being written on their threads; the clean-up
    after it waits for them (Repository.settle), else it misses them and they stay until the next prune."""
    import time

    from agent.backend.base import Wrapper

    class SlowPackSaves(Wrapper):  # an upload or an fsync that takes its time
        def save(self, handle: Handle, pieces) -> None:
            if handle.kind is Kind.DATA:
                time.sleep(0.3)
            self.inner.save(handle, pieces)

    monkeypatch.setattr("agent.store.writer.TARGET_SIZE", 50_000)
    inner = LocalBackend(str(tmp_path / "repo"))
    Repository.open(inner, create=True)
    repo = Repository.open(SlowPackSaves(inner))
    kept = store_files(repo, "svc", {"a": b"kept" * 1000})
    clean = repo.packs()

    def failed_run() -> None:  # its writer is dropped with its packs still being sealed
        writer = repo.writer()
        for _ in range(3):  # each blob fills a pack, sealed on a thread of its own
            writer.save(os.urandom(60_000))

    failed_run()
    repo.settle()
    prune_repository(repo, {})
    repo.settle()  # what lands after the clean-up would stay
    assert repo.packs() == clean
    assert [snap.id for snap in repo.snapshots()] == [kept.id] and verify_repository(repo, read_data=True).ok
