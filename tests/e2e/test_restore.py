"""End-to-end: the real `restore` command into targets that already hold something, as an operator
rolling back a deployment has them (overwrite modes, --delete, --dry-run), and restores that a user
or a damaged repository can make go wrong."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess

import pytest

from agent.store import Repository
from tests.helpers import (
    Link,
    agent_command,
    deep_path,
    fs_job,
    make_tree,
    new_agent,
    nobody_can_use,
    read_deep,
    read_tree,
    write_deep,
)

RELEASE_1 = {
    "tomcat/conf/server.xml": "<Server port='8005'/>", "tomcat/conf/context.xml": "<Context/>",
    "tomcat/lib/app-1.0.jar": "jar 1.0", "tomcat/webapps/ROOT/index.html": "<h1>1.0</h1>",
    "tomcat/bin/startup.sh": "#!/bin/sh\n", "tomcat/current": Link("lib/app-1.0.jar"),
}


def _backed_up(agent, tmp_path, spec=None) -> str:
    src = str(tmp_path / "api")
    make_tree(src, spec or RELEASE_1)
    os.chmod(os.path.join(src, "tomcat/bin/startup.sh"), 0o755)
    agent.write_jobs(fs_job("api", src))
    agent.backup()
    return src


def _deploy_release_2(src: str) -> None:
    """What a deployment does: edits, new files, removed files, a changed mode and link, a new dir."""
    make_tree(src, {"tomcat/conf/server.xml": "<Server port='9005'/>", "tomcat/lib/app-2.0.jar": "jar 2.0",
                    "tomcat/webapps/ROOT/new/page.html": "new"})
    os.unlink(os.path.join(src, "tomcat/lib/app-1.0.jar"))
    os.unlink(os.path.join(src, "tomcat/current"))
    os.symlink("lib/app-2.0.jar", os.path.join(src, "tomcat/current"))
    os.chmod(os.path.join(src, "tomcat/bin/startup.sh"), 0o700)


def _restore_json(agent, *args: str, check: int = 0) -> dict:
    return json.loads(agent.run("restore", *args, "--json", check=check).stdout)


def test_default_never_refuses_an_edited_target_and_writes_nothing(agent, tmp_path):
    _backed_up(agent, tmp_path, {**RELEASE_1, **{f"tomcat/conf/c{i:02}.xml": f"<c{i}/>" for i in range(25)}})
    target = str(tmp_path / "out")
    agent.run("restore", "api:latest", "--target", target, check=0)
    for i in range(25):  # locally edited after the restore: 25 conflicts, more than are listed
        make_tree(target, {f"tomcat/conf/c{i:02}.xml": f"<edited {i}/>"})
    os.chmod(os.path.join(target, "tomcat/bin/startup.sh"), 0o700)  # metadata alone is a difference
    os.unlink(os.path.join(target, "tomcat/lib/app-1.0.jar"))  # missing: would be created, no conflict
    make_tree(target, {"tomcat/conf/local-only.xml": "mine"})  # extra: kept, no conflict without --delete
    before = read_tree(target)

    result = agent.run("restore", "api:latest", "--target", target)
    assert result.returncode == 1
    assert "26 entries" in result.stderr and "--overwrite if-changed" in result.stderr
    listed = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert listed[:20] == ["tomcat/bin/startup.sh"] + [f"tomcat/conf/c{i:02}.xml" for i in range(19)]
    assert listed[20] == "... and 6 more" and len(listed) == 21
    assert "Traceback" not in result.stderr
    assert read_tree(target) == before  # nothing written, not even the missing file

    document = _restore_json(agent, "api:latest", "--target", target, check=1)
    assert document["conflict_count"] == 26 and len(document["conflicts"]) == 20
    assert document["created"] == document["replaced"] == document["deleted"] == 0


def test_directories_never_conflict_and_get_their_recorded_metadata(agent, tmp_path):
    src = _backed_up(agent, tmp_path)
    os.chmod(os.path.join(src, "tomcat/conf"), 0o750)
    agent.backup()
    target = str(tmp_path / "out")
    make_tree(target, {"tomcat/conf/": None})
    os.chmod(os.path.join(target, "tomcat/conf"), 0o777)
    document = _restore_json(agent, "api:latest", "--target", target)
    assert document["conflict_count"] == 0 and document["replaced"] == 0
    assert stat.S_IMODE(os.stat(os.path.join(target, "tomcat/conf")).st_mode) == 0o750
    assert read_tree(target) == read_tree(src)


def test_if_changed_with_delete_rolls_a_deployment_back_exactly(agent, tmp_path):
    src = _backed_up(agent, tmp_path)
    before = read_tree(src)
    [release_1] = agent.snapshots("api")
    untouched = os.path.join(src, "tomcat/conf/context.xml")
    inode = os.stat(untouched).st_ino
    _deploy_release_2(src)
    agent.backup()

    document = _restore_json(agent, release_1["id"], "--target", src, "--overwrite", "if-changed", "--delete")
    assert (document["created"], document["replaced"], document["deleted"]) == (1, 3, 2), document
    assert document["errors"] == [] and document["files"] == 3
    assert read_tree(src) == before
    assert os.stat(untouched).st_ino == inode  # an entry that does not differ is not rewritten
    again = _restore_json(agent, release_1["id"], "--target", src, "--overwrite", "if-changed", "--delete")
    assert (again["created"], again["replaced"], again["deleted"]) == (0, 0, 0)


def test_delete_leaves_what_the_job_excludes_alone(agent, tmp_path):
    src = str(tmp_path / "api")
    make_tree(src, {**RELEASE_1, "tomcat/logs/catalina.out": "old log", "tomcat/webapps/ROOT/app.log": "l"})
    agent.write_jobs(fs_job("api", src, exclude=["logs/", "*.log", "work/"]))
    agent.backup()
    make_tree(src, {"tomcat/logs/catalina.out": "today's log", "tomcat/logs/localhost.2026-11-30.txt": "x",
                    "tomcat/work/Catalina/localhost/ROOT/x.class": "c", "tomcat/webapps/ROOT/new.log": "n",
                    "tomcat/webapps/ROOT/deployed.html": "from the bad deployment"})
    document = _restore_json(agent, "api:latest", "--target", src, "--overwrite", "if-changed", "--delete")
    assert document["deleted"] == 1 and not os.path.exists(os.path.join(src, "tomcat/webapps/ROOT/deployed.html"))
    for kept in ("tomcat/logs/catalina.out", "tomcat/logs/localhost.2026-11-30.txt", "tomcat/webapps/ROOT/new.log",
                 "tomcat/work/Catalina/localhost/ROOT/x.class"):
        assert os.path.exists(os.path.join(src, kept)), kept
    with open(os.path.join(src, "tomcat/logs/catalina.out")) as handle:
        assert handle.read() == "today's log"


def test_dry_run_lists_creates_replaces_deletes_and_changes_nothing(agent, tmp_path):
    src = _backed_up(agent, tmp_path)
    entries = len(read_tree(src)) + 1  # and the root itself
    [release_1] = agent.snapshots("api")
    _deploy_release_2(src)
    deployed = read_tree(src)
    document = _restore_json(agent, release_1["id"], "--target", src, "--overwrite", "if-changed", "--delete",
                             "--dry-run")
    assert document["dry_run"] is True
    assert document["paths"] == {
        "created": ["tomcat/lib/app-1.0.jar"],
        "replaced": ["tomcat/bin/startup.sh", "tomcat/conf/server.xml", "tomcat/current"],
        "deleted": ["tomcat/lib/app-2.0.jar", "tomcat/webapps/ROOT/new"]}
    assert read_tree(src) == deployed
    text = agent.run("restore", release_1["id"], "--target", src, "--delete", "--dry-run")
    assert text.returncode == 1 and "tomcat/conf/server.xml" in text.stderr  # never: still the conflicts
    fresh = str(tmp_path / "not-yet")
    document = _restore_json(agent, release_1["id"], "--target", fresh, "--dry-run")
    assert document["created"] == entries and not os.path.exists(fresh)


def test_always_replaces_every_entry(agent, tmp_path):
    _backed_up(agent, tmp_path)
    target = str(tmp_path / "out")
    agent.run("restore", "api:latest", "--target", target, check=0)
    path = os.path.join(target, "tomcat/conf/context.xml")
    inode = os.stat(path).st_ino
    document = _restore_json(agent, "api:latest", "--target", target, "--overwrite", "always")
    assert document["replaced"] == 6 and document["created"] == 0 and document["files"] == 5
    assert os.stat(path).st_ino != inode


def test_one_path_absolute_or_relative_creates_parents_with_recorded_modes(agent, tmp_path):
    src = _backed_up(agent, tmp_path)
    os.chmod(os.path.join(src, "tomcat"), 0o751)
    os.chmod(os.path.join(src, "tomcat/conf"), 0o750)
    agent.backup()
    for name, path in (("rel", "tomcat/conf/server.xml"), ("abs", os.path.join(src, "tomcat/conf/server.xml"))):
        target = str(tmp_path / name)
        agent.run("restore", "api:latest", "--target", target, path, check=0)
        assert set(read_tree(target)) == {b"tomcat", b"tomcat/conf", b"tomcat/conf/server.xml"}
        assert stat.S_IMODE(os.stat(os.path.join(target, "tomcat")).st_mode) == 0o751
        assert stat.S_IMODE(os.stat(os.path.join(target, "tomcat/conf")).st_mode) == 0o750
    outside = agent.run("restore", "api:latest", "--target", str(tmp_path / "x"), "/etc/passwd")
    assert outside.returncode == 2 and "not under the job's path" in outside.stderr and src in outside.stderr
    missing = agent.run("restore", "api:latest", "--target", str(tmp_path / "x"), "tomcat/conf", "nope")
    assert missing.returncode == 2 and "nope: not in snapshot" in missing.stderr, missing.stderr
    assert "restored" not in missing.stderr + outside.stderr and not os.path.exists(tmp_path / "x")
    delete_one = _restore_json(agent, "api:latest", "--target", src, "--delete", os.path.join(src, "tomcat/lib"))
    assert delete_one["deleted"] == 0
    make_tree(src, {"tomcat/lib/extra.jar": "x", "tomcat/conf/keep.xml": "k"})
    delete_one = _restore_json(agent, "api:latest", "--target", src, "--delete", "tomcat/lib")
    assert delete_one["deleted"] == 1 and os.path.exists(os.path.join(src, "tomcat/conf/keep.xml"))


def test_planted_symlinks_never_redirect_a_write_or_a_delete(agent, tmp_path):
    _backed_up(agent, tmp_path)
    outside = tmp_path / "outside"
    make_tree(str(outside), {"precious.txt": "keep me", "sub/deep.txt": "keep me too"})
    before = read_tree(str(outside))
    target = tmp_path / "target"
    make_tree(str(target), {"tomcat/": None})
    os.symlink(str(outside), str(target / "tomcat" / "conf"))  # where the snapshot has a directory
    os.symlink(str(outside / "precious.txt"), str(target / "tomcat" / "extra"))  # not in the snapshot
    os.symlink(str(outside), str(target / "tomcat" / "extra-dir"))

    refused = agent.run("restore", "api:latest", "--target", str(target))
    assert refused.returncode == 1 and "tomcat/conf" in refused.stderr
    for mode in ("if-changed", "always"):
        agent.run("restore", "api:latest", "--target", str(target), "--overwrite", mode, "--delete", check=0)
        assert read_tree(str(outside)) == before
        assert not os.path.islink(target / "tomcat/conf")
        assert (target / "tomcat/conf/server.xml").read_text() == "<Server port='8005'/>"
        assert not os.path.lexists(target / "tomcat/extra") and not os.path.lexists(target / "tomcat/extra-dir")
        os.symlink(str(outside / "precious.txt"), str(target / "tomcat/conf/server.xml.new"))
        os.unlink(target / "tomcat/conf/server.xml")
        os.symlink(str(outside / "precious.txt"), str(target / "tomcat/conf/server.xml"))
    assert read_tree(str(outside)) == before


def test_a_file_where_a_directory_goes_and_the_other_way_round(agent, tmp_path):
    src = _backed_up(agent, tmp_path)
    target = str(tmp_path / "out")
    make_tree(target, {"tomcat/conf": "a file where the snapshot has a directory",
                       "tomcat/conf.d/x": "y", "tomcat/bin/startup.sh/inner/file": "a tree where a file goes"})
    # without --delete nothing the snapshot does not hold goes: conf.d/x, and what startup.sh/ holds (that
    # directory is named, not replaced by the snapshot's file); the file where a directory goes is replaced
    kept = agent.run("restore", "api:latest", "--target", target, "--overwrite", "if-changed", check=1)
    assert "tomcat/bin/startup.sh: a directory holding entries where the snapshot has a file" in kept.stderr
    restored = read_tree(target)
    assert b"tomcat/conf.d/x" in restored and b"tomcat/bin/startup.sh/inner/file" in restored
    assert restored[b"tomcat/conf"] == read_tree(src)[b"tomcat/conf"]
    agent.run("restore", "api:latest", "--target", target, "--overwrite", "if-changed", "--delete", check=0)
    assert read_tree(target) == read_tree(src)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the test area to another user")
def test_second_restore_into_a_read_only_directory_without_cap_dac_override(shared_tmp):
    tmp_path = shared_tmp
    agent = new_agent(str(tmp_path / "agent"))
    src = str(tmp_path / "svc")
    make_tree(src, {"static/app.js": "v1", "static/css/site.css": "body{}", "conf/a.xml": "<a/>",
                    "sealed/key": "k"})
    os.chmod(os.path.join(src, "static/css"), 0o555)
    os.chmod(os.path.join(src, "static"), 0o555)
    os.chmod(os.path.join(src, "sealed"), 0o000)  # not even its owner may look inside without a chmod
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    target = str(tmp_path / "out")
    user = nobody_can_use(tmp_path)
    agent.run("restore", "svc:latest", "--target", target, check=0, user=user)
    os.chmod(os.path.join(target, "static"), 0o755)
    make_tree(target, {"static/app.js": "edited", "static/extra.js": "x"})
    os.chmod(os.path.join(target, "static"), 0o555)
    for mode in ("if-changed", "always"):
        result = agent.run("restore", "svc:latest", "--target", target, "--overwrite", mode, "--delete", user=user)
        assert result.returncode == 0, result.stderr
        assert read_tree(target) == read_tree(src)
        assert stat.S_IMODE(os.stat(os.path.join(target, "static")).st_mode) == 0o555
        assert stat.S_IMODE(os.stat(os.path.join(target, "sealed")).st_mode) == 0o000
        assert os.stat(os.path.join(target, "static/app.js")).st_uid == 65534
    with open(os.path.join(target, "sealed/key")) as handle:  # root reads it: it was restored inside
        assert handle.read() == "k"
    os.chmod(os.path.join(target, "sealed"), 0o755)
    make_tree(target, {"sealed/extra": "x"})
    os.chmod(os.path.join(target, "sealed"), 0o000)
    dry = agent.run("restore", "svc:latest", "--target", target, "--overwrite", "if-changed", "--delete",
                    "--dry-run", user=user)
    assert dry.returncode == 0 and "sealed: not readable" in dry.stderr, dry.stderr
    assert os.path.exists(os.path.join(target, "sealed/extra"))
    result = agent.run("restore", "svc:latest", "--target", target, "--overwrite", "if-changed", "--delete",
                       "--json", user=user)
    assert result.returncode == 0 and json.loads(result.stdout)["deleted"] == 1, result.stderr
    assert not os.path.exists(os.path.join(target, "sealed/extra"))
    assert stat.S_IMODE(os.stat(os.path.join(target, "sealed")).st_mode) == 0o000


def test_target_that_is_a_file_is_a_clear_error(agent, tmp_path):
    _backed_up(agent, tmp_path)
    existing = tmp_path / "a-file"
    existing.write_text("not a directory")
    for target in (existing, existing / "below"):
        result = agent.run("restore", "api:latest", "--target", str(target))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert str(target) in result.stderr and "not a directory" in result.stderr
    assert existing.read_text() == "not a directory"


def _flip_byte_of_blob(repository: str, blob_id: bytes) -> str:
    """Flip a byte in the middle of the stored blob; returns its pack's id (hex)."""
    location = Repository.open(repository).index.get(blob_id)
    pack = Repository.open(repository).describe_pack(location.pack)
    with open(pack, "r+b") as handle:
        handle.seek(location.offset + location.length // 2)
        byte = handle.read(1)
        handle.seek(location.offset + location.length // 2)
        handle.write(bytes([byte[0] ^ 0x40]))
    return location.pack.hex()


def _entries(agent) -> dict:
    from agent.store.tree import read_tree as manifest

    repo = Repository.open(agent.repository)
    [snapshot] = repo.snapshots()
    return {entry.path: entry for entry in manifest(repo, snapshot.tree)}


def test_a_damaged_blob_never_becomes_wrong_bytes_on_disk(agent, tmp_path):
    spec = {"lib/app.jar": os.urandom(200_000), "conf/server.xml": "<Server/>" * 50, "conf/b.xml": "b"}
    src = _backed_up(agent, tmp_path, {**spec, "tomcat/bin/startup.sh": "#!/bin/sh\n"})
    target = str(tmp_path / "out")
    agent.run("restore", "api:latest", "--target", target, check=0)
    make_tree(target, {"lib/app.jar": "the operator's own copy"})
    [chunk] = _entries(agent)["lib/app.jar"].chunks[:1]
    pack = _flip_byte_of_blob(agent.repository, chunk)
    for where, mode in ((str(tmp_path / "fresh"), "never"), (target, "always")):
        result = agent.run("restore", "api:latest", "--target", where, "--overwrite", mode)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "lib/app.jar" in result.stderr and chunk.hex()[:12] in result.stderr and pack in result.stderr
        restored = read_tree(where)
        assert restored[b"conf/server.xml"] == read_tree(src)[b"conf/server.xml"]
        assert [name for name in os.listdir(os.path.join(where, "lib")) if name.startswith(".restore")] == []
    assert not os.path.exists(str(tmp_path / "fresh/lib/app.jar"))
    assert read_tree(target)[b"lib/app.jar"][-1] == b"the operator's own copy"


def test_a_damaged_file_list_is_named_not_a_traceback(agent, tmp_path):
    _backed_up(agent, tmp_path)
    repo = Repository.open(agent.repository)
    [snapshot] = repo.snapshots()
    _flip_byte_of_blob(agent.repository, bytes.fromhex(snapshot.tree[0]))
    result = agent.run("restore", "api:latest", "--target", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert snapshot.id[:12] in result.stderr and "cannot be read" in result.stderr


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs of this test's own, unmounted even when the test fails."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    where = tmp_path / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_target_stops_the_restore_with_one_clear_message(agent, tmp_path, small_filesystem):
    spec = {f"lib/part{i:02}.jar": os.urandom(300_000) for i in range(12)}
    _backed_up(agent, tmp_path, {**spec, "tomcat/bin/startup.sh": "#!/bin/sh\n"})
    result = agent.run("restore", "api:latest", "--target", str(small_filesystem / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("No space left on device") == 2, result.stderr  # the file, and why it stopped
    assert "restore stopped" in result.stderr
    leftovers = [name for _, _, names in os.walk(small_filesystem) for name in names if name.startswith(".restore")]
    assert leftovers == []



def _many_files(count: int) -> dict:
    """A release of `count` small class files in 40 directories, and the startup script."""
    spec = {f"tomcat/webapps/app/d{number % 40}/C{number}.class": f"class {number};" * (1 + number % 30)
            for number in range(count)}
    return {**spec, "tomcat/bin/startup.sh": "#!/bin/sh\n"}


def test_a_full_target_stops_a_restore_by_writer_processes_with_one_message(agent, tmp_path, small_filesystem):
    """Every writer process meets the full disk: the first to meet it halts the others, and the restore
    says once that it stopped, counting what all of them left out; no later name of a hard link is then
    written as a copy, no temp file stays."""
    from agent.restorer.fanout import FAN_OUT_FILES

    src = _backed_up(agent, tmp_path, _many_files(FAN_OUT_FILES + 200))
    os.link(os.path.join(src, "tomcat/webapps/app/d0/C0.class"), os.path.join(src, "tomcat/second-name"))
    agent.backup()
    result = agent.run("restore", "api:latest", "--target", str(small_filesystem / "out"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    stopped = [error for error in document["errors"] if error.startswith("restore stopped")]
    assert len(stopped) == 1 and "No space left on device" in stopped[0], document["errors"]
    failed = [error for error in document["errors"] if not error.startswith("restore stopped")]
    assert 1 <= len(failed) <= os.cpu_count() and all("No space left on device" in error for error in failed)
    written = sum(len(names) for _, _, names in os.walk(small_filesystem / "out"))
    left = int(stopped[0].split("; ")[1].split()[0])
    assert written + len(failed) + left == FAN_OUT_FILES + 200 + 2  # every file written, failed or counted
    leftovers = [name for _, _, names in os.walk(small_filesystem) for name in names if name.startswith(".restore")]
    assert leftovers == []


def test_restores_at_once_into_one_target_all_succeed_and_leave_no_temp_names(agent, tmp_path):
    """Each later name of a hard link may already be linked by the other restore when this one renames its
    own link onto it (rename(2) then does nothing): no temp name stays. Into a new target, a directory, a
    file or a symlink another restore made a moment ago is no error. (Directory times are the last
    restore's to finish: not compared.)"""
    from agent.restorer.fanout import FAN_OUT_FILES

    src = _backed_up(agent, tmp_path, _many_files(FAN_OUT_FILES + 200))
    for number in range(0, 3000, 100):
        os.link(os.path.join(src, f"tomcat/webapps/app/d{number % 40}/C{number}.class"),
                os.path.join(src, f"tomcat/link-{number}"))
    agent.backup()
    os.symlink("webapps/app", os.path.join(src, "tomcat/current"))
    agent.backup()
    out = str(tmp_path / "out")
    agent.run("restore", "api:latest", "--target", out)
    for target, runs, overwrite in ((out, 2, "always"), (str(tmp_path / "fresh"), 3, "if-changed")):
        # into an existing target; into a new one, whose directories, files and links the others make first
        restores = [subprocess.Popen([*agent_command(), "--config", agent.config, "restore", "api:latest",
                                      "--target", target, "--overwrite", overwrite],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    for _ in range(runs)]
        for restore in restores:
            _, err = restore.communicate(timeout=300)
            assert restore.returncode == 0 and "Traceback" not in err, (target, err)
        leftovers = [name for _, _, names in os.walk(target) for name in names if name.startswith(".restore")]
        assert leftovers == []
        assert {path: what for path, what in read_tree(target).items() if what[0] != "dir"} == \
            {path: what for path, what in read_tree(src).items() if what[0] != "dir"}

    agent.write_jobs('[jobs.cmd]\ntype = "command"\nargv = ["echo", "hello"]\nevery = "24h"\n')
    agent.backup()
    existing = tmp_path / "a-file"
    existing.write_text("keep")
    result = agent.run("restore", "cmd:latest", "--target", str(existing / "below.sql"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(existing) in result.stderr
    assert existing.read_text() == "keep"
    agent.run("restore", "cmd:latest", "--target", str(tmp_path / "dumps" / "out.txt"), check=0)
    assert (tmp_path / "dumps" / "out.txt").read_text() == "hello\n"
    for option in (["--overwrite", "always"], ["--delete"], ["--dry-run"], ["some/path"]):
        refused = agent.run("restore", "cmd:latest", "--target", str(tmp_path / "dumps" / "out.txt"), *option)
        assert refused.returncode == 2 and "for file trees" in refused.stderr and "--force" in refused.stderr


def test_a_path_longer_than_path_max_backs_up_and_restores(agent, tmp_path):
    src = str(tmp_path / "svc")
    deep = deep_path() + "/at-the-bottom.txt"
    assert len(deep) > os.pathconf("/", "PC_PATH_MAX")
    write_deep(src, deep, b"found")
    make_tree(src, {"conf/server.xml": "<Server/>"})
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup()
    assert report["status"] == "ok" and report["files"] == 2, report
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    assert read_deep(target, deep) == b"found"
    write_deep(target, deep, b"edited")
    write_deep(target, deep_path() + "/extra.txt", b"not in the snapshot")
    refused = agent.run("restore", "svc:latest", "--target", target)
    assert refused.returncode == 1 and "at-the-bottom.txt" in refused.stderr
    document = _restore_json(agent, "svc:latest", "--target", target, "--overwrite", "if-changed", "--delete")
    assert (document["replaced"], document["deleted"], document["errors"]) == (1, 1, []), document
    assert read_deep(target, deep) == b"found"


def _posix_acl(user: int) -> bytes:
    """A POSIX access ACL in the kernel's xattr form (what setfacl writes): owner rw, USER r, group r,
    mask r, other none."""
    none = 0xFFFFFFFF
    entries = ((0x01, 6, none), (0x02, 4, user), (0x04, 4, none), (0x10, 4, none), (0x20, 0, none))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def test_extended_attributes_acls_and_hard_links_round_trip(shared_tmp):
    tmp_path = shared_tmp
    agent = new_agent(str(tmp_path / "agent"))
    src = tmp_path / "svc"
    big = os.urandom(1 << 20)
    make_tree(str(src), {"lib/app.jar": big, "conf/app.xml": "<app/>", "conf/d/": None})
    os.link(src / "lib/app.jar", src / "lib/app-current.jar")
    os.link(src / "lib/app.jar", src / "conf/app.jar")
    try:
        os.setxattr(src / "conf/app.xml", "user.origin", b"release 42")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    os.setxattr(src / "conf/app.xml", "system.posix_acl_access", _posix_acl(4242))
    os.setxattr(src / "conf/d", "user.dir", b"\x00\xff binary")
    os.setxattr(src / "lib/app.jar", "trusted.only-root", b"t")
    agent.write_jobs(fs_job("svc", str(src)))
    [report] = agent.backup()
    assert report["status"] == "ok", report
    target = tmp_path / "out"
    agent.run("restore", "svc:latest", "--target", str(target), check=0)

    names = [target / "lib/app.jar", target / "lib/app-current.jar", target / "conf/app.jar"]
    inodes = {(os.stat(name).st_dev, os.stat(name).st_ino) for name in names}
    assert len(inodes) == 1 and os.stat(names[0]).st_nlink == 3 and names[2].read_bytes() == big
    blocks = {(st.st_dev, st.st_ino): st.st_blocks for st in map(os.lstat, target.rglob("*"))}
    assert sum(blocks.values()) * 512 < 1.2 * (1 << 20)  # 1 MB on disk, not 3
    assert os.getxattr(target / "conf/app.xml", "user.origin") == b"release 42"
    assert os.getxattr(target / "conf/app.xml", "system.posix_acl_access") == _posix_acl(4242)
    assert os.getxattr(target / "conf/d", "user.dir") == b"\x00\xff binary"
    assert os.getxattr(target / "lib/app.jar", "trusted.only-root") == b"t"
    again = _restore_json(agent, "svc:latest", "--target", str(target))
    assert (again["created"], again["replaced"], again["conflict_count"]) == (0, 0, 0)

    if os.geteuid() == 0:  # a user that may not set trusted.*: a warning naming the file, run ok
        user = nobody_can_use(tmp_path)
        result = agent.run("restore", "svc:latest", "--target", str(tmp_path / "as-nobody"), user=user)
        assert result.returncode == 0, result.stderr
        [warning] = [line for line in result.stderr.splitlines() if "warning:" in line]
        assert "app.jar: extended attribute trusted.only-root not restored" in warning
        assert os.getxattr(tmp_path / "as-nobody/conf/app.xml", "user.origin") == b"release 42"


def test_riak_paths_absolute_and_delete_only_within_the_jobs_paths(agent, tmp_path):
    data = str(tmp_path / "var/lib/riak")
    make_tree(data, {"ring/riak_core_ring": "ring", "bitcask/0/1.data": "b"})
    agent.write_jobs(f'[jobs.db-riak]\ntype = "riak"\nevery = "4h"\npaths = ["{data}"]\n')
    agent.backup("db-riak")
    target = tmp_path / "restored"
    inside = target / data.lstrip("/")
    agent.run("restore", "db-riak:latest", "--target", str(target), os.path.join(data, "ring"), check=0)
    assert set(read_tree(str(inside))) == {b"ring", b"ring/riak_core_ring"}
    make_tree(str(target), {"home/operator/notes.txt": "not riak's", f"{data.lstrip('/')}/stale.tmp": "x"})
    document = _restore_json(agent, "db-riak:latest", "--target", str(target), "--overwrite", "if-changed",
                             "--delete")
    assert document["deleted"] == 1 and not (inside / "stale.tmp").exists()
    assert (target / "home/operator/notes.txt").read_text() == "not riak's"
    assert read_tree(str(inside)) == read_tree(data)


def test_restore_all_onto_a_full_disk_names_each_jobs_own_target(agent, tmp_path, small_filesystem):
    api, km = str(tmp_path / "api"), str(tmp_path / "km")
    make_tree(api, {f"lib/a{number}.jar": os.urandom(200_000) for number in range(8)})
    make_tree(km, {f"lib/k{number}.jar": os.urandom(200_000) for number in range(8)})
    agent.write_jobs(fs_job("api", api) + fs_job("km", km))
    agent.backup()
    target = str(small_filesystem / "out")
    result = agent.run("restore", "--all", "--target", target, "--json")
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for job in ("api", "km"):
        stopped = [error for error in documents[job]["errors"] if error.startswith("restore stopped")]
        assert len(stopped) == 1 and f"No space left on device in {target}/{job};" in stopped[0], stopped
