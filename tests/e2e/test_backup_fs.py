"""End-to-end: the real `backup-agent` command backing up and restoring real temp trees."""

from __future__ import annotations

import json
import marshal
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from tests.helpers import Link, flip_a_byte_in_the_biggest_pack, fs_job, make_tree, new_agent, read_tree

TOMCAT_EXCLUDE = ["logs/", "*.log", "*.log.*", "catalina.out*", "temp/", "work/"]


def restore(agent, ref: str, target: str, *paths: str) -> None:
    agent.run("restore", ref, "--target", target, *paths, check=0)


def test_backup_report_fields_and_restore_equality(agent, tmp_path):
    src = str(tmp_path / "api")
    make_tree(src, {
        "tomcat/conf/server.xml": "<Server/>", "tomcat/conf/empty.xml": "",
        "tomcat/lib/a.jar": os.urandom(300_000), "tomcat/webapps/ROOT/WEB-INF/classes/app.properties": "x=1",
        "tomcat/bin/startup.sh": "#!/bin/sh\n", "emptydir/": None, "tomcat/current": Link("conf/server.xml"),
    })
    os.chmod(os.path.join(src, "tomcat/bin/startup.sh"), 0o750)
    os.utime(os.path.join(src, "tomcat/conf/server.xml"), ns=(1_600_000_000_123_456_789,) * 2)
    agent.write_jobs(fs_job("services-api", src))
    [report] = agent.backup("services-api")
    assert set(report) >= {"id", "host", "job", "type", "trigger", "status", "changed", "snapshot",
                           "started_at", "finished_at", "files", "bytes", "new_bytes", "errors"}
    assert report["status"] == "ok" and report["changed"] is True and report["trigger"] == "manual"
    assert report["host"] == "test-node" and report["type"] == "fs" and report["errors"] == []
    assert report["files"] == 5 and report["bytes"] == report["new_bytes"] == 300_000 + 9 + 3 + 10
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", report["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", report["started_at"])

    target = str(tmp_path / "restored")
    restore(agent, "services-api:latest", target)
    assert read_tree(target) == read_tree(src)
    snaps = agent.snapshots()
    assert [s["id"] for s in snaps] == [report["snapshot"]]
    assert set(snaps[0]) == {"id", "job", "host", "time", "trigger", "files", "bytes", "partial", "changes"}
    assert snaps[0]["host"] == "test-node"


def test_excluded_paths_are_never_stored_and_negation_and_dir_only_work(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {
        "tomcat/logs/catalina.out": "secret log", "tomcat/logs/keep.txt": "in excluded dir",
        "tomcat/conf/app.log": "log", "tomcat/conf/app.log.1": "rotated", "tomcat/conf/important.log": "kept",
        "tomcat/temp/x": "tmp", "tomcat/work/Catalina/y": "work", "tomcat/catalina.out.2026-11-01": "old",
        "tomcat/conf/work": "a FILE named work: dir-only pattern must not exclude it",
        "tomcat/conf/server.xml": "<Server/>",
    })
    agent.write_jobs(fs_job("svc", src, TOMCAT_EXCLUDE + ["!important.log"]))
    [report] = agent.backup()
    target = str(tmp_path / "out")
    restore(agent, "svc:latest", target)
    restored = {os.fsdecode(p) for p in read_tree(target)}
    assert "tomcat/conf/server.xml" in restored and "tomcat/conf/important.log" in restored
    assert "tomcat/conf/work" in restored
    # excluded directories come back empty (Tomcat needs them to start), their contents never
    assert not any(p.startswith(("tomcat/logs/", "tomcat/temp/", "tomcat/work/")) for p in restored)
    assert {"tomcat/logs", "tomcat/temp", "tomcat/work"} <= restored
    assert "tomcat/conf/app.log" not in restored and "tomcat/conf/app.log.1" not in restored
    assert "tomcat/catalina.out.2026-11-01" not in restored
    # and the excluded bytes are nowhere in the repository
    for directory, _, files in os.walk(agent.repository):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                assert b"secret log" not in handle.read()
    assert report["files"] == 3


