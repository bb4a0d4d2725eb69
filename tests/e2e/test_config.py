"""Configuration errors as an operator sees them: every problem, named by file, job and key; exit 2."""

from __future__ import annotations

import os
import shutil

from tests.helpers import fs_job

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_problem_is_reported_with_file_job_and_key(agent, tmp_path):
    agent.write_jobs(
        '[jobs.api]\ntype = "fs"\npath = "relative/path"\nevery = "24x"\nexlcude = ["logs/"]\n'
        'on_change = "yes"\n'
        '[jobs.db]\ntype = "mysql"\ndatabase = "analytics"\nevery = "6h..4h"\n'
        '[jobs.web]\ntype = "fs"\npath = "/srv"\nevery = "1h"\non_change = true\nquiet = "20m"\n'
        'max_delay = "10m"\n'
        '[jobs.nope]\ntype = "ftp"\n', "a.toml")
    agent.write_jobs(fs_job("api", "/services/api"), "b.toml")
    result = agent.run("check-config")
    assert result.returncode == 2
    a = os.path.join(agent.base, "conf.d", "a.toml")
    b = os.path.join(agent.base, "conf.d", "b.toml")
    lines = result.stderr.splitlines()
    expected_prefixes = [
        f"{a}: jobs.api.path: must be an absolute path",
        f"{a}: jobs.api.every: '24x' is not a duration",
        f"{a}: jobs.api.exlcude: unknown key",
        f"{a}: jobs.api.on_change: must be true or false",
        f"{a}: jobs.db.every: range '6h..4h' has its low end above its high end",
        f"{a}: jobs.web.quiet: must not be longer than max_delay",
        f"{a}: jobs.nope.type: must be one of",
        f"{b}: jobs.api: defined twice: here and in {a}",
    ]
    for prefix in expected_prefixes:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)


def test_missing_paths_are_warnings_and_the_shipped_policy_is_valid(agent, tmp_path):
    shutil.rmtree(os.path.join(agent.base, "conf.d"))
    shutil.copytree(os.path.join(REPO_ROOT, "conf.d"), os.path.join(agent.base, "conf.d"))
    result = agent.run("check-config", "--json")
    assert result.returncode == 0, result.stderr
    import json

    jobs = {job["name"]: job for job in json.loads(result.stdout)["jobs"]}
    assert len(jobs) == 12
    assert [n for n, j in jobs.items() if j["type"] == "mysql"] == [
        "db-analytics", "db-provisioning", "db-console", "db-credentials", "db-enstratus-console"]
    assert jobs["db-analytics"]["every"] == jobs["db-provisioning"]["every"] == jobs["db-riak"]["every"] == "4h..6h"
    assert jobs["db-credentials"]["every"] == "24h" and jobs["db-riak"]["type"] == "riak"
    services = sorted(n for n, j in jobs.items() if j["type"] == "fs")
    assert services == [f"services-{s}" for s in sorted(["api", "console", "dispatcher", "km", "monitor", "worker"])]
    assert "on change" in jobs["services-km"]["schedule"]
    if not os.path.exists("/services/km"):
        assert "jobs.services-km.path: /services/km does not exist (yet)" in result.stderr


def test_bad_toml_and_missing_config_file(agent, tmp_path):
    agent.write_jobs("[jobs.x\n", "broken.toml")
    result = agent.run("check-config")
    assert result.returncode == 2 and "broken.toml: invalid TOML" in result.stderr
    missing = agent.run("--config", "/nonexistent/agent.toml", "check-config")
    assert missing.returncode == 2


def test_config_from_environment(agent, tmp_path):
    import subprocess

    from tests.helpers import agent_command

    env = {**os.environ, "BACKUP_AGENT_CONFIG": agent.config}
    result = subprocess.run([*agent_command(), "check-config"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and agent.config in result.stdout


def test_a_path_of_the_wrong_kind_is_an_error_naming_file_job_and_key(agent, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    plain = tmp_path / "plain.txt"
    plain.write_text("not a tree")
    link = tmp_path / "link"
    link.symlink_to(plain)
    missing = tmp_path / "later"
    agent.write_jobs(fs_job("file", str(plain)) + fs_job("link", str(link)) + fs_job("later", str(missing))
                     + f'[jobs.riak]\ntype = "riak"\nevery = "4h"\npaths = ["{tree}", "{plain}"]\n'
                     + f'[jobs.lite]\ntype = "sqlite"\nevery = "4h"\npath = "{tree}"\n', "kinds.toml")
    result = agent.run("check-config")
    assert result.returncode == 2, result.stderr
    source = os.path.join(agent.base, "conf.d", "kinds.toml")
    lines = result.stderr.splitlines()
    for expected in (f"{source}: jobs.file.path: {plain} is not a directory",
                     f"{source}: jobs.link.path: {link} is not a directory",
                     f"{source}: jobs.riak.paths: {plain} is not a directory",
                     f"{source}: jobs.lite.path: {tree} is a directory, not a file"):
        assert any(line.endswith(expected) for line in lines), (expected, lines)
    assert not any("jobs.riak.paths: " + str(tree) in line or "jobs.later" in line for line in lines)
    agent.write_jobs(fs_job("later", str(missing)) + fs_job("tree", str(tree)), "kinds.toml")
    result = agent.run("check-config")
    assert result.returncode == 0, result.stderr
    assert f"warning: {source}: jobs.later.path: {missing} does not exist (yet)" in result.stderr
