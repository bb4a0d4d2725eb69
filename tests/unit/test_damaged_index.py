"""A damaged or lost index file (agent.store.index): the packs it named are indexed from their own blob
lists, so backups, restores and verify keep working; verify names the file and prune rewrites the index.
Every way an index file can be unusable, on the local and the memory backend, plain and encrypted."""

from __future__ import annotations

import errno
import os
from typing import Callable, Dict, Optional

import pytest

from agent.backend import Backend, Handle, Kind, LocalBackend
from agent.backend.base import Wrapper
from agent.backend.mem import MemBackend
from agent.checker import verify_repository
from agent.config.model import Retention
from agent.crypt import EncryptionSettings
from agent.crypt.keys import generate_identity
from agent.pruner import prune_repository
from agent.store import Repository
from agent.store.pack import PackWriter, read_trailer, read_trailer_range
from agent.store.tree import read_tree
from tests.unit.repo_helpers import store_files

KEEP = {"svc": Retention(10, 0, 0, 0)}


def _flip(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)


DAMAGE: Dict[str, Optional[Callable[[bytes], bytes]]] = {
    "empty": lambda data: b"",
    "truncated-mid-entry": lambda data: data[:-7],
    "truncated-at-an-entry": lambda data: data[:-49],
    "flipped-byte": _flip,
    "not-an-index": lambda data: b'{"index": "not one"}',
    "deleted": None,
}


@pytest.fixture(params=["local", "mem", "encrypted"])
def backend(request, tmp_path) -> Backend:
    """The raw storage of a new repository (encrypted: what is under the sealing)."""
    inner: Backend = LocalBackend(str(tmp_path / "repo")) if request.param == "local" else MemBackend()
    settings = None
    if request.param == "encrypted":
        identity = str(tmp_path / "identity")
        settings = EncryptionSettings(recipients=(generate_identity(identity),), identity_file=identity,
                                      node_key_file=str(tmp_path / "node.key"))
    Repository.open(inner, create=True, encryption=settings).close()
    inner.settings = settings  # type: ignore[attr-defined]  # read back by _open
    return inner


def _open(backend: Backend) -> Repository:
    return Repository.open(backend, encryption=backend.settings)  # type: ignore[attr-defined]


def _index_file_of(repo: Repository, blob_id: bytes) -> str:
    """The name of the index file that names `blob_id`'s pack."""
    pack = repo.index.get(blob_id).pack
    for name in repo.index.files:
        if pack in repo.backend.load(Handle(Kind.INDEX, name)):
            return name
    raise AssertionError("no index file names the pack")


def _damage(backend: Backend, name: str, how: Optional[Callable[[bytes], bytes]]) -> None:
    handle = Handle(Kind.INDEX, name)
    data = backend.load(handle)
    backend.remove(handle)
    if how is not None:
        backend.save(handle, [how(data)])


def _contents(repo: Repository, snapshot) -> Dict[str, bytes]:
    return {entry.path: b"".join(repo.read_blob(chunk) for chunk in entry.chunks)
            for entry in read_tree(repo, snapshot.tree) if entry.type == "file"}


@pytest.mark.parametrize("how", list(DAMAGE), ids=list(DAMAGE))
def test_the_packs_of_a_damaged_index_file_are_indexed_from_the_packs(backend, how):
    repo = _open(backend)
    files = {"a": os.urandom(50_000), "b": b"<Server/>" * 5000}
    first = store_files(repo, "svc", files)
    data_blob = next(entry.chunks[0] for entry in read_tree(repo, first.tree) if entry.path == "a")
    damaged = _index_file_of(repo, data_blob)
    intact = [name for name in repo.index.files if name != damaged]
    _damage(backend, damaged, DAMAGE[how])

    repo = _open(backend)
    assert _contents(repo, first) == files  # restore reads every blob, checked against its id
    writer = repo.writer()
    assert writer.save(files["a"]) == (data_blob, False)  # a backup does not store it again
    writer.flush()
    problems = repo.index_problems()
    if DAMAGE[how] is None:  # a lost file leaves nothing to name; verify has nothing to complain of
        assert problems == []
    else:
        assert len(problems) == 1 and backend.describe(Handle(Kind.INDEX, damaged)) in problems[0]
        assert "`prune` rewrites the index" in problems[0]
    result = verify_repository(_open(backend), read_data=True)
    assert not result.damaged and result.snapshots == 1
    if DAMAGE[how] is None:
        assert result.ok
    else:
        assert [problem for problem in result.problems if damaged in problem] == result.problems != []

    prune_repository(_open(backend), KEEP)
    names = {info.name for info in backend.list(Kind.INDEX)}
    assert damaged not in names and not set(intact) & names  # one new, complete index
    after = _open(backend)
    assert _contents(after, first) == files
    assert after.index_problems() == [] and after.index.rebuilt == set()
    assert verify_repository(after, read_data=True).ok