def test_no_change_run_makes_no_snapshot(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a.txt": "a", "b/c.txt": "c"})
    agent.write_jobs(fs_job("svc", src))
    [first] = agent.backup()
    [second] = agent.backup()
    assert second["status"] == "ok" and second["changed"] is False and second["new_bytes"] == 0
    assert second["snapshot"] == first["snapshot"]
    assert len(agent.snapshots()) == 1
    # a log write under an excluded path is not a change either
    agent.write_jobs(fs_job("svc", src, ["*.log"]))
    agent.backup()
    count = len(agent.snapshots())
    with open(os.path.join(src, "busy.log"), "a") as handle:
        handle.write("line\n" * 1000)
    [third] = agent.backup()
    assert third["changed"] is False and len(agent.snapshots()) == count


def test_touched_but_same_content_makes_no_snapshot_and_real_change_does(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/app.properties": "x=1\n", "conf/other.xml": "<a/>"})
    past = time.time_ns() - 3_600_000_000_000
    for name in ("conf/app.properties", "conf/other.xml"):
        os.utime(os.path.join(src, name), ns=(past, past))
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    # configuration management rewrites the file with identical content: new mtime, ctime, maybe inode
    path = os.path.join(src, "conf/app.properties")
    os.unlink(path)
    with open(path, "w") as handle:
        handle.write("x=1\n")
    [report] = agent.backup()
    assert report["changed"] is False and len(agent.snapshots()) == 1
    with open(path, "w") as handle:
        handle.write("x=2\n")
    [report] = agent.backup()
    assert report["changed"] is True and report["new_bytes"] == 4 and len(agent.snapshots()) == 2


def _cache_file(agent, job: str) -> str:
    return os.path.join(agent.state_dir, "cache", f"{job}.files")


def test_files_kept_from_the_cache_keep_mode_owner_and_times(agent, tmp_path):
    """Files whose stat matches the cache are not even turned into entries by the walk: their manifest
    lines come from the cache. A chmod must still make a snapshot, and every other file must still be
    restored with its own mode and mtime."""
    src = str(tmp_path / "svc")
    make_tree(src, {f"conf/f{i}.xml": f"<f{i}/>" for i in range(20)} | {"bin/run.sh": "#!/bin/sh\n"})
    for i in range(20):
        os.chmod(os.path.join(src, f"conf/f{i}.xml"), 0o600 + (i % 3) * 0o40)
        os.utime(os.path.join(src, f"conf/f{i}.xml"), ns=(1_500_000_000_000_000_000 + i,) * 2)
    time.sleep(2.2)  # out of the racy window: the next run trusts every file's stat
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    [unchanged] = agent.backup()
    assert unchanged["changed"] is False and unchanged["files"] == 21
    os.chmod(os.path.join(src, "bin/run.sh"), 0o750)
    [chmodded] = agent.backup()
    assert chmodded["changed"] is True and chmodded["files"] == 21 and chmodded["new_bytes"] == 0
    assert chmodded["bytes"] == unchanged["bytes"]
    target = str(tmp_path / "restored")
    restore(agent, "svc:latest", target)
    assert read_tree(target) == read_tree(src)

    # A version-4 (no owners) or version-5 (no xattrs) cache from before an upgrade: every file is read once
    # more, nothing is stored again, no snapshot is made, and the cache is written in the current version.
    for version, size in ((4, 64), (5, 76)):
        with open(_cache_file(agent, "svc"), "rb") as handle:
            header, paths, records, ends, chunks, others, _ = marshal.load(handle)
        assert header["version"] == 6 and len(records) == 21 * 80
        old = b"".join(records[at:at + size] for at in range(0, len(records), 80))
        with open(_cache_file(agent, "svc"), "wb") as handle:
            marshal.dump(({**header, "version": version}, paths, old, ends, chunks, others), handle)
        [upgraded] = agent.backup()
        assert upgraded["changed"] is False and upgraded["new_bytes"] == 0 and len(agent.snapshots()) == 2
    with open(_cache_file(agent, "svc"), "rb") as handle:
        header, _, records, *_ = marshal.load(handle)
    assert header["version"] == 6 and len(records) == 21 * 80
    os.chmod(os.path.join(src, "conf/f3.xml"), 0o644)
    with open(os.path.join(src, "conf/f4.xml"), "a") as handle:
        handle.write("<more/>")
    [changed] = agent.backup()
    assert changed["changed"] is True and changed["new_bytes"] == len("<f4/><more/>")
    shutil.rmtree(target)
    restore(agent, "svc:latest", target)
    assert read_tree(target) == read_tree(src)
    [again] = agent.backup()  # the cache patched in place by the last run describes the tree
    assert again["changed"] is False and again["bytes"] == changed["bytes"] == unchanged["bytes"] + 7


def test_symlink_loops_are_stored_as_links_not_followed(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a/file": "x", "a/loop": Link(".."), "a/self": Link("self"), "abs": Link("/etc/passwd")})
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup()
    assert report["status"] == "ok" and report["files"] == 1
    target = str(tmp_path / "out")
    restore(agent, "svc:latest", target)
    assert os.readlink(os.path.join(target, "a/loop")) == ".."
    assert os.readlink(os.path.join(target, "abs")) == "/etc/passwd"
    assert read_tree(target) == read_tree(src)


def test_non_utf8_names_empty_files_and_special_files(agent, tmp_path):
    src = str(tmp_path / "svc")
    os.makedirs(src)
    weird = os.path.join(os.fsencode(src), b"caf\xe9-\xff.conf")
    with open(weird, "wb") as handle:
        handle.write(b"latin-1 name")
    open(os.path.join(src, "zero"), "wb").close()
    os.mkfifo(os.path.join(src, "pipe"))
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup()
    assert report["status"] == "ok", report
    assert any("pipe" in w and "fifo" in w for w in report["warnings"])
    target = str(tmp_path / "out")
    restore(agent, "svc:latest", target)
    with open(os.path.join(os.fsencode(target), b"caf\xe9-\xff.conf"), "rb") as handle:
        assert handle.read() == b"latin-1 name"
    assert os.path.getsize(os.path.join(target, "zero")) == 0
    assert not os.path.exists(os.path.join(target, "pipe"))


def _unprivileged() -> list:
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop root for a permission test")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_unreadable_file_fails_the_run_but_stores_the_rest(shared_tmp):
    tmp_path = shared_tmp  # not pytest's base: a concurrent pytest resets it to 0700, locking the user out
    agent = new_agent(str(tmp_path / "agent"))
    user = _unprivileged()
    src = str(tmp_path / "svc")
    make_tree(src, {"ok.txt": "fine", "secret/locked.txt": "no", "private.key": "no"})
    os.chmod(os.path.join(src, "private.key"), 0o000)
    os.chmod(os.path.join(src, "secret"), 0o000)
    agent.write_jobs(fs_job("svc", src))
    if user:  # the whole test area must belong to the unprivileged user
        for directory, dirs, files in os.walk(str(tmp_path)):
            for name in dirs + files + [""]:
                os.lchown(os.path.join(directory, name), 65534, 65534)
    result = agent.run("backup", "svc", "--json", user=user)
    assert result.returncode == 1, result.stderr
    [report] = json.loads(result.stdout)
    assert report["status"] == "failed"
    assert any("private.key" in e for e in report["errors"]) and any("secret" in e for e in report["errors"])
    assert report["files"] == 1 and report["snapshot"]
    os.chmod(os.path.join(src, "secret"), 0o755)
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0, user=user)
    with open(os.path.join(target, "ok.txt")) as handle:
        assert handle.read() == "fine"


def test_file_bigger_than_memory_bound_streams(agent, tmp_path):
    src = str(tmp_path / "svc")
    os.makedirs(src)
    size = 400 * 1024 * 1024
    with open(os.path.join(src, "big.dump"), "wb") as handle:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            handle.write(i.to_bytes(8, "little") + block[8:])
    agent.write_jobs(fs_job("svc", src))
    argv = ["/usr/bin/time", "-f", "%M"] if os.path.exists("/usr/bin/time") else None
    if argv is None:
        pytest.skip("needs /usr/bin/time to measure peak RSS")
    result = agent.run("backup", "svc", "--json", user=argv, check=0)
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib} KiB for a {size >> 20} MiB file"
    target = str(tmp_path / "out")
    restore(agent, "svc:latest", target)
    assert os.path.getsize(os.path.join(target, "big.dump")) == size
    assert subprocess.run(["cmp", os.path.join(src, "big.dump"), os.path.join(target, "big.dump")]).returncode == 0


def test_restore_selected_paths_creates_target(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"tomcat/conf/server.xml": "s", "tomcat/conf/web.xml": "w", "tomcat/lib/a.jar": "j"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    target = str(tmp_path / "deep" / "new" / "dir")
    restore(agent, "svc:latest", target, "tomcat/conf/server.xml", "tomcat/lib")
    assert {os.fsdecode(p) for p in read_tree(target)} == {
        "tomcat", "tomcat/conf", "tomcat/conf/server.xml", "tomcat/lib", "tomcat/lib/a.jar"}
    missing = agent.run("restore", "svc:latest", "--target", target, "no/such/file")
    assert missing.returncode == 2 and "no/such/file" in missing.stderr


def test_repository_files_are_private(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    for directory, _dirs, files in os.walk(agent.repository):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


def test_json_output_is_only_json_and_backup_exit_codes(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src) + fs_job("gone", str(tmp_path / "missing")))
    result = agent.run("backup", "--all", "--json")
    assert result.returncode == 1
    reports = json.loads(result.stdout)
    assert [r["status"] for r in reports] == ["ok", "failed"]
    assert "does not exist" in reports[1]["errors"][0]
    assert agent.run("backup", "nosuchjob").returncode == 2
    assert agent.run("backup").returncode == 2
    for command in (["snapshots"], ["verify"], ["check-config"], ["prune", "--dry-run"]):
        json.loads(agent.run(*command, "--json", check=0).stdout)


def test_verify_of_new_repository_and_flipped_byte(agent, tmp_path):
    assert agent.run("verify", "--read-data").returncode == 0  # no repository yet
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server port='8005'/>" * 100, "lib/x.jar": os.urandom(100_000)})
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup()
    assert agent.run("verify", "--read-data").returncode == 0
    flip_a_byte_in_the_biggest_pack(agent.repository)
    assert agent.run("verify").returncode == 0  # structure intact: only reading the data finds it
    result = agent.run("verify", "--read-data")
    assert result.returncode == 1
    assert "damaged" in result.stdout and "lib/x.jar" in result.stdout
    assert report["snapshot"][:12] in result.stdout
    broken = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"))
    assert broken.returncode == 1 and "does not match" in broken.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="needs root and chattr")
def test_a_snapshot_whose_files_cache_could_not_be_saved_is_not_written_again(agent, tmp_path):
    """The run after one that committed a snapshot but could not save the files cache (an immutable cache
    file stands in for a full state_dir) finds that snapshot holds the tree: `changed: false`, no copy."""
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/a.xml": "one"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    make_tree(src, {"conf/a.xml": "two"})
    cache = os.path.join(agent.state_dir, "cache", "svc.files")
    subprocess.run(["chattr", "+i", cache], check=True)
    try:
        [failed] = agent.backup(expect=1)
    finally:
        subprocess.run(["chattr", "-i", cache], check=True)
    assert failed["changed"] and "cannot save the files cache" in failed["errors"][0]
    [again] = agent.backup()
    assert (again["changed"], again["snapshot"]) == (False, failed["snapshot"])
    assert [row["id"] for row in agent.snapshots("svc")][-1] == failed["snapshot"] and len(agent.snapshots()) == 2
    [third] = agent.backup()  # the cache now names that snapshot
    assert (third["changed"], third["snapshot"]) == (False, failed["snapshot"])
