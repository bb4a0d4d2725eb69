"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from agent.backend import LocalBackend
from agent.backend.mem import MemBackend
from agent.store import Repository


@pytest.fixture(params=["local", "mem"])
def repo(request, tmp_path):
    """A new repository on each backend a test of the operations runs against."""
    backend = LocalBackend(str(tmp_path / "repo")) if request.param == "local" else MemBackend()
    made = Repository.open(backend, create=True)
    yield made
    made.close()
