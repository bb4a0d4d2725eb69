"""verify (agent.checker): what it finds without reading data, with --read-data, and what it records."""

from __future__ import annotations

import os

from agent.backend import Handle, Kind
from agent.backend.local import LocalBackend
from agent.checker import verify_repository
from agent.store import KIND_TREE, Repository, Snapshot
from agent.store.tree import read_tree
from tests.unit.repo_helpers import store_files


def _pack_of(repo: Repository, blob_id: bytes) -> bytes:
    return repo.index.get(blob_id).pack


def _rewrite_pack(repo: Repository, pack: bytes, data: bytes) -> None:
    """Damage a pack in place, as the disk would (bypassing write-once)."""
    repo.backend.remove(Handle(Kind.DATA, pack.hex()))
    repo.backend.save(Handle(Kind.DATA, pack.hex()), [data])


def test_a_sound_repository_verifies_with_and_without_reading(repo):
    store_files(repo, "svc", {"a": b"alpha" * 1000, "b": b"beta" * 1000})
    store_files(repo, "svc", {"a": b"alpha" * 1000, "c": os.urandom(5000)}, time="2026-11-28T07:00:00Z")
    for read_data in (False, True):
        result = verify_repository(repo, read_data=read_data)
        assert result.ok, (result.damaged, result.problems)
        assert result.snapshots == 2 and result.blobs == 5 and result.packs == 4 and result.recorded == 0


def test_a_missing_pack_is_found_without_reading_data(repo):
    snap = store_files(repo, "svc", {"conf/server.xml": b"<Server/>" * 100})
    other = store_files(repo, "db", {"dump.sql": b"INSERT" * 100})
    chunk = list(read_tree(repo, repo.load_snapshot(snap.id).tree))[1].chunks[0]
    repo.remove_pack(_pack_of(repo, chunk))
    result = verify_repository(repo)
    assert not result.ok
    assert chunk.hex() in result.damaged and "is missing" in result.damaged[chunk.hex()]
    assert any(where.endswith(": conf/server.xml") for where in result.affected[chunk.hex()])
    assert other.id[:12] not in " ".join(result.affected[chunk.hex()])
    assert result.recorded >= 1


def test_a_truncated_pack_is_found_without_reading_data(repo):
    store_files(repo, "svc", {"a": os.urandom(20000)})
    [(blob_id, loc)] = [(b, loc) for b, loc in repo.index.items() if loc.raw_length == 20000]
    data = repo.load_pack(loc.pack)
    _rewrite_pack(repo, loc.pack, data[: loc.offset + 10])
    result = verify_repository(repo)
    assert "truncated" in result.damaged[blob_id.hex()]


def test_a_flipped_byte_is_found_by_reading_recorded_and_healed_by_the_next_backup(repo):
    content = os.urandom(30000)
    store_files(repo, "svc", {"a": content, "b": b"kept" * 100})
    [(blob_id, loc)] = [(b, loc) for b, loc in repo.index.items() if loc.raw_length == 30000]
    data = bytearray(repo.load_pack(loc.pack))
    data[loc.offset + 100] ^= 0xFF
    _rewrite_pack(repo, loc.pack, bytes(data))
    assert verify_repository(repo).ok  # the structure is intact: only reading finds it
    result = verify_repository(repo, read_data=True)
    assert blob_id.hex() in result.damaged and result.recorded == 1 and result.damage_record
    assert any(where.endswith(": a") for where in result.affected[blob_id.hex()])
    assert repo.unhealed() == {blob_id}
    # no backup deduplicates against the damaged copy: the same content is stored again
    writer = Repository.open(repo.backend).writer()
    assert writer.save(content) == (blob_id, True)
    writer.flush()
    healed = Repository.open(repo.backend)
    assert healed.unhealed() == frozenset()
    assert healed.read_blob(blob_id) == content
    after = verify_repository(healed, read_data=True)
    assert after.problems == [f"pack {loc.pack.hex()}: content does not match its name (damaged); the data "
                              "found damaged in it has been stored again by a backup, and `prune` removes "
                              "the damaged pack"]
    assert not after.damaged


def test_recorded_damage_not_yet_healed_is_named_as_such(repo):
    store_files(repo, "svc", {"a": b"x" * 5000})
    [(blob_id, loc)] = [(b, loc) for b, loc in repo.index.items() if loc.raw_length == 5000]
    repo.record_damage([(blob_id, loc.pack)])
    result = verify_repository(Repository.open(repo.backend))
    assert "earlier verify" in result.damaged[blob_id.hex()]


