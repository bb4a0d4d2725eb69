"""The repository on S3-compatible object storage, with the real command against a real S3 server on
loopback (rclone serve s3), through a fault-injecting proxy where the test needs faults or counts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, List, Optional, Set

from tests.fixtures.s3 import Faults, S3Proxy, S3Server, s3_location
from tests.helpers import Agent, agent_command, fs_job, make_tree, read_tree


def s3_agent(base: str, server: S3Server, proxy: Optional[S3Proxy] = None, host: str = "node-1",
             prefix: str = "", encryption: str = "disabled = true") -> Agent:
    """An agent configuration whose repository is a prefix of the S3 server's bucket."""
    os.makedirs(os.path.join(base, "conf.d"), exist_ok=True)
    location, settings = s3_location(server, base, proxy, prefix)
    config = os.path.join(base, "agent.toml")
    state_dir = os.path.join(base, "state")
    with open(config, "w") as handle:
        handle.write(f'host = "{host}"\nrepository = "{location}"\nstate_dir = "{state_dir}"\n'
                     f'[s3]\ncredentials_file = "{settings.credentials_file}"\nregion = "us-east-1"\n'
                     f'[encryption]\n{encryption}\n')
    return Agent(base, config, location, state_dir)


def add_job(agent: Agent, text: str) -> None:
    with open(os.path.join(agent.base, "conf.d", "jobs.toml"), "a") as handle:
        handle.write(text)


def services_tree(root: str, seed: int = 0) -> None:
    make_tree(root, {
        "webapps/app.war": os.urandom(300_000) if seed < 0 else bytes(range(256)) * 2000,
        "webapps/app/WEB-INF/web.xml": f"<web-app>{seed}</web-app>",
        "lib/shared.jar": b"jar" * 200_000,
        "conf/server.xml": "<Server/>",
        "logs/": None,
    })


def test_backups_of_files_and_dumps_restore_verify_and_prune(tmp_path, s3_server):
    agent = s3_agent(str(tmp_path), s3_server)
    tree = str(tmp_path / "services")
    services_tree(tree)
    stamp = tmp_path / "stamp"
    stamp.write_text("first\n")
    add_job(agent, fs_job("services-api", tree) + '[jobs.dump]\ntype = "command"\nargv = ["sh", "-c", '
                   f'"cat {stamp}; seq 1 200000"]\nevery = "24h"\nretention = {{ keep_last = 1 }}\n')
    checked = agent.run("check-config", check=0)
    assert "plain http" in checked.stderr  # s3:http:// is allowed, with a warning
    assert "plain http" not in agent.run("snapshots", check=0).stderr  # said by check-config, not every command
    reports = {report["job"]: report for report in agent.backup()}
    assert reports["services-api"]["status"] == "ok" and reports["dump"]["status"] == "ok"
    assert reports["services-api"]["new_bytes"] > 0
    stamp.write_text("second\n")
    again = {report["job"]: report for report in agent.backup()}
    assert again["services-api"]["changed"] is False
    assert again["dump"]["new_bytes"] < again["dump"]["bytes"] / 4  # only the first chunk is new
    snapshots = json.loads(agent.run("snapshots", "--json", check=0).stdout)
    assert sorted(snap["job"] for snap in snapshots) == ["dump", "dump", "services-api"]

    out = tmp_path / "restored"
    agent.run("restore", "services-api:latest", "--target", str(out), check=0)
    assert read_tree(str(out)) == read_tree(tree)
    agent.run("restore", "dump:latest", "--target", str(tmp_path / "dump.txt"), check=0)
    expected = subprocess.run(["seq", "1", "200000"], capture_output=True, check=True).stdout
    assert (tmp_path / "dump.txt").read_bytes() == b"second\n" + expected

    assert "ok" in agent.run("verify", "--read-data", check=0).stdout
    pruned = json.loads(agent.run("prune", "--json", check=0).stdout)
    assert len(pruned["removed"]) == 1  # the older dump (keep_last = 1)
    stored = s3_server.objects(agent.repository.rsplit("/", 1)[1])
    assert "config" in stored and any(key.startswith("data/") for key in stored)
    assert not any(key.startswith("locks/") for key in stored)  # prune removed the ended locks, and its own
    assert json.loads(agent.run("verify", "--read-data", "--json", check=0).stdout)["ok"] is True


