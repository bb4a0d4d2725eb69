"""End-to-end: `restore --all` (every job's latest snapshot of this host in one run, as after losing a
node), and snapshot selection by host in a repository that several hosts share."""

from __future__ import annotations

import json
import os

from tests.helpers import fs_job, make_tree, new_agent, read_tree


def _command_job(name: str, text: str) -> str:
    return f'[jobs.{name}]\ntype = "command"\nargv = ["printf", "{text}"]\nevery = "24h"\n'


def _host(agent, name: str, repository: str) -> None:
    """Make `agent` host `name`, backing up into `repository` (shared with other agents)."""
    with open(agent.config, "w") as handle:
        handle.write(f'host = "{name}"\nrepository = "{repository}"\nstate_dir = "{agent.state_dir}"\n')


def test_restore_all_puts_every_jobs_latest_snapshot_under_target(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    api, km = str(tmp_path / "api"), str(tmp_path / "km")
    make_tree(api, {"conf/server.xml": "<Server/>", "lib/a.jar": "a" * 5000})
    make_tree(km, {"conf/km.properties": "x=1\n"})
    agent.write_jobs(fs_job("api", api) + fs_job("km", km) + _command_job("settings", "k=v"))
    agent.backup()
    make_tree(api, {"conf/server.xml": "<Server port='9'/>"})  # the latest snapshot is the one restored
    agent.backup()

    target = str(tmp_path / "out")
    result = agent.run("restore", "--all", "--target", target, "--json", check=0)
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert set(documents) == {"api", "km", "settings"}
    assert read_tree(os.path.join(target, "api")) == read_tree(api)
    assert read_tree(os.path.join(target, "km")) == read_tree(km)
    with open(os.path.join(target, "settings"), "rb") as handle:
        assert handle.read() == b"k=v"
    assert documents["api"]["target"] == os.path.join(target, "api") and documents["api"]["errors"] == []
    assert documents["settings"]["errors"] == []

    again = agent.run("restore", "--all", "--target", target)  # the default `never` finds nothing to refuse
    assert again.returncode == 1  # but the dump file exists: refused without --force, named
    assert os.path.join(target, "settings") in again.stderr and "Traceback" not in again.stderr
    os.unlink(os.path.join(target, "settings"))
    make_tree(os.path.join(target, "km"), {"conf/km.properties": "x=2\n"})
    refused = agent.run("restore", "--all", "--target", target)
    assert refused.returncode == 1 and "conf/km.properties" in refused.stderr
    with open(os.path.join(target, "km", "conf/km.properties")) as handle:
        assert handle.read() == "x=2\n"
    agent.run("restore", "--all", "--target", target, "--overwrite", "if-changed", check=0)
    assert read_tree(os.path.join(target, "km")) == read_tree(km)


def test_restore_all_usage_errors_write_nothing(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    api = str(tmp_path / "api")
    make_tree(api, {"a": "1"})
    agent.write_jobs(fs_job("other", api))
    agent.backup()
    agent.write_jobs(fs_job("api", api))
    target = str(tmp_path / "out")
    nothing_yet = agent.run("restore", "--all", "--target", target)  # only an unconfigured job has one
    assert nothing_yet.returncode == 2 and "no job" in nothing_yet.stderr
    agent.backup()
    for args, words in ((["--all"], "--target"), (["--all", "api:latest", "--target", target], "no SNAPSHOT"),
                        (["--target", target], "SNAPSHOT"),
                        (["--all", "--target", target, "--to-database", "x"], "--to-database")):
        result = agent.run("restore", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(target)
    # a --target that is a file or a symlink to nothing: one usage error, not an error per job
    a_file, dangling = str(tmp_path / "a-file"), str(tmp_path / "dangling")
    with open(a_file, "w") as handle:
        handle.write("the operator's")
    os.symlink(str(tmp_path / "nowhere"), dangling)
    for where, words in ((a_file, "is not a directory"), (dangling, "is a symlink to nothing")):
        result = agent.run("restore", "--all", "--target", where, "--json")
        assert result.returncode == 2 and result.stdout == "", (where, result.stderr)
        assert f"--target: {where} {words}" in result.stderr and "api:" not in result.stderr
    with open(a_file) as handle:
        assert handle.read() == "the operator's"
    assert not os.path.lexists(str(tmp_path / "nowhere"))


def test_hosts_sharing_a_repository_restore_and_keep_their_own_snapshots(tmp_path):
    repository = str(tmp_path / "shared-repo")
    one, two = new_agent(str(tmp_path / "node-1")), new_agent(str(tmp_path / "node-2"))
    _host(one, "node-1", repository)
    _host(two, "node-2", repository)
    tree_1, tree_2 = str(tmp_path / "api-1"), str(tmp_path / "api-2")
    make_tree(tree_1, {"conf/server.xml": "<node-1/>", "lib/shared.jar": "j" * 20000})
    make_tree(tree_2, {"conf/server.xml": "<node-2/>", "lib/shared.jar": "j" * 20000})
    one.write_jobs(fs_job("api", tree_1) + _command_job("settings", "same"))
    two.write_jobs(fs_job("api", tree_2) + _command_job("settings", "same"))
    one.backup()
    two.backup()  # newer, same job names, and the same dump bytes as node-1's

    shown = one.run("snapshots", check=0).stdout
    assert "node-2" in shown and "node-1" in shown
    assert "node-2" not in new_agent(str(tmp_path / "alone")).run("snapshots", check=0).stdout
    mine = {(snap["host"], snap["job"]) for snap in one.snapshots()}
    assert mine == {(host, job) for host in ("node-1", "node-2") for job in ("api", "settings")}
    for agent, tree in ((one, tree_1), (two, tree_2)):
        target = str(tmp_path / f"out-{agent.base[-6:]}")
        agent.run("restore", "api:latest", "--target", target, check=0)
        assert read_tree(target) == read_tree(tree)
    listed = json.loads(one.run("restore", "--all", "--target", str(tmp_path / "all-1"), "--json", check=0).stdout)
    hosts = {snap["id"]: snap["host"] for snap in one.snapshots()}
    assert {hosts[document["snapshot"]] for document in listed} == {"node-1"}

    make_tree(tree_2, {"conf/server.xml": "<node-1/>"})  # node-2's tree now equals node-1's
    two.backup()
    latest_2 = [snap for snap in two.snapshots("api") if snap["host"] == "node-2"][-1]
    assert latest_2["host"] == "node-2"
    target = str(tmp_path / "out-2-again")
    two.run("restore", "api:latest", "--target", target, check=0)
    assert read_tree(target) == read_tree(tree_2)


def test_restore_all_reports_each_jobs_problem_and_restores_the_others(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    api, km = str(tmp_path / "api"), str(tmp_path / "km")
    make_tree(api, {"conf/server.xml": "<Server/>"})
    make_tree(km, {"conf/km.properties": "x=1\n"})
    agent.write_jobs(fs_job("api", api) + fs_job("km", km) + _command_job("settings", "k=v")
                     + fs_job("never", str(tmp_path / "never-backed-up")))
    agent.backup("api", "km", "settings")
    target = tmp_path / "out"
    target.mkdir()
    (target / "api").write_text("a file where the tree goes")
    (target / "settings").write_text("LOCAL")

    dry = agent.run("restore", "--all", "--target", str(target), "--overwrite", "if-changed", "--dry-run")
    assert (target / "settings").read_text() == "LOCAL"  # a dry run writes no dump
    assert not (target / "km").exists() and "would replace" in dry.stderr
    fresh = tmp_path / "fresh"
    agent.run("restore", "--all", "--target", str(fresh), "--dry-run")
    assert not (fresh / "settings").exists()

    result = agent.run("restore", "--all", "--target", str(target), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert set(documents) == {"api", "km", "settings", "never"}
    assert documents["never"]["snapshot"] is None and "no readable snapshot" in documents["never"]["errors"][0]
    assert "never" in result.stderr and "api" in documents["api"]["errors"][0]
    assert documents["km"]["errors"] == [] and read_tree(str(target / "km")) == read_tree(km)
    assert (target / "settings").read_text() == "LOCAL" and documents["settings"]["errors"]  # refused
    assert (target / "api").read_text() == "a file where the tree goes"


def test_a_damaged_latest_snapshot_document_is_said_when_latest_is_resolved(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    api = str(tmp_path / "api")
    make_tree(api, {"conf/server.xml": "v1"})
    agent.write_jobs(fs_job("api", api))
    agent.backup()
    make_tree(api, {"conf/server.xml": "v2"})
    [report] = agent.backup()
    with open(os.path.join(agent.repository, "snapshots", report["snapshot"] + ".json"), "w"):
        pass  # emptied
    for args in (["restore", "api:latest", "--target", str(tmp_path / "one")],
                 ["restore", "--all", "--target", str(tmp_path / "all")]):
        result = agent.run(*args, check=0)
        assert "cannot be read" in result.stderr and "latest readable" in result.stderr, result.stderr


def test_a_dump_restored_into_a_directory_is_named_where_it_went(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    agent.write_jobs(_command_job("settings", "k=v"))
    agent.backup()
    directory = tmp_path / "dumps"
    directory.mkdir()
    result = agent.run("restore", "settings:latest", "--target", str(directory), check=0)
    [written] = os.listdir(directory)
    assert (directory / written).read_text() == "k=v"
    assert result.stderr.rstrip().endswith(f"to {directory / written}"), result.stderr


def test_a_link_planted_at_dir_job_is_refused_for_that_job_and_never_followed(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    app, km = str(tmp_path / "app"), str(tmp_path / "km")
    make_tree(app, {"conf/server.xml": "<Server/>", "lib/a.jar": "a" * 5000})
    make_tree(km, {"conf/km.properties": "x=1\n"})
    agent.write_jobs(fs_job("app", app) + fs_job("km", km) + _command_job("settings", "k=v"))
    agent.backup()
    victim, dumps_victim = tmp_path / "victim", tmp_path / "dumps-victim"
    make_tree(str(victim), {"precious.txt": "precious"})
    dumps_victim.mkdir()
    os.chmod(victim, 0o711)
    os.utime(victim, ns=(1_600_000_000_000_000_000,) * 2)
    before = (read_tree(str(victim)), os.stat(victim).st_mode, os.stat(victim).st_mtime_ns)
    target = tmp_path / "dr"
    target.mkdir()
    os.symlink(victim, target / "app")  # a tree job's DIR/JOB
    os.symlink(dumps_victim, target / "settings")  # a dump job's: the dump replaces the link, not what it names

    for extra in (["--dry-run"], []):
        result = agent.run("restore", "--all", "--target", str(target), "--overwrite", "if-changed", "--delete",
                           "--json", *extra)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        documents = {document["job"]: document for document in json.loads(result.stdout)}
        [problem] = documents["app"]["errors"]
        assert problem == (f"--target: {target / 'app'} is a symbolic link: not followed (a link there could send "
                           "the restore outside its directory); remove it, or restore elsewhere")
        assert f"app: {problem}" in result.stderr
        assert documents["km"]["errors"] == [] and documents["settings"]["errors"] == []
        assert (read_tree(str(victim)), os.stat(victim).st_mode, os.stat(victim).st_mtime_ns) == before
        assert os.listdir(dumps_victim) == []
        assert os.path.islink(target / "app")
    assert read_tree(str(target / "km")) == read_tree(km)
    assert not os.path.islink(target / "settings") and (target / "settings").read_text() == "k=v"

    # the operator naming the link itself as the target of one snapshot: followed, as always
    agent.run("restore", "app:latest", "--target", str(target / "app"), check=0)
    assert read_tree(str(victim / "conf")) == read_tree(os.path.join(app, "conf"))


def test_restore_all_of_a_repository_that_cannot_be_opened_names_it_for_every_job(tmp_path):
    agent = new_agent(str(tmp_path / "node"))
    api = str(tmp_path / "api")
    make_tree(api, {"conf/server.xml": "<Server/>"})
    agent.write_jobs(fs_job("api", api) + _command_job("settings", "k=v"))
    agent.backup()
    config = os.path.join(agent.repository, "config.json")
    with open(config, "r+b") as handle:  # cut short
        handle.truncate(os.path.getsize(config) // 2)
    target = tmp_path / "out"
    result = agent.run("restore", "--all", "--target", str(target), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    documents = json.loads(result.stdout)
    assert [(document["job"], document["snapshot"], document["target"]) for document in documents] == [
        ("api", None, str(target / "api")), ("settings", None, str(target / "settings"))]
    for document in documents:
        [error] = document["errors"]
        assert error.startswith(f"the repository cannot be opened: {config}") and "not valid JSON" in error
    assert config in result.stderr and not target.exists()


def test_restore_all_of_thousands_of_files_written_by_several_processes_is_whole(tmp_path):
    """Above fanout.FAN_OUT_FILES the files are written by forked writer processes: the trees, hard links
    across parts, the counts and the JSON (printed once: no buffered output copied by a fork) are those of
    a restore in one process."""
    from agent.restorer.fanout import FAN_OUT_FILES

    agent = new_agent(str(tmp_path / "node"))
    api, km = str(tmp_path / "api"), str(tmp_path / "km")
    files = FAN_OUT_FILES // 2 + 100
    make_tree(api, {f"webapps/d{number % 40}/c{number}.class": f"class {number} " * (number % 50)
                    for number in range(files)})
    make_tree(km, {f"lib/d{number % 30}/c{number}.class": f"class {number} " * (number % 50 + 1)
                   for number in range(files)})
    os.link(os.path.join(api, "webapps/d0/c0.class"), os.path.join(api, "webapps/d39/last-name-of-c0"))
    agent.write_jobs(fs_job("api", api) + fs_job("km", km))
    agent.backup()

    target = str(tmp_path / "out")
    result = agent.run("restore", "--all", "--target", target, "--json", check=0)
    documents = {document["job"]: document for document in json.loads(result.stdout)}
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert read_tree(os.path.join(target, "api")) == read_tree(api)
    assert read_tree(os.path.join(target, "km")) == read_tree(km)
    first = os.stat(os.path.join(target, "api", "webapps/d0/c0.class"))
    assert os.stat(os.path.join(target, "api", "webapps/d39/last-name-of-c0")).st_ino == first.st_ino
    assert documents["api"]["errors"] == [] and documents["km"]["errors"] == []
    assert [documents[job]["files"] for job in ("api", "km")] == [files, files]
