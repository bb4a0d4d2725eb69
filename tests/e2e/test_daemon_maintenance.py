"""The daemon's maintenance lane with the real `backup-agent run`: drills and prunes on their schedule
(short intervals), reported to a real collector; what killed runs leave behind is pruned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Set

import pytest

from tests.e2e.test_daemon import Daemon, wait_for
from tests.e2e.test_encryption import encrypt, generate_identity
from tests.fixtures.collector import make_token
from tests.helpers import agent_command, fs_job, make_tree, new_agent, process_state, wait_for_child


def configure(agent, collector, tmp_path, extra: str = "") -> None:
    token_file = str(tmp_path / "token")
    with open(token_file, "w") as handle:
        handle.write(make_token(collector.tokens_file, "test-node"))
    os.chmod(token_file, 0o600)
    with open(agent.config, "a") as handle:
        handle.write(f'{extra}\n[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n'
                     f'[collector]\nurl = "{collector.url}"\ntoken_file = "{token_file}"\nmax_backoff = "1s"\n')


def repository_bytes(agent) -> int:
    total = 0
    for root, _dirs, files in os.walk(os.path.join(agent.repository, "data")):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def test_the_daemon_drills_and_prunes_on_schedule_and_the_collector_shows_it(agent, start_collector, tmp_path):
    collector = start_collector()
    configure(agent, collector, tmp_path, 'drill_every = "2s"\nprune_every = "3s"')
    tree = str(tmp_path / "svc")
    make_tree(tree, {"conf/a.xml": "<a/>", "lib/big.jar": os.urandom(2_000_000)})
    agent.write_jobs(fs_job("svc", tree))
    agent.backup("svc")
    with open(os.path.join(tree, "lib/big.jar"), "wb") as handle:  # the first snapshot's data becomes garbage
        handle.write(os.urandom(2_000_000))
    agent.backup("svc")
    before = repository_bytes(agent)
    daemon = Daemon(agent).start()
    try:
        reports = wait_for(lambda: (lambda rows: rows if {"drill", "prune"} <= {r["trigger"] for r in rows}
                                    and sum(r["trigger"] == "drill" for r in rows) >= 2 else None)(
            collector.reports("test-node")), timeout=60)
    finally:
        assert daemon.stop() == 0
    drills = [row for row in reports if row["trigger"] == "drill"]
    assert all(row["status"] == "ok" and row["job"] == "svc" for row in drills), drills
    assert drills[0]["snapshot"] == agent.snapshots("svc")[-1]["id"]
    [prune] = [row for row in reports if row["trigger"] == "prune"][-1:]
    assert prune["status"] == "ok" and prune["job"] == "repository" and prune["type"] == "repository"
    assert prune["repository_bytes_before"] >= before > prune["repository_bytes_after"]
    assert len(agent.snapshots("svc")) == 1 and repository_bytes(agent) == prune["repository_bytes_after"]
    [row] = collector.get("/api/v1/status").json()["jobs"]
    assert row["drill_state"] == "ok" and row["state"] == "ok" and row["last_trigger"] == "manual"
    assert "drill of svc started" in daemon.text() and "prune ok" in daemon.text()
    assert os.listdir(os.path.join(agent.state_dir, "drill")) == []


def _packs(agent) -> Set[str]:
    return {name for _root, _dirs, files in os.walk(os.path.join(agent.repository, "data")) for name in files}


# a dump that streams 20 MB (a pack is sealed at 16 MiB) and then hangs: its backup can never commit
_HANGING_DUMP = ('[jobs.export]\ntype = "command"\nevery = "24h"\n'
                 'argv = ["sh", "-c", "head -c 20000000 /dev/urandom; exec sleep 600"]\n')


def test_killed_backups_leave_nothing_that_outlives_the_next_prune(agent, start_collector, tmp_path):
    collector = start_collector()
    configure(agent, collector, tmp_path, 'prune_every = "1h"\ndrill_every = "1w"')
    tree = str(tmp_path / "svc")
    make_tree(tree, {f"d{n}/f{i}": os.urandom(60_000) for n in range(10) for i in range(20)})
    agent.write_jobs(fs_job("svc", tree) + _HANGING_DUMP)
    agent.backup("svc")
    clean = repository_bytes(agent)
    for _round in range(4):  # each backup killed once its first pack is stored, before it can commit
        before = _packs(agent)
        proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "export"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dump = None
        try:
            dump = wait_for_child(proc.pid, ["sh", "sleep"])
            wait_for(lambda p=proc, b=before: _packs(agent) - b or p.poll() is not None, timeout=120,
                     interval=0.01)
            assert proc.poll() is None, "the backup ended before it was killed"
        finally:
            proc.kill()
            proc.wait()
            if dump is not None:  # the dump runs in a session of its own: it outlives the killed backup
                os.killpg(dump, signal.SIGKILL)
    grown = repository_bytes(agent)
    assert grown >= clean + 4 * 16 * 2 ** 20  # every round left a pack no snapshot names
    assert [snap["job"] for snap in agent.snapshots()] == ["svc"]
    # one prune, due at once (the last was an hour ago); the next is an hour off, so none overlaps the
    # daemon's stop; the hanging dump is left out of the daemon's configuration
    agent.write_jobs(fs_job("svc", tree))
    with open(os.path.join(agent.state_dir, "maintenance.json"), "w") as handle:
        json.dump({"drills": {}, "prune": {"last": time.time() - 3600}}, handle)
    daemon = Daemon(agent).start()
    try:
        [prune] = wait_for(lambda: [r for r in collector.reports("test-node") if r["trigger"] == "prune"],
                           timeout=120)
    finally:
        assert daemon.stop() == 0
    assert prune["status"] == "ok", prune
    assert daemon.text().count("prune started") == 1
    assert prune["repository_bytes_before"] >= grown > prune["repository_bytes_after"]
    # bounded: no more than a fresh repository holding the one snapshot retention keeps
    fresh = new_agent(str(tmp_path / "fresh"))
    fresh.write_jobs(fs_job("svc", tree))
    fresh.backup("svc")
    after = repository_bytes(agent)
    assert after == prune["repository_bytes_after"] and after <= repository_bytes(fresh) * 1.1, \
        (clean, grown, after, repository_bytes(fresh))
    assert os.listdir(os.path.join(agent.repository, "tmp")) == []
    agent.run("verify", "--read-data", check=0)
    assert len(agent.snapshots()) == 1


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_failed_backup_removes_what_it_wrote(agent, tmp_path, encrypted):
    if encrypted:  # the clean-up opens the repository as the run did: with its encryption settings
        encrypt(agent, [generate_identity(agent, str(tmp_path / "operator" / "identity"))])
    tree = str(tmp_path / "svc")
    make_tree(tree, {"a": os.urandom(100_000)})
    # a dump that streams 3 MB into the repository and then fails: no snapshot, and its blobs are garbage
    agent.write_jobs(fs_job("svc", tree) + '[jobs.export]\ntype = "command"\nevery = "24h"\n'
                     'argv = ["sh", "-c", "head -c 40000000 /dev/urandom; exit 3"]\n')
    agent.backup("svc")
    clean = repository_bytes(agent)
    for _ in range(3):
        [report] = agent.backup("export", expect=1)
        assert report["status"] == "failed" and report["snapshot"] is None and report["bytes"] > 30_000_000
        assert repository_bytes(agent) == clean  # gone with the failed run, not at the next prune
    agent.run("verify", "--read-data", check=0)
    [report] = agent.backup("svc")
    assert report["status"] == "ok"


def _stored(repository: str) -> Set[str]:
    """The packs, data keys and snapshot documents of a repository (what a failed run may leave)."""
    return {os.path.relpath(os.path.join(root, name), repository)
            for kind in ("data", "packkeys", "snapshots")
            for root, _dirs, files in os.walk(os.path.join(repository, kind)) for name in files}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_backup_that_fills_the_repositorys_disk_removes_what_it_wrote(agent, tmpfs, tmp_path, encrypted):
    """The repository on a 40 MB filesystem: a dump and a tree of 60 MB each fail with the disk full, name
    the repository's path, report what they read and stored before it, and leave nothing behind."""
    repository = os.path.join(tmpfs("40m"), "repo")
    with open(agent.config) as handle:
        text = handle.read().replace(f'repository = "{agent.repository}"', f'repository = "{repository}"')
    with open(agent.config, "w") as handle:
        handle.write(text)
    agent.repository = repository
    if encrypted:
        encrypt(agent, [generate_identity(agent, str(tmp_path / "operator" / "identity"))])
    small, big = str(tmp_path / "small"), str(tmp_path / "big")
    make_tree(small, {"a": os.urandom(100_000)})
    make_tree(big, {f"f{n}": os.urandom(10_000_000) for n in range(6)})
    agent.write_jobs(fs_job("small", small) + fs_job("bigtree", big) + '[jobs.bigdump]\ntype = "command"\n'
                     'every = "24h"\nargv = ["head", "-c", "60000000", "/dev/urandom"]\n')
    agent.backup("small")
    clean = _stored(repository)
    for job in ("bigdump", "bigtree", "bigdump"):
        [report] = agent.backup(job, expect=1)
        assert report["status"] == "failed" and report["snapshot"] is None, report
        assert report["errors"] and all(error.startswith(repository + "/") and
                                        error.endswith("No space left on device") for error in report["errors"])
        if job == "bigdump":  # what it read and stored before the disk was full: two packs at least
            assert report["bytes"] >= report["new_bytes"] > 2 * 16 * 2 ** 20, json.dumps(report)
        assert _stored(repository) == clean, job  # gone with the failed run, not at the next prune
        assert os.listdir(os.path.join(repository, "tmp")) == []
    agent.run("verify", "--read-data", check=0)
    assert "0 packs deleted" in agent.run("prune", check=0).stdout
    [report] = agent.backup("small")
    assert report["status"] == "ok"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_backup_stopped_by_a_signal_cleans_up_reports_and_exits_1(agent, tmp_path, number):
    """`backup export svc` stopped while its dump streams (a pack stored): the dump is killed, its packs
    are gone at once, a failed report is spooled, svc is not run, the exit status is 1 and the locks are
    free for the next backup."""
    tree = str(tmp_path / "svc")
    make_tree(tree, {"a": os.urandom(100_000)})
    agent.write_jobs(fs_job("svc", tree) + _HANGING_DUMP)
    agent.backup("svc")
    clean, packs = _stored(agent.repository), _packs(agent)
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "export", "svc", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dump = None
    try:
        dump = wait_for_child(proc.pid, ["sh", "sleep"])
        wait_for(lambda: _packs(agent) - packs or proc.poll() is not None, timeout=120, interval=0.01)
        assert proc.poll() is None, "the backup ended before it was stopped"
        proc.send_signal(number)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if dump is not None and process_state(dump) not in ("", "Z"):
            os.killpg(dump, signal.SIGKILL)
    assert proc.returncode == 1, (proc.returncode, out, err)
    [report] = json.loads(out)
    assert report["job"] == "export" and report["status"] == "failed" and report["snapshot"] is None, report
    assert "1 job not run: svc" in err, err
    wait_for(lambda: process_state(dump) in ("", "Z"))  # the dump tool went with the run
    assert _stored(agent.repository) == clean  # removed at once, not at the next prune
    pending = json.loads(agent.run("reports", "--json", check=0).stdout)
    assert report["id"] in json.dumps(pending), pending
    again = agent.run("backup", "svc", "--json", check=0, timeout=60)
    assert "waiting" not in again.stderr and json.loads(again.stdout)[0]["status"] == "ok"