def test_configuration_errors_and_warnings_name_the_key_never_the_secret(tmp_path, s3_server):
    agent = s3_agent(str(tmp_path), s3_server)
    secret = s3_server.secret_key
    with open(agent.config) as handle:
        text = handle.read()
    credentials = text.split('credentials_file = "')[1].split('"')[0]
    os.chmod(credentials, 0o644)
    checked = agent.run("check-config", check=0)
    assert f"s3.credentials_file: {credentials} is readable by every user" in checked.stderr
    tree = str(tmp_path / "t")
    make_tree(tree, {"a": "x"})
    add_job(agent, fs_job("svc", tree))
    (report,) = agent.backup()
    assert any("s3.credentials_file" in warning for warning in report["warnings"])  # in every run's report
    os.chmod(credentials, 0o600)

    with open(agent.config, "w") as handle:
        handle.write(text.replace("[s3]", "[s3x]"))
    broken = agent.run("check-config", check=2)
    assert "s3: an s3 repository needs an [s3] table" in broken.stderr
    with open(agent.config, "w") as handle:
        handle.write(text.replace("/backups/", "/no-such-bucket/"))
    failed = agent.run("backup", "svc", "--json", check=1)
    (report,) = json.loads(failed.stdout)
    assert "bucket no-such-bucket" in report["errors"][0] and s3_server.url in report["errors"][0]
    assert "does not exist" in report["errors"][0]
    with open(credentials, "w") as handle:
        handle.write(f"[default]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = wrong{secret}\n")
    with open(agent.config, "w") as handle:
        handle.write(text)
    for args in (("backup", "svc", "--json"), ("snapshots",), ("verify",)):
        result = agent.run(*args, check=1)
        assert "backups" in result.stdout + result.stderr and "403" in result.stdout + result.stderr
        assert secret not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    for directory, _, files in os.walk(agent.state_dir):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                assert secret.encode() not in handle.read(), name


def test_retries_of_slow_down_and_dropped_connections(tmp_path, s3_server, s3_proxy):
    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    tree = str(tmp_path / "t")
    services_tree(tree)
    add_job(agent, fs_job("svc", tree))
    s3_proxy.faults.slow_down = 3
    s3_proxy.faults.drop = 2
    (report,) = agent.backup()
    assert report["status"] == "ok", report
    assert s3_proxy.faults.slow_down == 0 and s3_proxy.faults.drop == 0  # the faults were met, and retried
    s3_proxy.faults.slow_down, s3_proxy.faults.only = 2, "/data/"
    out = tmp_path / "out"
    agent.run("restore", "svc:latest", "--target", str(out), check=0)
    assert read_tree(str(out)) == read_tree(tree)
    s3_proxy.faults.slow_down, s3_proxy.faults.only = 1000, ""  # a server that never recovers
    failed = agent.run("snapshots", check=1)
    assert "503" in failed.stderr and "Traceback" not in failed.stderr


def _kill_backup_midway(agent: Agent, proxy: S3Proxy, packs: Callable[[], Set[str]]) -> Set[str]:
    """Start a backup and kill -9 it once it has stored a pack, before its snapshot; returns the packs
    it left."""
    before = packs()
    proxy.faults.latency = 5.0  # the snapshot document would come late
    proxy.faults.only = "/snapshots/"
    proc = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "--all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not packs() - before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the backup ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proxy.faults.latency, proxy.faults.only = 0.0, ""
    left = packs() - before
    assert left
    return left


