"""Fixtures: a temp configuration for the real command, and a guard against leaked threads."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
from typing import Callable, Iterator, List

import pytest

from tests.helpers import Agent, new_agent


@pytest.fixture
def agent(tmp_path) -> Agent:
    return new_agent(str(tmp_path / "agent"))


@pytest.fixture
def shared_tmp() -> Iterator[pathlib.Path]:
    """A temp dir that other users may traverse (0755), outside pytest's own base: pytest resets that to
    0700 whenever a pytest process starts, which would lock an unprivileged test's user out midway.
    Removed afterwards whoever owns what is inside."""
    path = tempfile.mkdtemp(prefix="backup-agent-shared-")
    os.chmod(path, 0o755)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    leaked = [thread for thread in threading.enumerate() if thread not in before and thread.is_alive()]
    for thread in leaked:
        thread.join(timeout=5)
    still = [thread.name for thread in leaked if thread.is_alive()]
    assert not still, f"threads leaked by the test: {still}"


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[str], str]]:
    """tmpfs(size) -> the path of a tmpfs of `size` (mount's form: "2m") mounted for the test (root only),
    every one unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: List[str] = []

    def mount(size: str) -> str:
        path = str(tmp_path / f"tmpfs-{len(mounted)}")
        os.mkdir(path)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", path]).returncode != 0:
                subprocess.run(["umount", "-l", path], check=True)


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


@pytest.fixture(scope="session")
def s3_server():
    """One real S3 server (rclone serve s3) on loopback for the session; each test uses a prefix of its own."""
    from tests.fixtures.s3 import S3Server

    server = S3Server(tempfile.mkdtemp(prefix="backup-agent-s3-"))
    try:  # removed also when the server cannot start (the test then fails under CI, else skips)
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def s3_proxy(s3_server):
    """A fault-injecting proxy in front of the session's S3 server, for this test only."""
    from tests.fixtures.s3 import S3Proxy

    proxy = S3Proxy(s3_server.url)
    yield proxy
    proxy.close()
