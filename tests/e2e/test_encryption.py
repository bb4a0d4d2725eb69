"""Encrypted repositories (issue 13, README "Encryption"): the real command on real trees, a real SQLite
database and real daemons; the repository's raw bytes are read as the storage holder would."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Dict, List

import pytest

from tests.e2e.test_daemon import wait_for
from tests.helpers import Agent, agent_command, fs_job, make_tree, new_agent, read_tree

CANARY = "Zq7CanaryXw41"  # unlikely in any encrypted byte string, and in no format's header


def generate_identity(agent: Agent, path: str) -> str:
    result = agent.run("key", "generate", "--identity", path, check=0)
    recipient = result.stdout.strip().splitlines()[-1]
    assert recipient.startswith("age1")
    return recipient


def encrypt(agent: Agent, recipients: List[str], extra: str = "") -> None:
    with open(agent.config, "a") as handle:
        handle.write(f"[encryption]\nrecipients = {json.dumps(recipients)}\n{extra}")


def raw_bytes(root: str) -> Dict[str, bytes]:
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[path] = handle.read()
    return found


def secrets_of(agent: Agent, identity: str) -> List[bytes]:
    """The identity's secret key and the node key's secrets, as they could leak: text and raw bytes."""
    with open(identity) as handle:
        found = [line.strip().encode() for line in handle if line.startswith("AGE-SECRET-KEY-1")]
    with open(os.path.join(agent.state_dir, "node.key")) as handle:
        node = json.load(handle)
    for key in ("id_key", "meta_key"):
        found += [node[key].encode(), base64.b64decode(node[key]), base64.b64decode(node[key]).hex().encode()]
    return found


@pytest.fixture
def encrypted(tmp_path):
    """An agent backing up into a new encrypted repository; the identity lives outside its config."""
    agent = new_agent(str(tmp_path / "agent"))
    identity = str(tmp_path / "operator" / "identity")
    recipient = generate_identity(agent, identity)
    encrypt(agent, [recipient])
    return agent, identity, recipient


def test_key_generate_writes_a_private_identity_once_and_prints_its_recipient_last(agent, tmp_path):
    path = str(tmp_path / "keys" / "identity")
    result = agent.run("key", "generate", "--identity", path, check=0)
    recipient = result.stdout.strip().splitlines()[-1]
    assert recipient.startswith("age1") and len(recipient) == 62
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "losing" in result.stderr.replace("lost", "losing") and "cannot be restored" in result.stderr
    with open(path) as handle:
        before = handle.read()
    assert f"# public key: {recipient}" in before
    secret = [line for line in before.splitlines() if line.startswith("AGE-SECRET-KEY-1")]
    assert len(secret) == 1 and secret[0] not in result.stdout + result.stderr
    again = agent.run("key", "generate", "--identity", path, check=2)
    assert "refusing to overwrite" in again.stderr and path in again.stderr
    with open(path) as handle:
        assert handle.read() == before


def test_canaries_in_names_contents_and_dump_rows_appear_nowhere_in_the_repository(encrypted, tmp_path):
    agent, identity, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {f"conf/{CANARY}-name.xml": "<a/>", "webapps/app.war": f"content {CANARY} " * 500,
                    "lib/big.jar": os.urandom(3 << 20)})
    database = str(tmp_path / "app.db")
    with sqlite3.connect(database) as connection:
        connection.execute("create table t (v text)")
        connection.execute("insert into t values (?)", (f"row {CANARY}",))
    agent.write_jobs(fs_job("svc", src) +
                     f'[jobs.db-app]\ntype = "sqlite"\npath = "{database}"\nevery = "24h"\n'
                     f'[jobs.dump]\ntype = "command"\nargv = ["printf", "INSERT INTO t VALUES (\'{CANARY}\');\\n"]\n'
                     'every = "24h"\n')
    reports = agent.backup()
    assert [report["status"] for report in reports] == ["ok", "ok", "ok"]
    objects = raw_bytes(agent.repository)
    assert any("/data/" in path for path in objects) and any("/packkeys/" in path for path in objects)
    for path, data in objects.items():
        for needle in (CANARY.encode(), b"db-app", b"webapps", b"test-node", src.encode()):
            assert needle not in data, (needle, path)
    # the secrets never reach the repository, a report, the spool, the files cache or any output
    leaks = secrets_of(agent, identity)
    for path, data in {**objects, **raw_bytes(os.path.join(agent.state_dir, "reports"))}.items():
        assert not any(secret in data for secret in leaks), path
    assert not any(secret.decode(errors="ignore") in json.dumps(reports) for secret in leaks)
    # the node lists its snapshots and file lists, and verifies every stored byte, without the identity
    assert {snap["job"] for snap in agent.snapshots()} == {"svc", "db-app", "dump"}
    listing = agent.run("ls", "svc:latest", "--json", check=0).stdout
    assert f"conf/{CANARY}-name.xml" in listing
    assert "ok:" in agent.run("verify", "--read-data", check=0).stdout
    assert "ok:" in agent.run("verify", "--read-data", "--identity", identity, check=0).stdout
    # and with the identity, everything comes back exact
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)
    agent.run("restore", "dump:latest", "--target", str(tmp_path / "dump.sql"), "--identity", identity, check=0)
    with open(tmp_path / "dump.sql") as handle:
        assert handle.read() == f"INSERT INTO t VALUES ('{CANARY}');\n"
    agent.run("restore", "db-app:latest", "--target", str(tmp_path / "copy.db"), "--identity", identity, check=0)
    with sqlite3.connect(tmp_path / "copy.db") as connection:
        assert connection.execute("select v from t").fetchall() == [(f"row {CANARY}",)]


def test_a_node_without_identity_backs_up_prunes_and_verifies_but_cannot_restore(encrypted, tmp_path):
    agent, identity, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/server.xml": "<server/>", "webapps/app/index.jsp": "v1"})
    rows = str(tmp_path / "rows.sql")
    make_tree(str(tmp_path), {"rows.sql": "dump-row-1\n"})
    agent.write_jobs(fs_job("svc", src, extra='on_change = true\nquiet = "0.5s"\nmax_delay = "3s"') +
                     f'[jobs.dump]\ntype = "command"\nargv = ["cat", "{rows}"]\nevery = "40s"\n')
    with open(agent.config) as handle:  # the maintenance lane: prunes often; drills would, with an identity
        text = handle.read()
    with open(agent.config, "w") as handle:
        handle.write(text.replace("[encryption]", 'drill_every = "2s"\nprune_every = "3s"\n[encryption]'))
    agent.backup()
    # the timer job is two days overdue when the daemon starts: a catch-up (timer) run
    state_file = os.path.join(agent.state_dir, "jobs", "dump.json")
    with open(state_file) as handle:
        state = json.load(handle)
    old = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    state["last_ok"] = state["last_full"] = state["last_run"]["finished_at"] = old
    with open(state_file, "w") as handle:
        json.dump(state, handle)
    make_tree(str(tmp_path), {"rows.sql": "dump-row-2\n"})
    log_path = os.path.join(agent.base, "daemon.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*agent_command(), "--config", agent.config, "run"], stdout=log, stderr=log,
                                env={**os.environ, "TZ": "UTC"})
    try:
        def log_text() -> str:
            with open(log_path, errors="replace") as handle:
                return handle.read()
        wait_for(lambda: "dump: backup ok (catch-up)" in log_text())
        wait_for(lambda: "svc: backup ok (startup)" in log_text())
        with open(os.path.join(src, "webapps/app/index.jsp"), "w") as handle:
            handle.write("v2")
        wait_for(lambda: any(snap["trigger"] == "change" for snap in agent.snapshots("svc")))
        wait_for(lambda: "prune ok" in log_text(), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "Traceback" not in log_text() and "drill" not in log_text()  # no identity here: drills run elsewhere
    triggers = {snap["trigger"] for snap in agent.snapshots()}
    assert {"change", "catch-up"} <= triggers
    agent.run("prune", check=0)
    agent.run("verify", "--read-data", check=0)
    refused = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=2)
    assert "identity" in refused.stderr and "identity_file" in refused.stderr and agent.config in refused.stderr
    assert not os.path.exists(tmp_path / "out")
    refused = agent.run("restore", "dump:latest", "--target", str(tmp_path / "d.sql"), check=2)
    assert not os.path.exists(tmp_path / "d.sql")
    # the identity named in the configuration (as on an operator's host) restores both exactly
    with open(agent.config, "a") as handle:
        handle.write(f'identity_file = "{identity}"\n')
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)
    agent.run("restore", "dump:latest", "--target", str(tmp_path / "d.sql"), check=0)
    with open(tmp_path / "d.sql") as handle:
        assert handle.read() == "dump-row-2\n"


def flip(path: str, where: float = 0.5) -> None:
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        data[int(len(data) * where)] ^= 0x01
        handle.seek(0)
        handle.write(data)


def only(root: str, kind: str) -> str:
    found = [path for path in raw_bytes(root) if f"/{kind}/" in path]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("kind", ["index", "snapshots", "data", "packkeys", "config"])
def test_a_flipped_byte_in_any_object_is_an_authentication_error_naming_it(encrypted, tmp_path, kind):
    agent, identity, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"a.txt": "alpha " * 1000, "b.bin": os.urandom(100_000)})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    path = os.path.join(agent.repository, "config.json") if kind == "config" else only(agent.repository, kind)
    if kind == "config":  # a value, so that the document still parses: only its MAC can tell
        with open(path) as handle:
            doc = json.load(handle)
        doc["chunker"]["avg"] += 1
        with open(path, "w") as handle:
            json.dump(doc, handle)
    else:
        flip(path, 0.3 if kind == "data" else 0.5)
    out = str(tmp_path / "out")
    verify = agent.run("verify", "--read-data", "--identity", identity)
    restore = agent.run("restore", "svc:latest", "--target", out, "--identity", identity)
    for result in (verify, restore):
        assert "Traceback" not in result.stderr, result.stderr
    assert verify.returncode == 1
    if kind == "index":  # worked around: the packs' own (authenticated) blob lists index them
        assert restore.returncode == 0 and path in restore.stderr and "authentication failed" in restore.stderr
        assert set(read_tree(out)) == set(read_tree(src))
    else:
        assert restore.returncode in (1, 2), restore.stderr
    shown = verify.stdout + verify.stderr
    if kind in ("data", "packkeys"):
        # the node alone sees the pack's bytes no longer match its (authenticated) name, or the key named
        assert os.path.basename(path) in shown or "authentication failed" in shown, shown
    else:
        assert path in shown and "authentication failed" in shown, shown
    assert agent.run("verify", "--read-data").returncode in (1, 2)  # without the identity too
    # no wrong byte was written: whatever was restored is exact
    restored = read_tree(out) if os.path.exists(out) else {}
    original = read_tree(src)
    for name, value in restored.items():
        if value[0] == "file":
            assert value[3] == original[name][3]


def test_a_wrong_identity_is_a_clear_error(encrypted, tmp_path):
    agent, _, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "a"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    other = str(tmp_path / "other")
    generate_identity(agent, other)
    result = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", other)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert other in result.stderr and "cannot decrypt" in result.stderr
    assert not os.path.exists(tmp_path / "out" / "a")
    missing = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity",
                        str(tmp_path / "nothing"), check=2)
    assert "no such identity file" in missing.stderr
    with open(tmp_path / "bad", "w") as handle:
        handle.write("AGE-SECRET-KEY-1NOTAKEY\n")
    bad = agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", str(tmp_path / "bad"),
                    check=2)
    assert "NOTAKEY" not in bad.stderr and "not a valid age X25519 identity" in bad.stderr


def test_two_nodes_share_one_encrypted_repository_and_deduplicate(encrypted, tmp_path):
    first, identity, recipient = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"lib/app.jar": os.urandom(2 << 20), "conf/a.xml": "<a/>"})
    first.write_jobs(fs_job("svc", src))
    first.backup()
    # the second node is given the first's node key file...
    second = new_agent(str(tmp_path / "second"))
    with open(second.config) as handle:
        text = handle.read().replace(second.repository, first.repository)
    with open(second.config, "w") as handle:
        handle.write(text.replace('host = "test-node"', 'host = "node-2"'))
    encrypt(second, [recipient])
    second.write_jobs(fs_job("svc2", src))
    refused = second.run("backup", "svc2")
    # a failed run, reported as such (to the collector too), saying what the node lacks
    shown = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "node key" in shown and "recover-node" in shown
    # ...recovered by the identity's holder from the repository itself
    out = os.path.join(second.state_dir, "node.key")
    second.run("key", "recover-node", "--identity", identity, "--out", out, check=0)
    assert os.stat(out).st_mode & 0o777 == 0o600
    with open(out) as a, open(os.path.join(first.state_dir, "node.key")) as b:
        assert json.load(a) == json.load(b)
    [report] = second.backup("svc2")
    assert report["status"] == "ok" and report["new_bytes"] < 0.05 * report["bytes"], report
    second.run("restore", "svc2:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)
    first.run("verify", "--read-data", check=0)


def test_new_recipients_apply_to_new_data_and_old_identities_keep_reading_old_data(encrypted, tmp_path):
    agent, identity, recipient = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "first"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    new_identity = str(tmp_path / "new-identity")
    new_recipient = generate_identity(agent, new_identity)
    with open(agent.config) as handle:
        text = handle.read()
    with open(agent.config, "w") as handle:
        handle.write(text.replace(json.dumps([recipient]), json.dumps([new_recipient])))
    make_tree(src, {"a": "second"})
    agent.backup()
    first, second = agent.snapshots("svc")
    for snapshot, who, content in ((first, identity, "first"), (second, new_identity, "second")):
        target = str(tmp_path / f"out-{content}")
        agent.run("restore", snapshot["id"], "--target", target, "--identity", who, check=0)
        with open(os.path.join(target, "a")) as handle:
            assert handle.read() == content
    assert agent.run("restore", second["id"], "--target", str(tmp_path / "x"), "--identity", identity).returncode != 0
    # the new recipient can recover the node key too (a copy for the new set was written)
    agent.run("key", "recover-node", "--identity", new_identity, "--out", str(tmp_path / "node.key"), check=0)


def test_unencrypted_repositories_keep_working_and_check_config_judges_them(agent, tmp_path):
    src = str(tmp_path / "svc")
    make_tree(src, {"a": "plain"})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    checked = agent.run("check-config", check=0)
    assert "not encrypted" in checked.stderr
    # encryption configured later: the existing repository stays as it is, readable without an identity
    recipient = generate_identity(agent, str(tmp_path / "identity"))
    encrypt(agent, [recipient])
    make_tree(src, {"a": "plain 2"})
    agent.backup()
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=0)
    with open(tmp_path / "out" / "a") as handle:
        assert handle.read() == "plain 2"
    agent.run("verify", "--read-data", check=0)
    # object storage: refused unencrypted unless explicitly opted out
    s3 = new_agent(str(tmp_path / "s3agent"))
    with open(s3.config) as handle:
        text = handle.read().replace(f'"{s3.repository}"', '"s3:https://127.0.0.1:9/bucket/node"')
    with open(s3.config, "w") as handle:
        handle.write(text + f'[s3]\ncredentials_file = "{tmp_path}/s3.credentials"\n')
    refused = s3.run("check-config")
    assert refused.returncode == 2 and "disabled = true" in refused.stderr
    with open(s3.config, "a") as handle:
        handle.write("[encryption]\ndisabled = true\n")
    s3.run("check-config", check=0)


def test_a_plain_config_swapped_in_for_an_encrypted_one_is_refused(encrypted, tmp_path):
    agent, _, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"a": CANARY})
    agent.write_jobs(fs_job("svc", src))
    agent.backup()
    config = os.path.join(agent.repository, "config.json")
    with open(config) as handle:
        doc = json.load(handle)
    for key in ("encryption", "mac"):
        del doc[key]
    doc["format"] = 1
    with open(config, "w") as handle:
        json.dump(doc, handle)
    make_tree(src, {"b": CANARY})
    result = agent.run("backup", "svc")
    shown = result.stdout + result.stderr
    assert result.returncode == 1 and "refusing" in shown and "node key" in shown and "Traceback" not in shown
    for data in raw_bytes(agent.repository).values():
        assert CANARY.encode() not in data


def test_restore_all_with_a_wrong_identity_names_every_job_in_its_json(encrypted, tmp_path):
    """Whether a job's file list or only its files' data keys are out of the identity's reach, each job
    gets its JSON document naming why (nothing escapes as one bare error with no JSON), exit 1."""
    agent, _, _ = encrypted
    trees = {"svc": str(tmp_path / "svc"), "km": str(tmp_path / "km")}
    for name, tree in trees.items():
        make_tree(tree, {"lib/big.jar": os.urandom(3_000_000), "conf/a.xml": f"<{name}/>"})
    agent.write_jobs(fs_job("svc", trees["svc"]) + fs_job("km", trees["km"]))
    agent.backup()
    other = str(tmp_path / "other")
    generate_identity(agent, other)
    result = agent.run("restore", "--all", "--target", str(tmp_path / "out"), "--identity", other, "--json",
                       check=1)
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert set(documents) == {"svc", "km"} and "Traceback" not in result.stderr
    for document in documents.values():
        assert document["errors"] and all("cannot decrypt" in error or "restore stopped" in error
                                          for error in document["errors"]), document["errors"]
    assert not os.path.exists(tmp_path / "out" / "svc" / "lib" / "big.jar")


def test_restore_drills_of_an_encrypted_repository_need_the_identity(encrypted, tmp_path):
    agent, identity, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {"conf/a.xml": "<a/>", "lib/x.jar": os.urandom(200_000)})
    agent.write_jobs(fs_job("svc", src) + '[jobs.dump]\ntype = "command"\nargv = ["printf", "row\\n"]\nevery = "24h"\n')
    agent.backup()
    refused = agent.run("drill", "--all", check=2)
    assert "identity" in refused.stderr and "Traceback" not in refused.stderr
    result = agent.run("drill", "--all", "--json", "--identity", identity, check=0)
    reports = json.loads(result.stdout)
    assert [(report["job"], report["status"]) for report in reports] == [("svc", "ok"), ("dump", "ok")]


def test_an_encrypted_repository_on_s3_holds_no_canary_and_restores_with_the_identity(tmp_path, s3_server):
    from tests.e2e.test_s3 import s3_agent
    from tests.fixtures.s3 import BUCKET

    agent = s3_agent(str(tmp_path / "node"), s3_server)
    with open(agent.config) as handle:
        text = handle.read().replace("[encryption]\ndisabled = true\n", "")
    with open(agent.config, "w") as handle:
        handle.write(text)
    refused = agent.run("check-config", check=2)
    assert "disabled = true" in refused.stderr and "recipients" in refused.stderr
    with open(agent.config, "a") as handle:  # the explicit opt-out is accepted
        handle.write("[encryption]\ndisabled = true\n")
    agent.run("check-config", check=0)
    with open(agent.config, "w") as handle:
        handle.write(text)
    identity = str(tmp_path / "identity")
    encrypt(agent, [generate_identity(agent, identity)])
    agent.run("check-config", check=0)
    src = str(tmp_path / "svc")
    make_tree(src, {f"conf/{CANARY}.xml": f"<a>{CANARY}</a>", "lib/x.jar": os.urandom(300_000)})
    agent.write_jobs(fs_job("svc", src) +
                     f'[jobs.dump]\ntype = "command"\nargv = ["printf", "{CANARY} row\\\\n"]\nevery = "24h"\n')
    assert [report["status"] for report in agent.backup()] == ["ok", "ok"]
    prefix = agent.repository.rsplit("/", 1)[1]
    stored = raw_bytes(os.path.join(s3_server.root, "data", BUCKET, prefix))
    assert any("/packkeys/" in path for path in stored) and any("/keys/" in path for path in stored)
    for path, data in stored.items():
        assert CANARY.encode() not in data and src.encode() not in data, path
    agent.run("verify", "--read-data", check=0)
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), check=2)
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)
    agent.run("restore", "dump:latest", "--target", str(tmp_path / "d"), "--identity", identity, check=0)
    assert (tmp_path / "d").read_text() == f"{CANARY} row\n"
    # the identity's holder recovers the node key from the bucket
    agent.run("key", "recover-node", "--identity", identity, "--out", str(tmp_path / "node.key"), check=0)
    with open(tmp_path / "node.key") as a, open(os.path.join(agent.state_dir, "node.key")) as b:
        assert json.load(a) == json.load(b)


def test_prune_rewrites_packs_of_an_encrypted_repository_and_the_identity_still_reads_them(encrypted, tmp_path):
    agent, identity, _ = encrypted
    src = str(tmp_path / "svc")
    make_tree(src, {f"lib/{n}.jar": os.urandom(200_000) for n in range(10)})
    make_tree(src, {"conf/keep.xml": "<keep/>"})
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 1 }"))
    agent.backup()
    for n in range(1, 10):
        os.unlink(os.path.join(src, "lib", f"{n}.jar"))
    agent.backup()
    pruned = json.loads(agent.run("prune", "--json", check=0).stdout)
    assert len(pruned["removed"]) == 1 and pruned["packs_rewritten"] >= 1, pruned
    agent.run("verify", "--read-data", check=0)
    agent.run("verify", "--read-data", "--identity", identity, check=0)
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)


def test_prune_on_s3_removes_the_data_keys_of_the_packs_it_deletes_and_keeps_those_copied_blobs_name(
        tmp_path, s3_server):
    from tests.e2e.test_s3 import s3_agent

    agent = s3_agent(str(tmp_path / "node"), s3_server)
    identity = str(tmp_path / "identity")
    recipient = generate_identity(agent, identity)
    with open(agent.config) as handle:
        text = handle.read().replace("disabled = true", f'recipients = ["{recipient}"]')
    with open(agent.config, "w") as handle:
        handle.write(text)
    src = str(tmp_path / "svc")
    prefix = agent.repository.rsplit("/", 1)[1]

    def data_keys() -> List[str]:
        return [name for name in s3_server.objects(prefix) if name.startswith("packkeys/")]

    make_tree(src, {"lib/gone.jar": os.urandom(300_000), "conf/server.xml": "<Server/>"})
    agent.write_jobs(fs_job("svc", src, extra="retention = { keep_last = 1 }"))
    agent.backup()  # its pack holds only what the next backups no longer have: deleted by prune
    os.unlink(os.path.join(src, "lib", "gone.jar"))
    make_tree(src, {"lib/old.jar": os.urandom(300_000), "lib/kept.jar": os.urandom(300_000),
                    "conf/server.xml": "<Server port='8005'/>"})
    agent.backup()  # half of its pack goes: `kept.jar` is copied into a new pack, still naming this key
    os.unlink(os.path.join(src, "lib", "old.jar"))
    make_tree(src, {"lib/new.jar": os.urandom(300_000)})
    agent.backup()
    assert len(data_keys()) == 3  # one per backup that stored file contents
    pruned = json.loads(agent.run("prune", "--json", check=0).stdout)
    assert len(pruned["removed"]) == 2 and pruned["packs_rewritten"] >= 1, pruned
    assert len(data_keys()) == 2
    agent.run("verify", "--read-data", check=0)
    agent.run("verify", "--read-data", "--identity", identity, check=0)
    agent.run("restore", "svc:latest", "--target", str(tmp_path / "out"), "--identity", identity, check=0)
    assert read_tree(str(tmp_path / "out")) == read_tree(src)