def test_append_only_keys_back_up_restore_and_verify_and_prune_says_it_needs_delete(tmp_path, s3_server,
                                                                                    s3_proxy):
    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    tree = str(tmp_path / "t")
    services_tree(tree)
    add_job(agent, fs_job("svc", tree, extra="retention = { keep_last = 1 }"))
    s3_proxy.faults.refuse_delete = True
    assert agent.backup()[0]["status"] == "ok"
    make_tree(tree, {"new.txt": os.urandom(200_000)})
    assert agent.backup()[0]["status"] == "ok"
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=0)
    agent.run("verify", "--read-data", check=0)
    deletes = s3_proxy.counts.get("DELETE", 0)
    assert deletes == 0  # nothing but prune ever deletes

    make_tree(tree, {"big.bin": os.urandom(40_000_000)})  # more than two packs
    prefix = agent.repository.rsplit("/", 1)[1]
    left = _kill_backup_midway(agent, s3_proxy, lambda: {key for key in s3_server.objects(prefix)
                                                         if key.startswith("data/")})
    before = json.loads(agent.run("snapshots", "--json", check=0).stdout)
    assert len(before) == 2  # the killed run left no snapshot
    agent.run("verify", "--read-data", check=0)

    refused = agent.run("prune", check=1)
    assert "delete permission" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(agent.run("snapshots", "--json", check=0).stdout) == before  # nothing was changed

    s3_proxy.faults.refuse_delete = False  # prune where keys with delete permission are
    pruned = json.loads(agent.run("prune", "--json", check=0).stdout)
    assert pruned["packs_deleted"] >= len(left)
    assert not left & set(s3_server.objects(prefix))  # collected by the next prune
    # the killed run's lock too: its process is gone (this machine, this boot)
    assert not any(key.startswith("locks/") for key in s3_server.objects(prefix))
    agent.run("verify", "--read-data", check=0)


