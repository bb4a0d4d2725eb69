"""Crash safety, locking, tampered manifests and prune: the repository must stay verifiable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

from agent.store import KIND_TREE, Repository, Snapshot
from agent.store.manifest import Entry, encode_entry
from tests.helpers import agent_command, flip_a_byte_in_the_biggest_pack, fs_job, make_tree


def _big_tree(root: str, files: int = 300) -> None:
    rng = random.Random(7)
    for number in range(files):
        path = os.path.join(root, f"d{number % 17}", f"f{number}.bin")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(rng.randbytes(rng.randint(1, 400_000)))


def test_kill_9_at_random_points_leaves_a_verifiable_repository(agent, tmp_path):
    src = str(tmp_path / "svc")
    _big_tree(src)
    agent.write_jobs(fs_job("svc", src))
    rng = random.Random(42)
    for attempt in range(6):
        # a fresh change each time, so every run has something to write when it is killed
        with open(os.path.join(src, f"new-{attempt}.bin"), "wb") as handle:
            handle.write(os.urandom(3_000_000))
        proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "svc"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        verify = agent.run("verify", "--read-data")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    [report] = agent.backup()
    assert report["status"] == "ok"
    assert agent.run("verify", "--read-data").returncode == 0
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert subprocess.run(["diff", "-r", src, target]).returncode == 0


def test_second_writer_waits_for_the_lock_and_a_dead_holder_does_not_block(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    repo = Repository.open(agent.repository)
    lock = repo.lock(exclusive=True, purpose="test holder")
    lock.acquire()
    try:
        proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "svc", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None, "the second writer must wait while the lock is held"
    finally:
        lock.release()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "waiting for the repository lock" in err and "test holder" in err
    json.loads(out)
    # a holder killed with SIGKILL leaves its lock file behind; the kernel released the lock itself
    holder = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "svc"])
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert agent.run("backup", "svc", timeout=30).returncode == 0


def _save_tree(repo: Repository, entries) -> tuple:
    writer = repo.writer()
    blob_id, _ = writer.save(b"".join(encode_entry(entry) for entry in entries), KIND_TREE)
    writer.flush()
    return (blob_id.hex(),)


def test_tampered_manifest_cannot_write_outside_the_target(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "x"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    repo = Repository.open(agent.repository)
    writer = repo.writer()
    payload, _ = writer.save(b"owned")
    writer.flush()
    evil = [
        Entry(".", "dir", 0o755, 0, 0, 0),
        Entry("../escaped", "file", 0o644, 0, 0, 0, 5, (payload,)),
        Entry(str(tmp_path / "absolute"), "file", 0o644, 0, 0, 0, 5, (payload,)),
        Entry("sub/../../dotdot", "file", 0o644, 0, 0, 0, 5, (payload,)),
        Entry("link", "symlink", 0o777, 0, 0, 0, target=str(tmp_path)),
        Entry("link/through-link", "file", 0o644, 0, 0, 0, 5, (payload,)),
        Entry("fine", "file", 0o644, 0, 0, 0, 5, (payload,)),
    ]
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="evil", time="2099-01-01T00:00:00.000000Z",
                                       trigger="manual", tree=_save_tree(repo, evil), files=5, bytes=25,
                                       fingerprint="x"))
    target = tmp_path / "target"
    result = agent.run("restore", snap.id, "--target", str(target))
    assert result.returncode == 1
    assert (target / "fine").read_text() == "owned"
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "absolute").exists()
    assert not (tmp_path / "dotdot").exists() and not (tmp_path / "through-link").exists()
    # the inconsistent link/through-link pair: the link is replaced by a real directory, never followed
    assert not os.path.islink(target / "link") and (target / "link" / "through-link").read_text() == "owned"
    assert "unsafe path" in result.stderr


def _fake_snapshot(repo: Repository, tree: tuple, when: datetime, job: str = "svc") -> Snapshot:
    return repo.save_snapshot(Snapshot(job=job, type="fs", host="h", trigger="schedule", tree=tree, files=1,
                                       bytes=1, fingerprint=when.isoformat(),
                                       time=when.isoformat(timespec="microseconds").replace("+00:00", "Z")))


def test_prune_keeps_exactly_what_the_policy_says(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 2, keep_daily = 3, "
                                               "keep_weekly = 2, keep_monthly = 2 }"))
    agent.backup()
    repo = Repository.open(agent.repository)
    tree = repo.snapshots()[0].tree
    for snap in repo.snapshots():
        repo.delete_snapshot(snap.id)
    start = datetime(2026, 9, 1, 12, 0, tzinfo=timezone.utc)
    made = [_fake_snapshot(repo, tree, start + timedelta(hours=12 * n)) for n in range(120)]  # 60 days
    orphan_job = _fake_snapshot(repo, tree, start, job="removed-job")
    env_keep = {s.id for s in made[-2:]}  # keep_last 2: Oct 30 12:00 and Oct 31 00:00
    # daily: newest of Oct 31, Oct 30, Oct 29; weekly: newest of ISO weeks 44 and 43; monthly: Oct, Sep
    by_day = {}
    for snap in made:
        by_day[snap.time[:10]] = snap.id
    env_keep |= {by_day["2026-10-30"], by_day["2026-10-29"], by_day["2026-10-31"]}
    week43 = [s for s in made if datetime.fromisoformat(s.time[:19]).isocalendar()[1] == 43][-1]
    env_keep |= {week43.id, by_day["2026-09-30"]}
    dry = json.loads(agent.run("prune", "--dry-run", "--json", check=0).stdout)
    assert len(repo.snapshots()) == 121
    kept = set(dry["kept"]) - {orphan_job.id}
    assert kept == env_keep, (sorted(s.time for s in made if s.id in kept),
                             sorted(s.time for s in made if s.id in env_keep))
    assert orphan_job.id in dry["kept"] and dry["unknown_jobs"] == ["removed-job"]
    agent.run("prune", check=0)
    assert {s.id for s in repo.snapshots()} == env_keep | {orphan_job.id}
    assert agent.run("verify", "--read-data").returncode == 0


def test_prune_deletes_unreferenced_data_and_keeps_restorable(agent, tmp_path):
    src = str(tmp_path / "svc")
    os.makedirs(src)
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 1, keep_daily = 0, "
                                               "keep_weekly = 0, keep_monthly = 0 }"))
    for round_ in range(3):
        with open(os.path.join(src, "data.bin"), "wb") as handle:
            handle.write(os.urandom(2_000_000))
        with open(os.path.join(src, "keep.txt"), "w") as handle:
            handle.write(f"round {round_}")
        agent.backup()

    def repo_size() -> int:
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(agent.repository) for f in fs)

    before = repo_size()
    agent.run("prune", check=0)
    assert len(agent.snapshots()) == 1
    assert repo_size() < before - 3_500_000
    assert agent.run("verify", "--read-data").returncode == 0
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert subprocess.run(["diff", "-r", src, target]).returncode == 0
    [report] = agent.backup()  # the files cache must not point at pruned data
    assert report["status"] == "ok" and report["changed"] is False


def test_a_files_cache_whose_snapshot_was_forgotten_and_pruned_is_not_trusted(agent, tmp_path):
    """The walk starts with the files cache while the repository is asked whether its snapshot still exists;
    it is gone (forgotten and pruned with its data): the tree is walked again without the cache and every
    file read, also the one changed meanwhile, whose blob the first walk stored (kept, not lost)."""
    src = str(tmp_path / "svc")
    files = {f"lib/{number}.jar": os.urandom(300_000) for number in range(8)}
    make_tree(src, files)
    agent.write_jobs(fs_job("svc", src))
    [first] = agent.backup()
    agent.run("forget", first["snapshot"], check=0)
    agent.run("prune", check=0)
    with open(os.path.join(src, "lib/0.jar"), "wb") as handle:
        handle.write(os.urandom(300_000))
    [second] = agent.backup()
    assert second["status"] == "ok" and second["changed"]
    assert second["new_bytes"] >= sum(len(data) for data in files.values())  # nothing taken from the cache
    assert agent.run("verify", "--read-data").returncode == 0
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=0)
    assert subprocess.run(["diff", "-r", src, str(tmp_path / "out")]).returncode == 0
    [third] = agent.backup()
    assert third["status"] == "ok" and not third["changed"]


def test_damage_found_by_verify_is_healed_by_the_next_backup(agent, tmp_path):
    """Issue 15 kind 4: a flipped byte in a pack is never deduplicated against once verify found it;
    the next backup stores a good copy even with the files cache saying "unchanged"; prune then drops
    the damaged pack and everything verifies."""
    src = str(tmp_path / "svc")
    jar = os.urandom(100_000)
    make_tree(src, {"conf/server.xml": "<Server port='8005'/>" * 100, "lib/x.jar": jar})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    biggest = flip_a_byte_in_the_biggest_pack(agent.repository)
    found = agent.run("verify", "--read-data")
    assert found.returncode == 1 and "lib/x.jar" in found.stdout
    assert "recorded 1 damaged blob" in found.stdout and "next backup" in found.stdout
    [report] = agent.backup()
    # the damaged chunk is stored again (the jar may span several chunks: the others are intact)
    assert report["status"] == "ok" and report["new_bytes"] > 0, report
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    with open(os.path.join(target, "lib", "x.jar"), "rb") as handle:
        assert handle.read() == jar
    [again] = agent.backup()
    assert again["changed"] is False and again["new_bytes"] == 0  # healed: the cache is trusted again
    # the damaged pack is still there: verify fails, but says that the data is stored again and what to do
    healed = agent.run("verify", "--read-data")
    assert healed.returncode == 1 and os.path.basename(biggest).split(".")[0] in healed.stdout
    assert "stored again" in healed.stdout and "`prune` removes" in healed.stdout, healed.stdout
    assert "lib/x.jar" not in healed.stdout  # no snapshot needs the damaged copy any more
    agent.run("prune", check=0)
    assert not os.path.exists(biggest)
    verify = agent.run("verify", "--read-data")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_empty_snapshot_document_spoils_only_itself(agent, tmp_path):
    """Issue 15 kind 4: one empty snapshot document (a power loss) is named; snapshots, verify,
    restore and prune work for every other snapshot, without a traceback."""
    src = str(tmp_path / "svc")
    make_tree(src, {"a.txt": "one"})
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 5 }"))
    [first] = agent.backup()
    make_tree(src, {"a.txt": "two"})
    [second] = agent.backup()
    with open(os.path.join(agent.repository, "snapshots", second["snapshot"] + ".json"), "w"):
        pass  # truncated to nothing
    listing = agent.run("snapshots", "--json")
    assert listing.returncode == 0 and [row["id"] for row in json.loads(listing.stdout)] == [first["snapshot"]]
    assert second["snapshot"] in listing.stderr and "empty" in listing.stderr
    verify = agent.run("verify", "--read-data")
    assert verify.returncode == 1 and second["snapshot"] in verify.stdout
    restored = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"))
    assert restored.returncode == 0
    assert (tmp_path / "out" / "a.txt").read_text() == "one"
    direct = agent.run("restore", second["snapshot"], "--target", str(tmp_path / "out2"))
    assert direct.returncode in (1, 2) and second["snapshot"] in direct.stderr and "empty" in direct.stderr
    pruned = agent.run("prune")
    assert pruned.returncode == 0 and second["snapshot"] in pruned.stderr
    for result in (listing, verify, restored, direct, pruned):
        assert "Traceback" not in result.stdout + result.stderr


def _one_snapshot(agent, tmp_path) -> str:
    """One job `svc` backed up once; returns the path of the repository's config.json."""
    make_tree(str(tmp_path / "svc"), {"a.txt": "one"})
    agent.write_jobs(fs_job("svc", str(tmp_path / "svc")))
    agent.backup()
    return os.path.join(agent.repository, "config.json")


