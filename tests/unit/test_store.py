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
    config = tmp_path / "r" / "config.json"
    config.write_text(config.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(Exception, match="format 99 is not supported"):
        Repository.open(repo.location)


def test_chunking_localises_an_edit(tmp_path):
    repo = Repository.open(str(tmp_path / "r"), create=True)
    data = bytearray(os.urandom(8 * 1024 * 1024))
    before = [bytes(piece) for piece in repo.chunker.split(bytes(data))]
    data[4_000_000:4_000_010] = b"X" * 10
    after = [bytes(piece) for piece in repo.chunker.split(bytes(data))]
    changed = set(after) - set(before)
    assert len(before) > 10 and 1 <= len(changed) <= 2


def test_index_answers_the_same_before_and_after_its_dict_is_built(tmp_path):
    """The first lookups scan the raw index files; later ones use the dict. Both must agree, also for
    an id whose bytes occur in the index across two entries, and for a blob named by two files."""
    from agent.backend import LocalBackend
    from agent.store.index import BlobLocation, Index

    backend = LocalBackend(str(tmp_path / "r"))
    backend.create()
    directory = tmp_path / "r" / "index"
    ids = [os.urandom(32) for _ in range(200)]
    writing = Index(backend)
    for pack, chosen in ((b"A" * 32, ids[:100]), (b"B" * 32, ids[50:150]), (b"C" * 32, ids[150:])):
        name = writing.write([(blob_id, BlobLocation(pack, n * 10, 10, 20, 1)) for n, blob_id in enumerate(chosen)])
    data = (directory / name).read_bytes()
    body = data[5 + 4 + 32:]
    straddling = body[49 * 3 + 20: 49 * 3 + 52]  # the end of entry 3 and the start of entry 4
    probes = [straddling, ids[60], ids[10], ids[199], os.urandom(32)] + ids[::7] + [straddling]
    scanning, reference = Index(backend), Index(backend)
    assert len(reference) == 200  # builds its dict at once
    answers = []
    for probe in probes:
        answers.append((scanning.get(probe), probe in scanning))
        if len(answers) == 5:
            assert scanning._blobs is None  # still answering by scanning
    assert scanning._blobs is not None  # and past the scans, by the dict
    assert answers == [(reference.get(probe), probe in reference) for probe in probes]
    assert answers[0] == (None, False) and answers[1][0].pack in (b"A" * 32, b"B" * 32) and answers[1][1]
