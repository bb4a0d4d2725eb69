"""Fixtures: a temp configuration for the real command, and a guard against leaked threads."""

from __future__ import annotations

import os
import threading

import pytest

from tests.helpers import Agent


@pytest.fixture
def agent(tmp_path) -> Agent:
    base = str(tmp_path / "agent")
    os.makedirs(os.path.join(base, "conf.d"))
    config = os.path.join(base, "agent.toml")
    repository = os.path.join(base, "repo")
    state_dir = os.path.join(base, "state")
    with open(config, "w") as handle:
        handle.write(f'host = "test-node"\nrepository = "{repository}"\nstate_dir = "{state_dir}"\n')
    return Agent(base, config, repository, state_dir)


@pytest.fixture(autouse=True)
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    leaked = [thread for thread in threading.enumerate() if thread not in before and thread.is_alive()]
    for thread in leaked:
        thread.join(timeout=5)
    still = [thread.name for thread in leaked if thread.is_alive()]
    assert not still, f"threads leaked by the test: {still}"


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    from tests.fixtures.mariadb import start_mariadb

    server = start_mariadb(str(tmp_path_factory.mktemp("mariadb")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    from tests.fixtures.postgres import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def collector_db(request, tmp_path) -> str:
    """A fresh, empty collector database URL on each backend: one suite, both engines."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"collector_{len(server.databases)}")


@pytest.fixture
def start_collector(tmp_path):
    """start_collector(db=None, port=0, extra=()) -> a running collector process; all are stopped after."""
    from tests.fixtures.collector import Collector

    started = []
    tokens = str(tmp_path / "tokens.toml")

    def start(db=None, port: int = 0, extra=()):
        collector = Collector(str(tmp_path), tokens, db or f"sqlite:///{tmp_path}/collector.db", port, list(extra))
        started.append(collector)
        return collector.start()

    yield start
    for collector in started:
        collector.stop()
