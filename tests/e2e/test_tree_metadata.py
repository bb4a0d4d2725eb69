"""What a tree holds beyond bytes (extended attributes, POSIX ACLs, SELinux labels, hard links), a job
whose path is a symlink, and the shipped Tomcat policy on a real-shaped Tomcat tree: with the real
`backup-agent` command, the manifest read back from the repository."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import sys
import time
from typing import Dict

import pytest

from agent.snapshot.changes import ChangeSet
from agent.store import Repository
from agent.store.manifest import Entry
from agent.store.tree import read_tree
from tests.e2e.tree_runner import Runner
from tests.helpers import Link, fs_job, make_tree

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

@pytest.fixture
def runner(tmp_path):
    runner = Runner(tmp_path)
    yield runner
    runner.close()


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def manifest(agent, job: str = "svc") -> Dict[str, Entry]:
    repo = Repository.open(agent.repository)
    try:
        return {entry.path: entry for entry in read_tree(repo, repo.find_snapshot(f"{job}:latest").tree)}
    finally:
        repo.close()


def _acl(named_uid: int) -> bytes:
    """A POSIX access ACL in the kernel's xattr form (what setfacl writes): u::rw-, u:UID:r--, g::r--,
    m::r--, o::---."""
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, named_uid), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries)


def _label(path: str, value: bytes) -> bool:
    try:
        os.setxattr(path, "security.selinux", value, follow_symlinks=False)
        return True
    except OSError as exc:  # not root, or a kernel whose LSM refuses the label
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EINVAL):
            return False
        raise


def test_xattrs_acls_and_labels_are_recorded_restored_and_a_change_of_one_is_a_change(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>", "conf/plain.xml": "p", "webapps/": None,
                    "current": Link("conf/server.xml")})
    server, webapps = os.path.join(src, "conf/server.xml"), os.path.join(src, "webapps")
    os.setxattr(server, "user.checksum", b"\x00\xffbinary")
    os.setxattr(server, "system.posix_acl_access", _acl(4321))
    os.setxattr(webapps, "user.origin", b"deploy-42")
    os.setxattr(webapps, "system.posix_acl_default", _acl(4321))
    labelled = _label(server, b"system_u:object_r:httpd_sys_content_t:s0\0")
    agent.write_jobs(fs_job("svc", src))
    [first] = agent.backup("svc")
    assert first["status"] == "ok"
    entries = manifest(agent)
    xattrs = dict(entries["conf/server.xml"].xattrs)
    assert xattrs["user.checksum"] == b"\x00\xffbinary" and xattrs["system.posix_acl_access"] == _acl(4321)
    if labelled:
        assert xattrs["security.selinux"] == b"system_u:object_r:httpd_sys_content_t:s0\0"
    assert dict(entries["webapps"].xattrs) == {"user.origin": b"deploy-42", "system.posix_acl_default": _acl(4321)}
    assert entries["conf/plain.xml"].xattrs == ()

    # only an xattr changes: that is a change, and a new snapshot
    os.setxattr(server, "user.checksum", b"other")
    [second] = agent.backup("svc")
    assert second["changed"] is True and len(agent.snapshots()) == 2
    assert dict(manifest(agent)["conf/server.xml"].xattrs)["user.checksum"] == b"other"
    time.sleep(2.2)  # out of the racy window: the next runs trust server.xml's stat (kept from the cache)
    agent.backup("svc")
    [same] = agent.backup("svc")
    assert same["changed"] is False
    # a change elsewhere: the kept file's manifest line (from the files cache) still has its xattrs
    with open(os.path.join(src, "conf/plain.xml"), "a") as handle:
        handle.write("more")
    [third] = agent.backup("svc")
    assert third["changed"] is True
    assert dict(manifest(agent)["conf/server.xml"].xattrs)["user.checksum"] == b"other"
    os.removexattr(webapps, "user.origin")  # a directory's xattr alone
    [fourth] = agent.backup("svc")
    assert fourth["changed"] is True and "user.origin" not in dict(manifest(agent)["webapps"].xattrs)

    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    restored = os.path.join(target, "conf/server.xml")
    assert os.getxattr(restored, "user.checksum") == b"other"
    assert os.getxattr(restored, "system.posix_acl_access") == _acl(4321)
    assert os.getxattr(os.path.join(target, "webapps"), "system.posix_acl_default") == _acl(4321)


def test_hard_links_are_one_inode_with_every_name(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"lib/big.jar": os.urandom(1024 * 1024), "lib/solo.jar": "solo"})
    os.link(os.path.join(src, "lib/big.jar"), os.path.join(src, "lib/alias.jar"))
    os.makedirs(os.path.join(src, "webapps"))
    os.link(os.path.join(src, "lib/big.jar"), os.path.join(src, "webapps/big.jar"))
    agent.write_jobs(fs_job("svc", src))
    [report] = agent.backup("svc")
    assert report["status"] == "ok" and report["new_bytes"] < 1024 * 1024 + 100
    entries = manifest(agent)
    # the first name in manifest order is the one the others name
    assert entries["lib/alias.jar"].hardlink == ""
    assert entries["lib/big.jar"].hardlink == "lib/alias.jar"
    assert entries["webapps/big.jar"].hardlink == "lib/alias.jar"
    assert entries["lib/solo.jar"].hardlink == ""
    assert entries["lib/big.jar"].chunks == entries["lib/alias.jar"].chunks  # every name keeps its content
    [same] = agent.backup("svc")
    assert same["changed"] is False
    os.unlink(os.path.join(src, "lib/alias.jar"))  # the first name goes: the next one leads
    [changed] = agent.backup("svc")
    assert changed["changed"] is True
    entries = manifest(agent)
    assert entries["lib/big.jar"].hardlink == "" and entries["webapps/big.jar"].hardlink == "lib/big.jar"
    time.sleep(2.2)  # out of the racy window: the linked names are kept from the cache from now on
    agent.backup("svc")
    with open(os.path.join(src, "lib/solo.jar"), "a") as handle:
        handle.write("more")
    [other] = agent.backup("svc")
    assert other["changed"] is True and manifest(agent)["webapps/big.jar"].hardlink == "lib/big.jar"
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    first, second = os.stat(os.path.join(target, "lib/big.jar")), os.stat(os.path.join(target, "webapps/big.jar"))
    assert first.st_ino == second.st_ino and first.st_nlink == 2


def test_an_incremental_run_that_meets_hard_links_walks_the_whole_tree(runner, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a.txt": "a", "b.txt": "b"})
    runner.backup(src)
    os.link(os.path.join(src, "a.txt"), os.path.join(src, "z.txt"))  # a new name of an existing file
    result, entries = runner.backup(src, ChangeSet(paths=frozenset({os.path.join(src, "z.txt")})), trigger="change")
    assert not result.incremental and entries["z.txt"].hardlink == "a.txt"
    with open(os.path.join(src, "b.txt"), "a") as handle:
        handle.write("more")
    # the previous snapshot has hard links: a full walk again, and they are kept
    result, entries = runner.backup(src, ChangeSet(paths=frozenset({os.path.join(src, "b.txt")})), trigger="change")
    assert not result.incremental and entries["z.txt"].hardlink == "a.txt"


def test_a_job_path_that_is_a_symlink_backs_up_the_directory_it_points_to(agent, tmp_path):
    """The deploy layout `current -> releases/r42`: resolved once, at the top; links below stay links."""
    base = tmp_path / "svc"
    make_tree(str(base), {"releases/r42/conf/server.xml": "r42", "releases/r42/shared": Link("../../shared"),
                          "releases/r43/conf/server.xml": "r43", "shared/x": "x"})
    current = os.path.join(str(base), "current")
    os.symlink("releases/r42", current)
    agent.write_jobs(fs_job("svc", current))
    agent.run("check-config", check=0)
    [report] = agent.backup("svc")
    assert report["status"] == "ok" and report["files"] == 1
    entries = manifest(agent)
    assert sorted(entries) == [".", "conf", "conf/server.xml", "shared"]
    assert entries["shared"].type == "symlink"
    os.unlink(current)
    os.symlink("releases/r43", current)  # the next deployment
    [report] = agent.backup("svc")
    assert report["changed"] is True
    target = str(tmp_path / "out")
    agent.run("restore", "svc:latest", "--target", target, check=0)
    with open(os.path.join(target, "conf/server.xml")) as handle:
        assert handle.read() == "r43"


def _shipped_excludes() -> list:
    with open(os.path.join(REPO_ROOT, "conf.d", "services.toml"), "rb") as handle:
        jobs = tomllib.load(handle)["jobs"]
    [excludes] = {tuple(job["exclude"]) for job in jobs.values()}  # one policy for every service
    return list(excludes)


@pytest.mark.parametrize("layout", ["", "tomcat/"])  # CATALINA_BASE: the job's path, or its tomcat/
def test_the_shipped_tomcat_policy_keeps_application_files_and_empty_log_dirs(agent, tmp_path, layout):
    src = str(tmp_path / "api")
    base = os.path.join(src, layout)
    make_tree(base, {
        "bin/catalina.sh": "#!/bin/sh\n", "conf/server.xml": "<Server/>", "conf/logging.properties": "x",
        "lib/catalina.jar": os.urandom(5000),
        "logs/catalina.out": "SECRET-LOG", "logs/catalina.2026-11-29.log": "SECRET-LOG",
        "logs/localhost_access_log.2026-11-29.txt": "SECRET-LOG", "logs/manager.2026-11-29.log.gz": "SECRET-LOG",
        "temp/upload-123.tmp": "SECRET-LOG", "work/Catalina/localhost/ROOT/org/apache/jsp/index_jsp.class": "SECRET",
        # application files whose names look like logs: they must be kept
        "webapps/ROOT/static/gdb/check.log.gz": "app data", "webapps/ROOT/WEB-INF/classes/report.out": "app data",
        "webapps/ROOT/WEB-INF/logs/readme.txt": "app data", "webapps/ROOT/help/catalina.out.html": "app data",
        "webapps/ROOT/errors.log": "app data",
    })
    for name, mode, owner in (("logs", 0o750, 4321), ("temp", 0o700, 4322), ("work", 0o755, 4323)):
        os.chmod(os.path.join(base, name), mode)
        os.chown(os.path.join(base, name), owner, owner)
    agent.write_jobs(fs_job("services-api", src, _shipped_excludes()))
    [report] = agent.backup("services-api")
    assert report["status"] == "ok" and report["warnings"] == []
    target = str(tmp_path / "out")
    agent.run("restore", "services-api:latest", "--target", target, check=0)
    for name in ("static/gdb/check.log.gz", "WEB-INF/classes/report.out", "WEB-INF/logs/readme.txt",
                 "help/catalina.out.html", "errors.log"):
        with open(os.path.join(target, layout, "webapps/ROOT", name)) as handle:
            assert handle.read() == "app data"
    for name, mode, owner in (("logs", 0o750, 4321), ("temp", 0o700, 4322), ("work", 0o755, 4323)):
        path = os.path.join(target, layout, name)
        st = os.stat(path)
        assert os.listdir(path) == [] and (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, owner, owner)
    for directory, _, files in os.walk(agent.repository):
        for file in files:
            with open(os.path.join(directory, file), "rb") as handle:
                assert b"SECRET" not in handle.read()
    shutil.rmtree(target)


def test_a_change_triggered_run_sees_a_change_of_only_an_xattr(runner, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>", "webapps/ROOT/index.html": "hi"})

    def run(*paths):
        return runner.backup(src, ChangeSet(paths=frozenset(os.path.join(src, path) for path in paths)),
                             trigger="change")

    run("conf/server.xml")
    os.setxattr(os.path.join(src, "conf/server.xml"), "user.deployed-by", b"ops")
    result, entries = run("conf/server.xml")
    assert result.incremental and result.changed
    assert entries["conf/server.xml"].xattrs == (("user.deployed-by", b"ops"),)
    os.setxattr(os.path.join(src, "webapps"), "system.posix_acl_default", _acl(1000))
    result, entries = run("webapps")  # a directory's own event: only its own entry is read again
    assert result.incremental and result.changed
    assert entries["webapps"].xattrs == (("system.posix_acl_default", _acl(1000)),)
    assert entries["conf/server.xml"].xattrs == (("user.deployed-by", b"ops"),)