def test_an_empty_snapshot_document_is_named_and_the_rest_verified(repo):
    good = store_files(repo, "svc", {"a": b"a" * 100})
    bad = store_files(repo, "svc", {"b": b"b" * 100}, time="2026-11-28T07:00:00Z")
    repo.backend.remove(Handle(Kind.SNAPSHOT, bad.id))
    repo.backend.save(Handle(Kind.SNAPSHOT, bad.id), [b""])
    result = verify_repository(repo, read_data=True)
    assert result.snapshots == 1 and not result.damaged
    assert len(result.problems) == 1 and bad.id in result.problems[0] and "empty" in result.problems[0]
    assert [snap.id for snap in repo.snapshots()] == [good.id]


def test_an_unreadable_index_file_is_a_problem_not_a_crash(repo):
    store_files(repo, "svc", {"a": b"a" * 100})
    repo.backend.save(Handle(Kind.INDEX, "ff" * 32), [b"garbage"])
    result = verify_repository(Repository.open(repo.backend))
    assert not result.ok and "index" in result.problems[0] and "ff" * 32 in result.problems[0]


def test_a_lost_file_list_is_named_with_its_snapshot(repo):
    snap = store_files(repo, "svc", {"a": b"a" * 100})
    tree = snap.tree[0]
    repo.remove_pack(repo.index.get(bytes.fromhex(tree)).pack)
    result = verify_repository(repo, record=False)
    assert "is missing" in result.damaged[tree]
    assert result.affected[tree] == [f"snapshot {snap.id[:12]} (svc {snap.time}): its file list"]
    assert repo.backend.list(Kind.DAMAGE) == []  # record=False writes nothing
    forged = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-11-29T07:00:00Z",
                                         trigger="manual", tree=("ee" * 32,), files=0, bytes=0, fingerprint=""))
    result = verify_repository(repo, record=False)
    assert result.damaged["ee" * 32] == "tree blob missing from the index"
    assert result.affected["ee" * 32] == [f"snapshot {forged.id[:12]} (svc {forged.time}): its file list"]


def test_a_file_list_that_does_not_parse_is_a_problem_of_its_snapshot(repo):
    writer = repo.writer()
    blob, _ = writer.save(b'{"path":"a","type":"file","chunks":["not hex"]}\n', KIND_TREE)
    writer.flush()
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-11-29T07:00:00Z",
                                       trigger="manual", tree=(blob.hex(),), files=1, bytes=0, fingerprint=""))
    result = verify_repository(repo)
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"snapshot {snap.id[:12]} (svc {snap.time}): file list unreadable: ")
    assert not result.ok


def test_each_pack_read_whole_names_its_damaged_missing_and_unreadable_blobs(repo, monkeypatch):
    # _check_pack runs in forked workers under --read-data; called here in this process, as a worker does
    from agent.checker import verify

    monkeypatch.setattr(verify, "_REPO", repo)
    store_files(repo, "svc", {"a": os.urandom(3000), "b": os.urandom(4000), "c": os.urandom(5000)})
    [pack] = {loc.pack for _, loc in repo.index.items() if loc.raw_length in (3000, 4000, 5000)}
    blobs = sorted(((blob_id, loc) for blob_id, loc in repo.index.items() if loc.pack == pack),
                   key=lambda item: item[1].offset)
    assert verify._check_pack(pack, blobs) == ({}, [], [], set())  # unencrypted: no data keys named

    data = repo.load_pack(pack)
    first, second, third = blobs
    damaged = bytearray(data)
    damaged[second[1].offset + 7] ^= 0x01
    _rewrite_pack(repo, pack, bytes(damaged))
    found, problems, pairs, _ = verify._check_pack(pack, blobs)
    assert found == {second[0].hex(): f"content in pack {pack.hex()} does not match its id"}
    assert problems == [f"pack {pack.hex()}: content does not match its name (damaged)"]
    assert pairs == [(second[0], pack)]

    _rewrite_pack(repo, pack, data[:third[1].offset + 1])  # cut inside the last blob
    found, problems, pairs, _ = verify._check_pack(pack, blobs)
    assert list(found) == [third[0].hex()] and pairs == [(third[0], pack)] and len(problems) == 1

    repo.remove_pack(pack)
    found, problems, pairs, _ = verify._check_pack(pack, blobs)
    assert found == {blob_id.hex(): f"its pack {pack.hex()} is missing" for blob_id, _ in blobs}
    assert problems == [] and pairs == [(blob_id, pack) for blob_id, _ in blobs]

    if isinstance(repo.backend, LocalBackend):  # a pack that cannot be read: every blob of it is unusable
        os.mkdir(repo.describe_pack(pack))
        found, problems, pairs, _ = verify._check_pack(pack, blobs)
        assert set(found) == {blob_id.hex() for blob_id, _ in blobs} and len(pairs) == 3
        assert all(reason.startswith(f"its pack {pack.hex()} cannot be read (") for reason in found.values())
