"""The command's messages, as an operator meets them: one answer for an unknown job from every command,
--config on either side of the command, a missing configuration that says how to name another, one
error prefix, plurals, and no Python literals in human output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.helpers import agent_command, fs_job, make_tree, new_agent

UNKNOWN = "backup-agent: error: unknown job 'nope' (known: one, two)\n"


@pytest.fixture
def two_jobs(agent, tmp_path):
    make_tree(str(tmp_path / "one"), {"a.txt": "a"})
    make_tree(str(tmp_path / "two"), {"b.txt": "b", "c.txt": "c"})
    agent.write_jobs(fs_job("one", str(tmp_path / "one")) + fs_job("two", str(tmp_path / "two")))
    return agent


@pytest.mark.parametrize("argv", [
    ["backup", "nope"], ["backup", "one", "nope"], ["restore", "nope:latest", "--target", "x"],
    ["restore", "nope:latest~1", "--target", "x"], ["snapshots", "nope"], ["snapshots", "nope", "--json"],
    ["ls", "nope:latest"], ["diff", "one:latest", "nope:latest~2"], ["find", "x", "--job", "nope"],
    ["forget", "nope:latest"], ["pause", "nope"], ["resume", "nope"], ["status", "nope"], ["status", "nope", "--json"],
])
def test_an_unknown_job_gets_the_same_answer_from_every_command(two_jobs, argv):
    two_jobs.backup("one")  # a repository exists: the answer does not depend on there being none
    result = two_jobs.run(*argv)
    assert (result.returncode, result.stderr, result.stdout) == (2, UNKNOWN, "")


def test_a_removed_job_still_lists_its_snapshots(two_jobs, tmp_path):
    two_jobs.backup("one")
    two_jobs.write_jobs(fs_job("two", str(tmp_path / "two")))
    assert [row["job"] for row in two_jobs.snapshots("one")] == ["one"]


def test_config_is_accepted_before_or_after_the_command(two_jobs):
    before = two_jobs.run("check-config", "--json", check=0).stdout  # helpers put it before
    import subprocess

    after = subprocess.run([*agent_command(), "check-config", "--config", two_jobs.config, "--json"],
                           capture_output=True, text=True, timeout=60)
    assert (after.returncode, after.stdout) == (0, before)
    both = subprocess.run([*agent_command(), "--config", "/nonexistent.toml", "status", "--config",
                           two_jobs.config], capture_output=True, text=True, timeout=60)
    assert both.returncode == 0, both.stderr  # the one after the command is nearer: it wins


def test_a_missing_configuration_says_how_to_name_another(tmp_path):
    import subprocess

    missing = str(tmp_path / "agent.toml")
    env = {**os.environ, "BACKUP_AGENT_CONFIG": missing}
    result = subprocess.run([*agent_command(), "snapshots"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"backup-agent: error: {missing}: no such configuration file")
    assert "--config FILE" in result.stderr and "$BACKUP_AGENT_CONFIG" in result.stderr


def test_every_error_has_the_one_prefix(two_jobs):
    for argv in (["backup"], ["restore", "0000deadbeef", "--target", "x"], ["pause", "--for", "soon"]):
        result = two_jobs.run(*argv)
        assert result.returncode == 2
        assert result.stderr.startswith("backup-agent: error: "), (argv, result.stderr)
    two_jobs.write_jobs('[jobs.bad]\ntype = "fs"\n', "bad.toml")
    result = two_jobs.run("status")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "backup-agent: error: the configuration has 2 problems:"
    assert all(line.startswith(os.path.join(two_jobs.base, "conf.d", "bad.toml") + ": jobs.bad.")
               for line in lines[1:]), lines


def test_warnings_have_the_prefix_too(two_jobs, tmp_path):
    two_jobs.write_jobs(fs_job("later", str(tmp_path / "not-yet")), "later.toml")
    result = two_jobs.run("check-config", check=0)
    assert result.stderr.startswith("backup-agent: warning: "), result.stderr
    assert "later.path" in result.stderr or "not-yet" in result.stderr


def test_human_output_has_plurals_and_no_python_literals(two_jobs):
    outputs = [two_jobs.run("backup", "one", check=0).stdout, two_jobs.run("backup", "two", check=0).stdout]
    assert "one: ok snapshot" in outputs[0] and ", 1 file, " in outputs[0]
    assert ", 2 files, " in outputs[1]
    for argv in (["check-config"], ["snapshots"], ["status"], ["verify"], ["prune", "--dry-run"], ["reports"],
                 ["backup", "--all"]):
        result = two_jobs.run(*argv, check=0)
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    assert not re.search(r"\b(True|False|None)\b", text), text
    assert not re.search(r"\b1 (files|snapshots|jobs|blobs|packs)\b", text), text
    assert "2 jobs" in text and "1 file " in text


def test_the_collector_prints_the_sqlite_url_as_written(start_collector, tmp_path):
    url = f"sqlite:///{tmp_path}/fleet.db"
    collector = start_collector(db=url)
    assert f"(storage {url}," in collector.text()


def test_names_that_are_not_utf8_are_shown_escaped_by_every_listing(agent, tmp_path, monkeypatch):
    """A snapshot holding b'd\\xfe/f\\xfd': ls, find and diff show `d\\xfe/f\\xfd`, as reports do, in text
    and JSON, even on a strict UTF-8 stdout (a UTF-8 locale: before, a UnicodeEncodeError traceback)."""
    src = tmp_path / "src"
    make_tree(str(src), {"a.txt": "a"})
    agent.write_jobs(fs_job("one", str(src)))
    agent.backup("one")
    os.makedirs(os.path.join(os.fsencode(src), b"d\xfe"))
    with open(os.path.join(os.fsencode(src), b"d\xfe", b"f\xfd"), "w") as handle:
        handle.write("x")
    agent.backup("one")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8:strict")
    for argv, line in [(["ls", "one:latest"], r"  d\xfe/f\xfd"), (["find", "f*"], r"  d\xfe/f\xfd  1 B"),
                       (["diff", "one:latest~1", "one:latest"], r"+    d\xfe/f\xfd")]:
        result = agent.run(*argv, check=0)
        assert line in result.stdout and "\udcfe" not in result.stdout, result.stdout
        data = agent.run(*argv, "--json", check=0).stdout
        assert "\\\\xfe/f\\\\xfd" in data and "\\udc" not in data, data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a repository another user may not lock")
def test_a_repository_the_user_may_not_lock_is_an_error_naming_it_not_a_traceback(shared_tmp):
    """An operator's restore as an unprivileged user (CAP_DAC_READ_SEARCH only: it may read, not write, the
    root-owned repository): one prefixed line naming the lock file, exit 1."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    agent = new_agent(str(shared_tmp / "agent"))
    os.chmod(agent.base, 0o755)
    make_tree(str(shared_tmp / "src"), {"a.txt": "a"})
    agent.write_jobs(fs_job("one", str(shared_tmp / "src")))
    agent.backup("one")
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    for argv in (["restore", "one:latest", "--target", str(shared_tmp / "out")], ["verify"], ["prune"]):
        result = agent.run(*argv, user=user)
        lock = os.path.join(agent.repository, "lock")
        assert (result.returncode, result.stderr) == (1, f"backup-agent: error: {lock}: Permission denied\n")