def test_two_hosts_share_one_repository_while_prune_runs(tmp_path, s3_server):
    prefix = "shared-" + os.urandom(4).hex()
    first = s3_agent(str(tmp_path / "node-1"), s3_server, host="node-1", prefix=prefix)
    second = s3_agent(str(tmp_path / "node-2"), s3_server, host="node-2", prefix=prefix)
    trees = []
    for agent in (first, second):
        tree = os.path.join(agent.base, "services")
        services_tree(tree)
        trees.append(tree)
        add_job(agent, fs_job("services-api", tree, extra="retention = { keep_last = 2 }"))
    (one,) = first.backup()
    (two,) = second.backup()  # an identical tree on another host: its data is stored already
    assert one["status"] == two["status"] == "ok"
    assert two["new_bytes"] < 0.05 * two["bytes"], two

    failures: List[str] = []
    stop = threading.Event()

    def keep_backing_up(agent: Agent, tree: str) -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            make_tree(tree, {f"webapps/app/changed-{round_ % 3}.txt": os.urandom(50_000)})
            result = agent.run("backup", "--all", "--json", timeout=300)
            if result.returncode != 0:
                failures.append(result.stdout + result.stderr)

    workers = [threading.Thread(target=keep_backing_up, args=pair) for pair in zip((first, second), trees)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(4):
            pruned = first.run("prune", "--json", timeout=300)
            assert pruned.returncode == 0, pruned.stderr
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    second.run("verify", "--read-data", check=0)
    for agent in (first, second):
        out = os.path.join(agent.base, "restored")
        agent.run("restore", "services-api:latest", "--target", out, check=0)


def test_a_host_whose_last_snapshot_another_host_pruned_stores_its_data_again(tmp_path, s3_server):
    """node-2 forgets node-1's only snapshot and prunes, deleting the data only node-1 had. node-1's files
    cache still names those blobs, and its local cache still holds the deleted snapshot document: the next
    backup must not take the cached copy for the snapshot."""
    prefix = "shared-" + os.urandom(4).hex()
    first = s3_agent(str(tmp_path / "node-1"), s3_server, host="node-1", prefix=prefix)
    second = s3_agent(str(tmp_path / "node-2"), s3_server, host="node-2", prefix=prefix)
    for agent, content in ((first, os.urandom(200_000)), (second, os.urandom(200_000))):
        tree = os.path.join(agent.base, "services")
        make_tree(tree, {"lib/only-here.jar": content})
        old = time.time() - 3600  # settled: the files cache trusts its stat next time
        for path in (os.path.join(tree, "lib", "only-here.jar"), os.path.join(tree, "lib"), tree):
            os.utime(path, (old, old))
        add_job(agent, fs_job("services-api", tree, extra="retention = { keep_last = 1 }"))
    (gone,) = first.backup()
    assert second.backup()[0]["status"] == "ok"
    second.run("forget", gone["snapshot"], check=0)
    second.run("prune", check=0)  # node-1's cache is not told
    assert gone["snapshot"] not in {snap["id"] for snap in second.snapshots()}
    (again,) = first.backup()
    assert again["status"] == "ok" and again["new_bytes"] >= 200_000, again
    first.run("verify", "--read-data", check=0)
    out = str(tmp_path / "restored")
    first.run("restore", "services-api:latest", "--target", out, check=0)
    assert read_tree(out) == read_tree(os.path.join(first.base, "services"))


def _requests_of(agent: Agent, proxy: S3Proxy, *args: str) -> int:
    proxy.reset_counts()
    agent.run(*args, check=0)
    return proxy.counts.get("requests", 0)


def _lock_writes(proxy: S3Proxy) -> List[str]:
    return [seen for seen in proxy.seen if seen.startswith("PUT ") and "/locks/" in seen]


def test_a_no_change_backup_costs_requests_that_do_not_grow_with_the_repository(tmp_path, s3_server, s3_proxy):
    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    tree = str(tmp_path / "t")
    services_tree(tree)
    add_job(agent, fs_job("svc", tree) + fs_job("other", str(tmp_path / "o")))
    make_tree(str(tmp_path / "o"), {"x": "1"})
    agent.backup()
    small = _requests_of(agent, s3_proxy, "backup", "svc")
    small_all = _requests_of(agent, s3_proxy, "backup", "--all")
    assert len(_lock_writes(s3_proxy)) == 2, s3_proxy.seen  # one lock for both jobs: its object and its end
    for round_ in range(6):  # more snapshots, index files and packs
        make_tree(str(tmp_path / "o"), {f"f{round_}": os.urandom(100_000)})
        agent.backup("other")
    large = _requests_of(agent, s3_proxy, "backup", "svc")
    assert large == small, (small, large)
    assert large <= 6  # config, lock (PUT, list), the files cache's snapshot, damage listing, lock end
    large_all = _requests_of(agent, s3_proxy, "backup", "--all")
    assert large_all == small_all, (small_all, large_all)
    assert large_all <= large + 1  # a further job: its snapshot's HEAD; no lock, no damage listing
    shutil.rmtree(os.path.join(agent.state_dir, "cache", "repository"))  # only costs time
    (report,) = agent.backup("svc")
    assert report["status"] == "ok" and report["changed"] is False
    assert _requests_of(agent, s3_proxy, "backup", "svc") == large


def test_an_encrypted_repository_on_s3_shows_the_server_no_content(tmp_path, s3_server):
    from tests.e2e.test_encryption import generate_identity

    canary = "Enstratius-canary-" + os.urandom(4).hex()
    bootstrap = s3_agent(str(tmp_path / "keys"), s3_server)
    identity = str(tmp_path / "operator" / "identity")
    recipient = generate_identity(bootstrap, identity)
    agent = s3_agent(str(tmp_path / "node"), s3_server, encryption=f'recipients = ["{recipient}"]')
    tree = str(tmp_path / "t")
    make_tree(tree, {f"conf/{canary}.xml": f"<a>{canary}</a>" * 100, "lib/x.jar": os.urandom(1 << 20)})
    add_job(agent, fs_job("svc", tree))
    assert agent.run("check-config").returncode == 0
    assert agent.backup()[0]["status"] == "ok"
    prefix = agent.repository.rsplit("/", 1)[1]
    top = os.path.join(s3_server.root, "data", "backups", prefix)
    for key in s3_server.objects(prefix):
        with open(os.path.join(top, key), "rb") as handle:
            assert canary.encode() not in handle.read(), key
    agent.run("verify", "--read-data", check=0)
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(tree)


def _watched_and_backed_up_append_only(agent: Agent, tree: str, s3_proxy: S3Proxy) -> str:
    """A watched job `svc` of a services tree at `tree`, backed up once through keys that may not delete."""
    services_tree(tree)
    add_job(agent, fs_job("svc", tree, extra='on_change = true\nquiet = "1s"\nmax_delay = "5s"'))
    s3_proxy.faults.refuse_delete = True
    agent.backup("svc")
    return tree


def test_the_daemon_backs_up_on_change_into_an_append_only_bucket(tmp_path, s3_server, s3_proxy):
    from tests.e2e.test_daemon import Daemon

    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    tree = _watched_and_backed_up_append_only(agent, str(tmp_path / "t"), s3_proxy)
    daemon = Daemon(agent).start()
    try:
        daemon.idle("svc", 1, timeout=60)  # the start-up scan
        make_tree(tree, {"webapps/app/WEB-INF/web.xml": "<web-app>deployed</web-app>"})
        daemon.idle("svc", 2, timeout=60)
        assert "svc: backup ok (change)" in daemon.reports("svc")[-1], daemon.text()
    finally:
        assert daemon.stop() == 0
    snapshots = json.loads(agent.run("snapshots", "--json", check=0).stdout)
    assert [snap["trigger"] for snap in snapshots] == ["manual", "change"]
    out = tmp_path / "out"
    agent.run("restore", "svc:latest", "--target", str(out), check=0)
    assert (out / "webapps/app/WEB-INF/web.xml").read_text() == "<web-app>deployed</web-app>"
    assert not [seen for seen in s3_proxy.seen if seen.startswith("DELETE")]  # never tried


def test_backup_all_lets_go_of_its_repository_lock_while_it_waits_for_a_job(tmp_path, s3_server):
    """`backup --all` holds one repository lock for all its jobs, but not while it waits for a job's own
    lock: that job's other run (the daemon's) may wait for the repository lock behind a waiting prune,
    which waits for every backup's lock, so holding it there would deadlock the three."""
    import queue

    from agent.durable import FileLock

    agent = s3_agent(str(tmp_path), s3_server)
    for name in ("first", "second"):
        make_tree(str(tmp_path / name), {"file": name})
        add_job(agent, fs_job(name, str(tmp_path / name)))
    agent.backup()
    held = FileLock(os.path.join(agent.state_dir, "locks", "second.lock"), exclusive=True, purpose="the test")
    held.acquire()
    backup = subprocess.Popen([*agent_command(), "--config", agent.config, "backup", "--all", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [said.put(line) for line in backup.stderr], daemon=True)
        reader.start()
        while "waiting for the lock of job second" not in said.get(timeout=120):
            pass
        # the first job is done and the second waits for its job lock: prune must get the repository
        pruned = agent.run("prune", "--json", timeout=60)
        assert pruned.returncode == 0, pruned.stderr
    finally:
        held.release()
        try:
            out = backup.stdout.read()  # stderr is the reader's
            backup.wait(timeout=120)
        finally:
            if backup.poll() is None:
                backup.kill()
                backup.wait()
            backup.stdout.close()
            backup.stderr.close()
    assert backup.returncode == 0, out
    assert [report["status"] for report in json.loads(out)] == ["ok", "ok"]
    agent.run("verify", "--read-data", check=0)


def test_verify_checks_what_the_bucket_holds_not_the_local_cache(tmp_path, s3_server):
    """The cache keeps good copies of index files and snapshot documents; verify must read the stored ones."""
    prefix = "verify-" + os.urandom(4).hex()
    agent = s3_agent(str(tmp_path), s3_server, prefix=prefix)
    tree = str(tmp_path / "t")
    services_tree(tree)
    add_job(agent, fs_job("svc", tree))
    agent.backup()
    agent.run("verify", "--read-data", check=0)  # the cache now holds every index file and document
    stored = s3_server.objects(prefix)
    for kind in ("index", "snapshots"):
        (key,) = [key for key in stored if key.startswith(kind + "/")]
        path = os.path.join(s3_server.root, "data", "backups", prefix, key)
        with open(path, "r+b") as handle:  # one flipped byte in the bucket's copy
            handle.seek(stored[key] // 2)
            byte = handle.read(1)
            handle.seek(stored[key] // 2)
            handle.write(bytes([byte[0] ^ 0x20]))
        for args in (("verify", "--read-data", "--json"), ("verify", "--json")):
            result = agent.run(*args, check=1)
            problems = json.loads(result.stdout)["problems"]
            assert any(key.split("/")[1] in problem and "damaged" in problem for problem in problems), (key, problems)
            assert "Traceback" not in result.stderr
        with open(path, "r+b") as handle:  # put it back: the next kind is checked alone
            handle.seek(stored[key] // 2)
            handle.write(byte)
    agent.run("verify", "--read-data", check=0)


def _maintained(agent: Agent, collector, tmp_path, top: str) -> None:
    """Top-level keys `top` (before the tables s3_agent wrote), then retention and the collector."""
    from tests.e2e.test_daemon_maintenance import configure

    with open(agent.config) as handle:
        text = handle.read()
    with open(agent.config, "w") as handle:
        handle.write(f"{top}\n{text}")
    configure(agent, collector, tmp_path)


def test_the_daemon_prunes_an_s3_repository_its_keys_may_delete_from(tmp_path, s3_server, s3_proxy, start_collector):
    from tests.e2e.test_daemon import Daemon, wait_for

    collector = start_collector()
    agent = s3_agent(str(tmp_path / "node"), s3_server, s3_proxy, host="test-node")
    _maintained(agent, collector, tmp_path, 'prune_every = "3s"\ndrill_every = "1w"')
    prefix = agent.repository.rsplit("/", 1)[-1]
    tree = str(tmp_path / "svc")
    make_tree(tree, {"conf/a.xml": "<a/>", "lib/big.jar": os.urandom(2_000_000)})
    add_job(agent, fs_job("svc", tree))
    agent.backup("svc")
    with open(os.path.join(tree, "lib/big.jar"), "wb") as handle:  # the first snapshot's data becomes garbage
        handle.write(os.urandom(2_000_000))
    agent.backup("svc")
    before = sum(size for key, size in s3_server.objects(prefix).items() if key.startswith("data/"))
    s3_proxy.reset_counts()
    daemon = Daemon(agent).start()
    try:
        reports = wait_for(lambda: [row for row in collector.reports("test-node") if row["trigger"] == "prune"],
                           timeout=90)
    finally:
        assert daemon.stop() == 0
    prune = reports[-1]
    assert prune["status"] == "ok", prune
    after = sum(size for key, size in s3_server.objects(prefix).items() if key.startswith("data/"))
    assert prune["repository_bytes_before"] >= before > after
    assert [seen for seen in s3_proxy.seen if seen.startswith("DELETE") and "/data/" in seen]
    assert len(agent.snapshots("svc")) == 1
    agent.run("verify", "--read-data", check=0)
    out = tmp_path / "out"
    agent.run("restore", "svc:latest", "--target", str(out), check=0)
    assert read_tree(str(out)) == read_tree(tree)


def test_the_daemon_on_an_append_only_bucket_leaves_prune_to_another_host(tmp_path, s3_server, s3_proxy,
                                                                          start_collector):
    from tests.e2e.test_daemon import Daemon, wait_for

    collector = start_collector()
    agent = s3_agent(str(tmp_path / "node"), s3_server, s3_proxy, host="test-node")
    _maintained(agent, collector, tmp_path, 'prune_every = "2s"\ndrill_every = "1w"')
    tree = _watched_and_backed_up_append_only(agent, str(tmp_path / "svc"), s3_proxy)
    daemon = Daemon(agent).start()
    try:
        wait_for(lambda: daemon.text().count("prune skipped") >= 2 or None, timeout=60)
        make_tree(tree, {"conf/server.xml": "<Server port='9'/>"})  # backups go on beside the skipped prunes
        daemon.idle("svc", 2, timeout=60)
    finally:
        assert daemon.stop() == 0
    assert "may not delete (append-only)" in daemon.text()
    assert "Traceback" not in daemon.text()
    assert not [row for row in collector.reports("test-node") if row["trigger"] == "prune"]
    assert not [seen for seen in s3_proxy.seen if seen.startswith("DELETE") and "/data/" in seen]
    assert [snap["trigger"] for snap in agent.snapshots("svc")] == ["manual", "change"]


def test_an_object_the_server_will_not_give_fails_its_files_only(tmp_path, s3_server, s3_proxy):
    """One pack the server refuses (after the client's retries): restore names its files and restores the
    rest, `restore --all` goes on with the other jobs, verify names the pack and records no damage."""
    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    trees = {name: str(tmp_path / name) for name in ("one", "two")}
    make_tree(trees["one"], {"big.bin": os.urandom(3_000_000), "conf/a.xml": "<a/>"})
    make_tree(trees["two"], {"b.txt": "b" * 1000})
    add_job(agent, fs_job("one", trees["one"]) + fs_job("two", trees["two"]))
    assert [report["status"] for report in agent.backup()] == ["ok", "ok"]
    out = tmp_path / "out"
    s3_proxy.reset_counts()
    agent.run("restore", "one:latest", "--target", str(out / "whole"), check=0)
    [refused] = {line.split("/data/")[1].split("/")[1] for line in s3_proxy.seen  # one's only pack
                 if line.startswith("GET") and "/data/" in line}
    s3_proxy.faults.refuse_get, s3_proxy.faults.only = True, refused
    result = agent.run("restore", "--all", "--target", str(out / "all"), "--json", check=1)
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert "Traceback" not in result.stderr and set(documents) == {"one", "two"}
    assert documents["one"]["errors"] and all("403" in error for error in documents["one"]["errors"])
    assert documents["two"]["errors"] == [] and read_tree(str(out / "all/two")) == read_tree(trees["two"])
    s3_proxy.reset_counts()
    verified = agent.run("verify", "--read-data", check=1)
    said = verified.stdout + verified.stderr
    assert refused in said and "not recorded as damage" in said and "Traceback" not in said
    assert not any(line.startswith("PUT") and "/damage/" in line for line in s3_proxy.seen)
    s3_proxy.faults.refuse_get, s3_proxy.faults.only = False, ""
    agent.run("verify", "--read-data", check=0)


def _two_jobs_one_unserved(tmp_path, s3_server: S3Server, s3_proxy: S3Proxy, fault: str):
    """(agent, trees, snapshot ids by job) of jobs `bulk` and `many` backed up on S3, the local cache removed
    (a new node), and the proxy answering every GET of bulk's snapshot document with `fault`: "500"
    (InternalError) or "dropped" (the connection closed), so that the client gives up after its retries."""
    agent = s3_agent(str(tmp_path), s3_server, s3_proxy)
    trees = {name: str(tmp_path / name) for name in ("bulk", "many")}
    make_tree(trees["bulk"], {"big.bin": os.urandom(300_000)})
    make_tree(trees["many"], {f"conf/f{n}.xml": f"<f{n}/>" for n in range(20)})
    add_job(agent, fs_job("bulk", trees["bulk"]) + fs_job("many", trees["many"]))
    assert [report["status"] for report in agent.backup()] == ["ok", "ok"]
    ids = {row["job"]: row["id"] for row in agent.snapshots()}
    shutil.rmtree(os.path.join(agent.state_dir, "cache"))
    s3_proxy.faults.only = f"/snapshots/{ids['bulk']}"
    if fault == "500":
        s3_proxy.faults.fail_get = True
    else:
        s3_proxy.faults.drop = 1_000_000
    return agent, trees, ids


def test_a_snapshot_document_the_server_cannot_serve_is_named_and_the_other_jobs_stay_usable(
        tmp_path, s3_server, s3_proxy):
    """One snapshot document the server does not serve (HTTP 500 after the client's retries) on a node with
    nothing cached: every command that lists snapshots names it as unreadable and does its work for the
    other jobs (exit 1 where the answer is incomplete); prune refuses, since what the document needs is
    unknown; once it is served again, nothing was lost."""
    agent, trees, ids = _two_jobs_one_unserved(tmp_path, s3_server, s3_proxy, "500")
    unreadable = f"snapshot {ids['bulk']} cannot be read"

    listed = agent.run("snapshots", "--json", check=1)
    assert [row["id"] for row in json.loads(listed.stdout)] == [ids["many"]]
    assert unreadable in listed.stderr and "500" in listed.stderr and "Traceback" not in listed.stderr
    found = agent.run("find", "f7.xml", "--json", check=1)
    assert [row["snapshot"] for row in json.loads(found.stdout)] == [ids["many"]] and unreadable in found.stderr
    out = tmp_path / "out"
    one = agent.run("restore", "many:latest", "--target", str(out / "one"), check=0)
    assert read_tree(str(out / "one")) == read_tree(trees["many"]) and ids["bulk"] in one.stderr
    refused = agent.run("restore", "bulk:latest", "--target", str(out / "bulk"), check=1)
    assert unreadable in refused.stderr and not (out / "bulk").exists()
    every = agent.run("restore", "--all", "--target", str(out / "all"), "--json", check=1)
    documents = {document["job"]: document for document in json.loads(every.stdout)}
    assert documents["many"]["errors"] == [] and read_tree(str(out / "all/many")) == read_tree(trees["many"])
    assert documents["bulk"]["snapshot"] is None and unreadable in documents["bulk"]["errors"][0]
    drilled = {report["job"]: report
               for report in json.loads(agent.run("drill", "--all", "--json", check=1).stdout)}
    assert drilled["many"]["status"] == "ok" and drilled["many"]["snapshot"] == ids["many"]
    assert any(unreadable in note for note in drilled["many"]["warnings"])
    assert drilled["bulk"]["status"] == "failed" and any(unreadable in error for error in drilled["bulk"]["errors"])
    verified = json.loads(agent.run("verify", "--json", check=1).stdout)
    assert verified["snapshots"] == 1 and [problem for problem in verified["problems"] if unreadable in problem]
    pruned = agent.run("prune", check=1)
    assert unreadable in pruned.stderr and "nothing was pruned" in pruned.stderr
    assert "Traceback" not in pruned.stderr

    s3_proxy.faults = Faults()  # served again: everything is there
    assert {row["id"] for row in agent.snapshots()} == set(ids.values())
    agent.run("restore", "bulk:latest", "--target", str(out / "bulk"), check=0)
    assert read_tree(str(out / "bulk")) == read_tree(trees["bulk"])
    agent.run("verify", "--read-data", check=0)


def test_a_snapshot_document_whose_connection_drops_is_named_as_unreadable(tmp_path, s3_server, s3_proxy):
    agent, _, ids = _two_jobs_one_unserved(tmp_path, s3_server, s3_proxy, "dropped")
    listed = agent.run("snapshots", "--json", check=1)
    assert [row["id"] for row in json.loads(listed.stdout)] == [ids["many"]]
    assert f"snapshot {ids['bulk']} cannot be read" in listed.stderr and "Traceback" not in listed.stderr
    assert "the connection was closed before an answer, after retrying" in listed.stderr  # not "cannot connect"
