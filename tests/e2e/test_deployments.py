"""Snapshots as deployments, through the real command: `ls`, `diff`, `find`, `forget`, `JOB:latest~N`,
partial snapshots and change counts in `snapshots`, and what a change-triggered backup reports."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time

import pytest

from tests.e2e.test_backup_fs import _unprivileged
from tests.e2e.test_daemon import QUIET, daemon, wait_for, watched_job  # noqa: F401 - daemon is a fixture
from tests.helpers import Agent, Link, fs_job, make_tree


def _deployment(agent, src: str) -> None:
    """Two snapshots of job svc: before and after a deployment that touches every kind of change."""
    make_tree(src, {"conf/server.xml": "<Server/>", "conf/context.xml": "<Context/>", "lib/app.jar": b"v1" * 100,
                    "webapps/ROOT/index.html": "hello", "bin/run.sh": "#!/bin/sh\n", "current": Link("lib"),
                    "old.txt": "going", "kind": "a file"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup("svc")
    with open(os.path.join(src, "lib/app.jar"), "wb") as handle:  # content
        handle.write(b"v2" * 100)
    os.chmod(os.path.join(src, "bin/run.sh"), 0o755)  # mode
    os.remove(os.path.join(src, "current"))
    os.symlink("webapps", os.path.join(src, "current"))  # link target
    os.remove(os.path.join(src, "old.txt"))  # removed
    os.remove(os.path.join(src, "kind"))
    os.mkdir(os.path.join(src, "kind"))  # type: a file became a directory
    make_tree(src, {"webapps/api/WEB-INF/web.xml": "<web-app/>"})  # added, beneath an existing directory
    later = time.time() + 60
    os.utime(os.path.join(src, "conf/context.xml"), (later, later))  # a timestamp alone
    if os.geteuid() == 0:
        os.chown(os.path.join(src, "conf/server.xml"), 4321, 4321)  # owner
    agent.backup("svc")


def test_diff_names_what_a_deployment_changed_and_nothing_else(agent, tmp_path):
    src = str(tmp_path / "svc")
    _deployment(agent, src)
    result = json.loads(agent.run("diff", "svc:latest~1", "svc:latest", "--json", check=0).stdout)
    owner = [{"path": "conf/server.xml", "what": ["owner"]}] if os.geteuid() == 0 else []
    assert result == {
        "added": ["webapps/api", "webapps/api/WEB-INF", "webapps/api/WEB-INF/web.xml"],
        "removed": ["old.txt"],
        "changed": [{"path": "bin/run.sh", "what": ["mode"]}, *owner,
                    {"path": "current", "what": ["link target"]}, {"path": "kind", "what": ["type"]},
                    {"path": "lib/app.jar", "what": ["content"]}],
    }
    # PATH narrows to a subtree, given relative or absolute; the same two snapshots by id prefix
    ids = [row["id"] for row in agent.snapshots("svc")]
    under = json.loads(agent.run("diff", ids[0][:10], ids[1][:10], os.path.join(src, "webapps"), "--json",
                                 check=0).stdout)
    assert under == {"added": ["webapps/api", "webapps/api/WEB-INF", "webapps/api/WEB-INF/web.xml"],
                     "removed": [], "changed": []}
    text = agent.run("diff", "svc:latest~1", "svc:latest", "lib", check=0).stdout
    assert "M    lib/app.jar  (content)" in text and "0 added, 0 removed, 1 changed" in text
    assert "bin/run.sh" not in text


def test_ls_lists_a_snapshot_recursively_under_a_path(agent, tmp_path):
    src = str(tmp_path / "svc")
    _deployment(agent, src)
    rows = json.loads(agent.run("ls", "svc:latest", "webapps", "--json", check=0).stdout)
    assert [row["path"] for row in rows] == ["webapps", "webapps/ROOT", "webapps/ROOT/index.html", "webapps/api",
                                             "webapps/api/WEB-INF", "webapps/api/WEB-INF/web.xml"]
    index = rows[2]
    st = os.lstat(os.path.join(src, "webapps/ROOT/index.html"))
    assert (index["type"], index["mode"], index["uid"], index["gid"], index["size"], index["target"]) == \
        ("file", f"{st.st_mode & 0o7777:04o}", st.st_uid, st.st_gid, 5, None)
    assert index["mtime"].startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime)))
    old = json.loads(agent.run("ls", "svc:latest~1", "--json", check=0).stdout)
    assert {row["path"]: row["target"] for row in old if row["type"] == "symlink"} == {"current": "lib"}
    text = agent.run("ls", "svc:latest", "current", check=0).stdout
    assert text.startswith("lrwxrwxrwx") and text.rstrip().endswith("current -> webapps")
    missing = agent.run("ls", "svc:latest", "no/such")
    assert missing.returncode == 2 and "no/such: not in snapshot" in missing.stderr
    outside = agent.run("ls", "svc:latest", "/etc")
    assert outside.returncode == 2 and "not under the job's path" in outside.stderr


def test_find_shows_each_snapshot_holding_a_matching_path(agent, tmp_path):
    src = str(tmp_path / "svc")
    _deployment(agent, src)
    make_tree(str(tmp_path / "other"), {"deep/er/app.jar": "x"})
    agent.write_jobs(fs_job("svc", src) + fs_job("other", str(tmp_path / "other")))
    agent.backup("other")
    ids = [row["id"] for row in agent.snapshots("svc")]
    rows = json.loads(agent.run("find", "*.jar", "--json", check=0).stdout)
    assert [(row["job"], row["path"], row["size"]) for row in rows] == \
        [("svc", "lib/app.jar", 200), ("svc", "lib/app.jar", 200), ("other", "deep/er/app.jar", 1)]
    assert [row["snapshot"] for row in rows[:2]] == ids
    assert all(row["mtime"].endswith("Z") for row in rows)
    only = json.loads(agent.run("find", "*.jar", "--job", "other", "--json", check=0).stdout)
    assert [row["path"] for row in only] == ["deep/er/app.jar"]
    anchored = json.loads(agent.run("find", "webapps/*/WEB-INF", "--json", check=0).stdout)
    assert [(row["snapshot"], row["path"]) for row in anchored] == [(ids[1], "webapps/api/WEB-INF")]
    absolute = json.loads(agent.run("find", f"{src}/conf/*.xml", "--json", check=0).stdout)
    assert [row["path"] for row in absolute] == ["conf/context.xml", "conf/server.xml"] * 2
    text = agent.run("find", "old.txt", check=0).stdout
    assert ids[0][:12] in text and ids[1][:12] not in text and "1 match in 1 snapshot" in text
    assert agent.run("find", "*.jar", "--job", "nope").stderr == \
        "backup-agent: error: unknown job 'nope' (known: svc, other)\n"


def test_forget_removes_snapshots_and_prune_then_deletes_their_data(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"big.bin": os.urandom(300_000)})
    agent.write_jobs(fs_job("svc", src))
    first = agent.backup("svc")[0]["snapshot"]
    make_tree(src, {"big.bin": os.urandom(300_000)})
    second = agent.backup("svc")[0]["snapshot"]
    make_tree(src, {"small": "x"})
    third = agent.backup("svc")[0]["snapshot"]
    gone = agent.run("forget", "svc:latest~1", first[:12], check=0)
    assert f"forgot {first[:12]}" in gone.stdout and f"forgot {second[:12]}" in gone.stdout
    assert [row["id"] for row in agent.snapshots()] == [third]
    bad = agent.run("forget", third, "0000notthere")  # every SNAPSHOT is resolved before any is removed
    assert bad.returncode == 2 and [row["id"] for row in agent.snapshots()] == [third]

    def stored() -> int:
        return sum(os.path.getsize(path) for path in glob.glob(os.path.join(agent.repository, "data", "*", "*")))

    before = stored()
    agent.run("prune", check=0)
    assert stored() < before - 250_000  # the first big.bin went with the prune
    agent.run("verify", "--read-data", check=0)


def test_snapshots_show_partial_ones():
    user = _unprivileged()
    # not under pytest's base temp dir: another pytest session may make that 0700 again at any moment
    base = tempfile.mkdtemp(prefix="backup-agent-partial-")
    try:
        os.chmod(base, 0o755)
        agent = Agent(base, os.path.join(base, "agent.toml"), os.path.join(base, "repo"), os.path.join(base, "state"))
        src = os.path.join(base, "svc")
        make_tree(src, {"ok.txt": "fine", "private.key": "no"})
        os.makedirs(os.path.join(base, "conf.d"))
        with open(agent.config, "w") as handle:
            handle.write(f'host = "n"\nrepository = "{agent.repository}"\nstate_dir = "{agent.state_dir}"\n')
        agent.write_jobs(fs_job("svc", src))
        os.chmod(os.path.join(src, "private.key"), 0o000)
        if user:
            for directory, dirs, files in os.walk(base):
                for name in dirs + files + [""]:
                    os.lchown(os.path.join(directory, name), 65534, 65534)
        agent.run("backup", "svc", check=1, user=user)
        os.chmod(os.path.join(src, "private.key"), 0o644)
        agent.run("backup", "svc", check=0, user=user)
        rows = agent.snapshots("svc")
        assert [row["partial"] for row in rows] == [True, False]
        lines = agent.run("snapshots", "svc", check=0).stdout.splitlines()
        assert lines[0].rstrip().endswith("partial") and "partial" not in lines[1]
    finally:
        shutil.rmtree(base)


def test_a_damaged_manifest_is_named_without_a_traceback(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src))
    snapshot = agent.backup("svc")[0]["snapshot"]
    path = os.path.join(agent.repository, "snapshots", snapshot + ".json")
    with open(path) as handle:
        document = json.load(handle)
    document["tree"] = ["ab" * 32]
    # a document is named by its SHA-256 (else it is damaged itself): this one is intact, its file list missing
    data = json.dumps(document).encode()
    os.remove(path)
    snapshot = hashlib.sha256(data).hexdigest()
    with open(os.path.join(agent.repository, "snapshots", snapshot + ".json"), "wb") as handle:
        handle.write(data)
    for argv in (["ls", snapshot], ["diff", snapshot, snapshot], ["find", "a"]):
        result = agent.run(*argv)
        assert result.returncode == 1, (argv, result.stderr)
        assert result.stderr.startswith(f"backup-agent: error: snapshot {snapshot[:12]}"), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.timeout(120)
def test_a_change_triggered_backup_reports_and_records_what_changed(agent, daemon, tmp_path):  # noqa: F811
    from agent.report.spool import Spool

    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<Server/>", "webapps/ROOT/index.html": "v1", "old.txt": "x"})
    watched_job(agent, src)
    d = daemon()
    d.idle("svc", 1)
    for number in range(25):
        make_tree(src, {f"webapps/ROOT/static/{number:02}.js": "js"})
    os.remove(os.path.join(src, "old.txt"))
    with open(os.path.join(src, "conf/server.xml"), "w") as handle:
        handle.write("<Server port='8006'/>")
    wait_for(lambda: any(row["changes"] for row in agent.snapshots("svc")), timeout=60)
    time.sleep(QUIET * 3)
    d.stop()
    changed = [row for row in agent.snapshots("svc") if row["changes"]]
    assert sum(row["changes"]["added"] for row in changed) == 26  # static/ and its 25 files
    assert sum(row["changes"]["removed"] for row in changed) == 1
    assert sum(row["changes"]["changed"] for row in changed) == 1  # webapps/ROOT is not: beneath it only
    assert all(row["trigger"] == "change" for row in changed)
    spool = Spool(agent.state_dir)
    reports = [json.loads(spool.read(entry) or b"{}") for entry in spool.pending()]
    with_changes = [report for report in reports if report.get("changes")]
    assert [report["snapshot"] for report in with_changes] == [row["id"] for row in changed]
    first = with_changes[0]["changes"]
    assert len(first["paths"]) == min(20, first["added"] + first["removed"] + first["changed"])
    assert first["paths"] == sorted(first["paths"], key=lambda p: p.replace("/", "\0"))
    line = [line for line in agent.run("snapshots", "svc", check=0).stdout.splitlines() if changed[0]["id"][:12]
            in line][0]
    c = changed[0]["changes"]
    assert line.rstrip().endswith(f"+{c['added']} -{c['removed']} ~{c['changed']}")
    assert all("changes" not in report for report in reports if report["trigger"] != "change")