def test_a_reader_that_stops_reading_ends_the_listing_quietly(two_jobs):
    two_jobs.backup("one")
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -0`: nobody reads, every write is EPIPE
    try:
        result = subprocess.run([*agent_command(), "--config", two_jobs.config, "find", "*"], stdout=write_end,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, b"")


def test_a_damaged_repository_is_a_failure_and_a_missing_one_a_usage_error(two_jobs):
    """Exit 1 for a repository whose config.json is garbage (a check that failed), 2 for none at all (the
    configuration names the wrong place)."""
    for argv in (["ls", "one:latest"], ["restore", "one:latest", "--target", "/nonexistent/x"]):
        missing = two_jobs.run(*argv)
        assert missing.returncode == 2 and "no repository here" in missing.stderr, missing.stderr
    two_jobs.backup("one")
    config = os.path.join(two_jobs.repository, "config.json")
    with open(config, "w") as handle:
        handle.write("garbage{")
    for argv in (["verify"], ["ls", "one:latest"], ["prune"], ["find", "*"]):
        damaged = two_jobs.run(*argv)
        assert damaged.returncode == 1 and damaged.stderr.startswith(f"backup-agent: error: {config}: "), damaged


def test_a_damaged_snapshot_document_is_one_prefixed_warning(two_jobs):
    first = two_jobs.backup("one")[0]["snapshot"]
    make_tree(os.path.join(two_jobs.base, "..", "one"), {"a.txt": "changed"})
    two_jobs.backup("one")
    document = os.path.join(two_jobs.repository, "snapshots", first + ".json")
    with open(document, "r+b") as handle:
        handle.truncate(20)  # a power loss on a filesystem without data journaling
    for argv in (["snapshots"], ["prune", "--dry-run"]):
        result = two_jobs.run(*argv, check=0)
        [line] = [line for line in result.stderr.splitlines() if first in line]
        assert line.startswith(f"backup-agent: warning: snapshot {first} is damaged: {document}"), line


@pytest.mark.parametrize("argv", [["forget"], ["find"], ["restore", "x:latest", "--overwrite", "sometimes"],
                                  ["nope"], ["ls", "x:latest", "--bogus"]])
def test_usage_errors_have_the_one_prefix(two_jobs, argv):
    result = two_jobs.run(*argv)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: backup-agent")
    [message] = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert message.startswith("backup-agent: error: "), result.stderr
