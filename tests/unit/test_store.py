"""The repository's own contract: dedup, compression, id checks, crash-safe creation."""

from __future__ import annotations

import os

import pytest

from agent.store import DamagedBlobError, Repository


def test_dedup_across_writers_and_content_is_checked(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    writer = repo.writer()
    text = b"<Connector port='8080'/>\n" * 10000
    first, new1 = writer.save(text)
    again, new2 = writer.save(text)
    writer.flush()
    assert first == again and new1 and not new2
    other = Repository.open(str(tmp_path / "r")).writer()
    assert other.save(text) == (first, False)
    assert writer.stored_bytes < len(text) / 20  # compressed
    assert repo.read_blob(first) == text
    with pytest.raises(DamagedBlobError):
        repo.read_blob(b"\0" * 32)


def test_incompressible_data_is_stored_raw(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    writer = repo.writer()
    data = os.urandom(500_000)
    blob_id, _ = writer.save(data)
    writer.flush()
    assert writer.stored_bytes == len(data)
    assert repo.read_blob(blob_id) == data


def test_interrupted_creation_is_completed_on_next_open(tmp_path):
    path = tmp_path / "r"
    (path / "data").mkdir(parents=True)  # a crash left directories but no config.json
    with pytest.raises(Exception, match="no repository"):
        Repository.open(str(path))
    repo = Repository.open(str(path), create=True)
    assert repo.exists() and len(os.listdir(path / "data")) == 256


def test_refuses_unknown_format(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    with open(repo.config_path) as handle:
        text = handle.read().replace('"format": 1', '"format": 99')
    with open(repo.config_path, "w") as handle:
        handle.write(text)
    with pytest.raises(Exception, match="format 99 is not supported"):
        Repository.open(repo.path)


def test_chunking_localises_an_edit(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    data = bytearray(os.urandom(8 * 1024 * 1024))
    before = [bytes(piece) for piece in repo.chunker.split(bytes(data))]
    data[4_000_000:4_000_010] = b"X" * 10
    after = [bytes(piece) for piece in repo.chunker.split(bytes(data))]
    changed = set(after) - set(before)
    assert len(before) > 10 and 1 <= len(changed) <= 2