def test_an_index_file_that_cannot_be_read_is_set_aside_like_a_damaged_one(tmp_path):
    """An I/O error on one index file (a bad sector) must not stop backups and restores either."""

    class FailingIndexLoads(Wrapper):  # the disk error cannot be had here: injected at the backend
        broken = ""

        def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
            if handle == Handle(Kind.INDEX, self.broken):
                raise OSError(errno.EIO, os.strerror(errno.EIO), handle.name)
            return self.inner.load(handle, length, offset)

    inner = LocalBackend(str(tmp_path / "repo"))
    repo = Repository.open(inner, create=True)
    snap = store_files(repo, "svc", {"a": b"alpha" * 1000})
    failing = FailingIndexLoads(inner)
    failing.broken = repo.index.files[0]
    reading = Repository.open(failing)
    assert _contents(reading, snap) == {"a": b"alpha" * 1000}
    [problem] = reading.index_problems()
    assert failing.broken in problem and "Input/output error" in problem


def test_a_pack_whose_blob_list_cannot_be_read_is_named_and_kept_while_a_snapshot_misses_blobs(repo):
    snap = store_files(repo, "svc", {"a": os.urandom(20_000)})
    [chunk] = next(entry.chunks for entry in read_tree(repo, snap.tree) if entry.chunks)
    pack = repo.index.get(chunk).pack
    data = repo.backend.load(Handle(Kind.DATA, pack.hex()))
    for name in repo.index.files:
        repo.backend.remove(Handle(Kind.INDEX, name))  # every index file lost ...
    repo.backend.remove(Handle(Kind.DATA, pack.hex()))
    repo.backend.save(Handle(Kind.DATA, pack.hex()), [data[:-3]])  # ... and the data pack's trailer torn
    reading = Repository.open(repo.backend)
    reading.index.reload()
    [problem] = reading.index_problems()
    assert pack.hex() in problem and "blob list cannot be read" in problem
    result = verify_repository(reading)
    assert not result.ok and any(pack.hex() in problem for problem in result.problems)
    prune_repository(Repository.open(repo.backend), KEEP)
    assert pack in repo.packs()  # it may hold what the snapshot misses: not deleted on a guess


def test_a_pack_no_index_names_and_no_snapshot_needs_is_still_removed_by_prune(repo):
    """A backup killed between its packs and its index: the pack is indexed in memory (its blobs are
    found) but is garbage, and prune deletes it."""
    kept = store_files(repo, "svc", {"a": b"kept" * 1000})
    writer = PackWriter(repo.backend, repo.cipher)
    orphan = os.urandom(3000)
    writer.add(repo.hash_blob(orphan), orphan, len(orphan), 0)
    [(blob_id, loc)] = writer.finish()
    reading = Repository.open(repo.backend)
    assert reading.read_blob(blob_id) == orphan and loc.pack in reading.index.rebuilt
    assert reading.index_problems() == [] and verify_repository(reading).ok
    prune_repository(Repository.open(repo.backend), KEEP)
    assert loc.pack not in repo.packs()
    assert _contents(Repository.open(repo.backend), kept) == {"a": b"kept" * 1000}


def test_a_long_trailer_is_read_by_range_and_agrees_with_the_whole_pack():
    backend = MemBackend()
    writer = PackWriter(backend)
    for number in range(3000):  # 3000 entries: a trailer longer than the first tail read
        blob = number.to_bytes(4, "big") * 8
        writer.add(blob, blob, len(blob), 0)
    writer.finish()
    [info] = backend.list(Kind.DATA)
    data = backend.load(Handle(Kind.DATA, info.name))
    read = []

    def load(offset: int, length: int) -> bytes:
        read.append(length)
        return data[offset:offset + length]

    assert read_trailer_range(load, len(data)) == read_trailer(data) and len(read_trailer(data)) == 3000
    assert len(read) == 3
    corrupt = bytearray(data)
    corrupt[-5] ^= 0xFF  # the count's top byte: more entries than the pack holds
    assert read_trailer(bytes(corrupt)) is None