def test_a_garbage_config_is_named_without_a_traceback(agent, tmp_path):
    config = _one_snapshot(agent, tmp_path)
    for garbage in (b"", b"\x00\x17garbage", b"[1, 2]", b'{"format": 1}'):
        with open(config, "wb") as handle:
            handle.write(garbage)
        restore = ["restore", "svc:latest", "--target", str(tmp_path / "o")]
        for command in (["snapshots"], ["verify"], ["prune"], restore):
            result = agent.run(*command)
            assert result.returncode in (1, 2), (command, result.stderr)
            assert config in result.stderr and "Traceback" not in result.stderr, result.stderr
        [report] = agent.backup(expect=1)
        assert report["status"] == "failed" and config in report["errors"][0]


def test_a_lost_config_is_an_error_and_never_re_created_over_data(agent, tmp_path):
    config = _one_snapshot(agent, tmp_path)
    os.remove(config)
    restore = ["restore", "svc:latest", "--target", str(tmp_path / "o")]
    for command in (["snapshots"], ["verify"], ["prune"], restore):
        result = agent.run(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert config in result.stderr and "holds 1 snapshot" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    [report] = agent.backup(expect=1)
    assert report["status"] == "failed" and config in report["errors"][0]
    assert not os.path.exists(config) and not os.path.exists(str(tmp_path / "o"))


def test_damage_is_said_in_words_without_python_class_names(agent, tmp_path):
    """Messages about a truncated snapshot document or config say what is wrong and name the file; the
    run report (and `status`) carry no exception class name either."""
    src = str(tmp_path / "svc")
    make_tree(src, {"a.txt": "one"})
    agent.write_jobs(fs_job("svc", src))
    [first] = agent.backup()
    document = os.path.join(agent.repository, "snapshots", first["snapshot"] + ".json")
    with open(document, "r+b") as handle:
        handle.truncate(20)
    listing = agent.run("snapshots")
    assert document in listing.stderr and "not valid JSON (unterminated string" in listing.stderr, listing.stderr
    config = os.path.join(agent.repository, "config.json")
    with open(config, "wb") as handle:
        handle.write(b'{"id": "x')
    result = agent.run("verify")
    assert config in result.stderr and "not valid JSON" in result.stderr, result.stderr
    [report] = agent.backup(expect=1)
    assert config in report["errors"][0] and "not valid JSON" in report["errors"][0]
    status = agent.run("status")
    for text in (listing.stderr, result.stderr, report["errors"][0], status.stdout + status.stderr):
        assert "JSONDecodeError" not in text and "RepositoryError" not in text, text


def test_a_truncated_index_file_is_worked_around_named_and_rewritten_by_prune(agent, tmp_path):
    """A power loss left an index file truncated: its packs are indexed from their own blob lists, so a
    backup deduplicates against them, a restore is exact and verify names the file; prune rewrites the
    index, and then everything verifies."""
    src = str(tmp_path / "svc")
    jar = os.urandom(300_000)
    make_tree(src, {"conf/server.xml": "<Server port='8005'/>" * 100, "lib/x.jar": jar})
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 5 }"))
    agent.backup()
    index_dir = os.path.join(agent.repository, "index")
    [name] = os.listdir(index_dir)
    damaged = os.path.join(index_dir, name)
    with open(damaged, "r+b") as handle:
        handle.truncate(os.path.getsize(damaged) // 2)
    make_tree(src, {"lib/copy.jar": jar, "conf/new.xml": "<new/>"})  # the jar again: nothing new to store

    [report] = agent.backup()
    assert report["status"] == "ok" and report["new_bytes"] == len("<new/>"), report
    assert any(damaged in note and "`prune` rewrites the index" in note for note in report["warnings"]), report
    target = str(tmp_path / "out")
    restored = agent.run("restore", "svc:latest", "--target", target)
    assert restored.returncode == 0 and damaged in restored.stderr, restored.stderr
    assert subprocess.run(["diff", "-r", src, target]).returncode == 0
    verify = agent.run("verify")
    assert verify.returncode == 1 and damaged in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    assert "truncated" in verify.stdout + verify.stderr
    pruned = agent.run("prune")
    assert pruned.returncode == 0 and not os.path.exists(damaged)
    assert f"in place of the damaged index file {name}" in pruned.stdout + pruned.stderr
    after = agent.run("verify", "--read-data")
    assert after.returncode == 0, after.stdout + after.stderr
    for result in (restored, verify, pruned, after):
        assert "Traceback" not in result.stdout + result.stderr
