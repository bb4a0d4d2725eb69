"""The backend conformance suite: every storage backend (agent.backend) passes every test here.

Parametrised over the backends: local directory, memory, S3 (a real server on loopback, and the same
with the local cache of immutable objects in front), and the fault-injecting wrapper with no fault set
(around local and memory), and the sealing wrapper of encrypted repositories (around local and memory). A
new backend is added to BACKENDS and must pass unchanged.
Backend-specific behaviour (the local layout, injected faults) is tested after the suite.
"""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest

from agent.backend import BackendError, FileInfo, Handle, Kind, LocalBackend, LockTimeout, NotFound, Span, open_backend
from agent.backend.base import Wrapper
from agent.backend.cache import CachedBackend
from agent.backend.faulty import Faults, FaultyBackend
from agent.backend.mem import MemBackend
from tests.unit.repo_helpers import deleted_descriptors

NAME_A = "a1" * 32
NAME_B = "b2" * 32
CONTENT_KINDS = [Kind.DATA, Kind.INDEX, Kind.SNAPSHOT, Kind.DAMAGE, Kind.KEYS, Kind.PACK_KEYS]


def _local(tmp_path):
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.create()
    return backend


def _s3(tmp_path, server, cache: bool = False):
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(server, str(tmp_path))
    made = open_backend(location, settings, str(tmp_path / "cache") if cache else None)
    made.create()
    return made


def _sealed(inner):
    """The wrapper an encrypted repository works through (agent.crypt.seal)."""
    from agent.crypt.keys import NodeKey
    from agent.crypt.seal import RepositoryCipher, SealedBackend

    return SealedBackend(inner, RepositoryCipher(inner, NodeKey.generate()))


BACKENDS = {
    "local": _local,
    "mem": lambda tmp_path: MemBackend(),
    "faulty-local": lambda tmp_path: FaultyBackend(_local(tmp_path)),
    "faulty-mem": lambda tmp_path: FaultyBackend(MemBackend()),
    "wrapper-mem": lambda tmp_path: Wrapper(MemBackend()),  # overriding nothing, it is the backend it wraps
    "sealed-local": lambda tmp_path: _sealed(_local(tmp_path)),
    "sealed-mem": lambda tmp_path: _sealed(MemBackend()),
    "s3": _s3,
    "s3-cached": lambda tmp_path, server: _s3(tmp_path, server, cache=True),
    # the files cache over a backend that needs no server (the S3 cases are left out of mutation runs)
    "cached-mem": lambda tmp_path: CachedBackend(MemBackend(), str(tmp_path / "cache")),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    if request.param.startswith("s3"):
        made = BACKENDS[request.param](tmp_path, request.getfixturevalue("s3_server"))
    else:
        made = BACKENDS[request.param](tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_saved_objects_load_back_whole_and_by_range(backend, kind):
    handle = Handle(kind, NAME_A)
    backend.save(handle, [b"hello ", bytearray(b"wide "), memoryview(b"world")])
    assert backend.load(handle) == b"hello wide world"
    assert backend.load(handle, 4, 6) == b"wide"
    assert backend.load(handle, -1, 11) == b"world"
    assert backend.load(handle, 100, 11) == b"world"  # a range past the end is cut short, not padded
    assert backend.load(handle, 5, 100) == b""
    assert backend.load(handle, 0, 6) == b""
    assert backend.stat(handle) == FileInfo(NAME_A, 16)


def test_read_ahead_changes_neither_bytes_nor_errors(backend):
    names = [f"{number:02x}" * 32 for number in range(7)]
    for number, name in enumerate(names[:6]):
        backend.save(Handle(Kind.DATA, name), [bytes([number]) * (1000 + number)])
    handles = [Handle(Kind.DATA, name) for name in names]  # the last one does not exist
    # whole objects, parts that cover the loads, parts that do not (a load outside what was named)
    spans = [Span(handle) for handle in handles[:3]] + [Span(handles[3], 5, 15), Span(handles[4], 0, 3),
                                                        Span(handles[5], 500, 2000), Span(handles[6], 0, 10)]
    with backend.read_ahead(spans + [Span(Handle(Kind.INDEX, NAME_A))]):
        for number, handle in enumerate(handles[:6]):
            assert backend.load(handle, 10, 5) == bytes([number]) * 10
            assert backend.load(handle, -1, 0) == bytes([number]) * (1000 + number)
        with pytest.raises(NotFound):
            backend.load(handles[6], 10, 0)
    with backend.read_ahead([Span(handle) for handle in handles]):  # left before anything was read
        pass
    assert backend.load(handles[2], 3, 0) == bytes([2]) * 3


def test_the_config_is_one_object(backend):
    handle = Handle(Kind.CONFIG, "config")
    assert backend.list(Kind.CONFIG) == []
    backend.save(handle, [b'{"format": 1}'])
    assert backend.load(handle) == b'{"format": 1}'
    assert backend.list(Kind.CONFIG) == [FileInfo("config", 13)]


def test_listing_is_per_kind_sorted_and_sized(backend):
    backend.save(Handle(Kind.INDEX, NAME_B), [b"bb"])
    backend.save(Handle(Kind.INDEX, NAME_A), [b"a"])
    backend.save(Handle(Kind.DATA, NAME_A), [b"pack"])
    backend.save(Handle(Kind.SNAPSHOT, NAME_B), [b"{}"])
    assert backend.list(Kind.INDEX) == [FileInfo(NAME_A, 1), FileInfo(NAME_B, 2)]
    assert backend.list(Kind.DATA) == [FileInfo(NAME_A, 4)]
    assert backend.list(Kind.SNAPSHOT) == [FileInfo(NAME_B, 2)]
    assert backend.list(Kind.DAMAGE) == []


@pytest.mark.parametrize("kind", [Kind.DATA, Kind.SNAPSHOT])
def test_missing_objects_are_not_found_and_named(backend, kind):
    handle = Handle(kind, NAME_A)
    for attempt in (lambda: backend.load(handle), lambda: backend.load(handle, 10, 0),
                    lambda: backend.stat(handle), lambda: backend.remove(handle)):
        with pytest.raises(NotFound, match=NAME_A):
            attempt()
    assert issubclass(NotFound, BackendError)
    assert isinstance(backend.location, str) and backend.location


def test_removed_objects_are_gone_and_others_stay(backend):
    backend.save(Handle(Kind.DATA, NAME_A), [b"one"])
    backend.save(Handle(Kind.DATA, NAME_B), [b"two"])
    assert backend.load(Handle(Kind.DATA, NAME_A), 3, 0) == b"one"  # may cache a descriptor
    backend.remove(Handle(Kind.DATA, NAME_A))
    with pytest.raises(NotFound):
        backend.load(Handle(Kind.DATA, NAME_A), 3, 0)
    assert backend.list(Kind.DATA) == [FileInfo(NAME_B, 3)]
    assert backend.load(Handle(Kind.DATA, NAME_B)) == b"two"


def test_saving_the_same_content_again_is_harmless(backend):
    handle = Handle(Kind.SNAPSHOT, NAME_A)
    backend.save(handle, [b"same"])
    backend.save(handle, [b"same"])
    assert backend.list(Kind.SNAPSHOT) == [FileInfo(NAME_A, 4)]
    assert backend.load(handle) == b"same"


def test_an_empty_object_is_an_object(backend):
    handle = Handle(Kind.SNAPSHOT, NAME_A)
    backend.save(handle, [])
    assert backend.load(handle) == b""
    assert backend.stat(handle).size == 0


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_names_that_could_escape_are_refused(backend, name):
    with pytest.raises(BackendError):
        backend.save(Handle(Kind.INDEX, name), [b"x"])


def test_released_resources_are_reopened_on_use(backend):
    handle = Handle(Kind.DATA, NAME_A)
    backend.save(handle, [b"0123456789"])
    assert backend.load(handle, 2, 3) == b"34"
    backend.release(Kind.DATA)
    assert backend.load(handle, 2, 5) == b"56"
    backend.close()
    assert backend.load(handle, 2, 7) == b"78"


def test_reads_from_many_threads_agree(backend):
    handles = [Handle(Kind.DATA, f"{number:02x}" * 32) for number in range(8)]
    for number, handle in enumerate(handles):
        backend.save(handle, [bytes([number]) * 4096])
    wrong = []

    def read(number: int) -> None:
        for round_ in range(50):
            handle = handles[(number + round_) % len(handles)]
            expected = bytes([handles.index(handle)]) * 16
            if backend.load(handle, 16, round_) != expected:
                wrong.append(handle)
            if round_ % 7 == 0:
                backend.release()

    threads = [threading.Thread(target=read, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_shared_locks_coexist_and_exclude_the_exclusive_one(backend):
    first = backend.lock(exclusive=False, purpose="backup a")
    second = backend.lock(exclusive=False, purpose="backup b")
    first.acquire(timeout=1)
    second.acquire(timeout=1)
    waits = []
    prune = backend.lock(exclusive=True, purpose="prune")
    with pytest.raises(LockTimeout):
        prune.acquire(timeout=0.2, on_wait=waits.append)
    assert waits and "repository lock" in waits[0]
    first.release()
    second.release()
    prune.acquire(timeout=1)
    backup = backend.lock(exclusive=False, purpose="backup c")
    with pytest.raises(LockTimeout):
        backup.acquire(timeout=0.2, on_wait=waits.append)
    prune.release()
    prune.release()  # idempotent
    with backup, pytest.raises(LockTimeout):
        backend.lock(exclusive=True, purpose="prune").acquire(timeout=0.2, on_wait=waits.append)
    backup.release()  # idempotent for a shared lock too: it must not count twice
    with backend.lock(exclusive=True, purpose="prune"), pytest.raises(LockTimeout, match="repository lock"):
        backend.lock(exclusive=False, purpose="backup").acquire(timeout=0.2, on_wait=waits.append)
    assert all(message.startswith("waiting for the repository lock") for message in waits)


def test_a_timeout_names_the_exclusive_holder(backend):
    waiter = backend.lock(exclusive=False, purpose="backup")
    with backend.lock(exclusive=True, purpose="prune on node-1"), pytest.raises(LockTimeout, match="prune on node-1"):
        waiter.acquire(timeout=0.2, on_wait=lambda message: None)


def test_a_waiter_gets_the_lock_once_it_is_released(backend):
    holder = backend.lock(exclusive=True, purpose="prune")
    holder.acquire(timeout=1)
    releaser = threading.Timer(0.2, holder.release)
    releaser.start()
    waiter = backend.lock(exclusive=False, purpose="backup")
    waiter.acquire(timeout=1.0, on_wait=lambda message: None)  # in time, however short the wait left
    waiter.release()
    releaser.join()


def test_a_lock_wait_ends_when_stopped(backend):
    holder = backend.lock(exclusive=True, purpose="prune")
    holder.acquire(timeout=1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(LockTimeout, match="stopped"):
        backend.lock(exclusive=False, purpose="backup").acquire(on_wait=lambda message: None, stop=stop)
    holder.release()


def test_leftovers_are_counted(backend):
    assert backend.remove_leftovers() >= 0
    backend.save(Handle(Kind.INDEX, NAME_A), [b"kept"])
    backend.remove_leftovers()
    assert backend.load(Handle(Kind.INDEX, NAME_A)) == b"kept"


def test_descriptions_name_the_object(backend):
    assert NAME_A in backend.describe(Handle(Kind.DATA, NAME_A))


# --- the local backend: the README's layout and POSIX details ---------------------------------------


def test_local_layout_is_the_documented_one(tmp_path):
    backend = _local(tmp_path)
    root = tmp_path / "repo"
    backend.save(Handle(Kind.CONFIG, "config"), [b"{}"])
    backend.save(Handle(Kind.DATA, NAME_A), [b"p"])
    backend.save(Handle(Kind.INDEX, NAME_A), [b"i"])
    backend.save(Handle(Kind.SNAPSHOT, NAME_A), [b"s"])
    backend.save(Handle(Kind.DAMAGE, NAME_A), [b"d"])
    assert (root / "config.json").read_bytes() == b"{}"
    assert (root / "data" / NAME_A[:2] / NAME_A).read_bytes() == b"p"
    assert (root / "index" / NAME_A).read_bytes() == b"i"
    assert (root / "snapshots" / (NAME_A + ".json")).read_bytes() == b"s"
    assert (root / "damage" / NAME_A).read_bytes() == b"d"
    assert sorted(os.listdir(root / "data")) == [f"{n:02x}" for n in range(256)]
    assert os.listdir(root / "tmp") == []
    for path in (root / "config.json", root / "data" / NAME_A[:2] / NAME_A, root / "damage"):
        assert path.stat().st_mode & 0o077 == 0


def test_local_stray_directories_and_links_are_no_objects(tmp_path):
    backend = _local(tmp_path)
    root = tmp_path / "repo"
    backend.save(Handle(Kind.INDEX, NAME_A), [b"index"])
    backend.save(Handle(Kind.DATA, NAME_A), [b"pack"])
    (root / "index" / NAME_B).mkdir()  # made by hand, not by a backup
    (root / "data" / NAME_A[:2] / NAME_B).mkdir()
    os.symlink(root / "index" / NAME_A, root / "snapshots" / (NAME_B + ".json"))
    assert backend.list(Kind.INDEX) == [FileInfo(NAME_A, 5)]
    assert backend.list(Kind.DATA) == [FileInfo(NAME_A, 4)]
    assert backend.list(Kind.SNAPSHOT) == []


def test_local_temp_files_are_invisible_and_removed_as_leftovers(tmp_path):
    backend = _local(tmp_path)
    root = tmp_path / "repo"
    (root / "tmp" / "data-crashed").write_bytes(b"half a pack")
    (root / "tmp" / "old-dir" / "sub").mkdir(parents=True)
    (root / "tmp" / "old-dir" / "sub" / "f").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_bytes(b"not the repository's")
    os.symlink(tmp_path / "outside", root / "tmp" / "link")
    (root / "snapshots" / ".tmp-123").write_bytes(b"{")
    assert backend.list(Kind.DATA) == [] and backend.list(Kind.SNAPSHOT) == []
    assert backend.remove_leftovers() == 3
    assert os.listdir(root / "tmp") == []
    assert (tmp_path / "outside" / "keep").read_bytes() == b"not the repository's"


def test_local_lock_is_the_documented_file_with_its_holder(tmp_path):
    backend = _local(tmp_path)
    with backend.lock(exclusive=True, purpose="prune"):
        holder = json.loads((tmp_path / "repo" / "lock.holder").read_text())
        assert holder["purpose"] == "prune" and holder["pid"] == os.getpid()
    assert (tmp_path / "repo" / "lock").exists() and not (tmp_path / "repo" / "lock.holder").exists()


def test_local_packs_removed_elsewhere_are_let_go_on_release(tmp_path):
    backend = _local(tmp_path)
    handle = Handle(Kind.DATA, NAME_A)
    backend.save(handle, [b"x" * 1000])
    before = deleted_descriptors()
    assert backend.load(handle, 10, 0) == b"x" * 10
    assert backend.cached_descriptors() == 1
    os.unlink(tmp_path / "repo" / "data" / NAME_A[:2] / NAME_A)  # another process's prune
    assert deleted_descriptors() == before + 1
    backend.release(Kind.DATA)
    assert backend.cached_descriptors() == 0
    assert deleted_descriptors() == before


def test_local_remove_closes_the_cached_descriptor(tmp_path):
    backend = _local(tmp_path)
    handle = Handle(Kind.DATA, NAME_A)
    backend.save(handle, [b"y" * 100])
    backend.load(handle, 1, 0)
    before = deleted_descriptors()
    backend.remove(handle)
    assert backend.cached_descriptors() == 0
    assert deleted_descriptors() == before


# --- the fault-injecting wrapper ----------------------------------------------------------------------


def test_faulty_fails_the_nth_save_and_stores_nothing():
    inner = MemBackend("mem:test/")
    backend = FaultyBackend(inner, Faults(fail_save=2, delay=0.001))
    assert backend.location == "mem:test/"
    backend.save(Handle(Kind.INDEX, NAME_A), [b"one"])
    with pytest.raises(OSError) as raised:
        backend.save(Handle(Kind.INDEX, NAME_B), [b"two"])
    assert raised.value.errno == errno.ENOSPC and raised.value.strerror == os.strerror(errno.ENOSPC)
    assert raised.value.filename == inner.describe(Handle(Kind.INDEX, NAME_B))
    assert backend.list(Kind.INDEX) == [FileInfo(NAME_A, 3)]
    backend.save(Handle(Kind.INDEX, NAME_B), [b"two"])  # only the Nth
    assert backend.saves == 3


def test_faulty_truncates_the_nth_save_of_a_kind():
    backend = FaultyBackend(MemBackend(), Faults(truncate_save=1, kinds=frozenset({Kind.DATA})))
    backend.save(Handle(Kind.INDEX, NAME_A), [b"index"])
    backend.save(Handle(Kind.DATA, NAME_A), [b"abcd", b"efgh"])
    assert backend.load(Handle(Kind.DATA, NAME_A)) == b"abcd"
    assert backend.load(Handle(Kind.INDEX, NAME_A)) == b"index"


def test_faulty_listing_raises():
    backend = FaultyBackend(MemBackend(), Faults(fail_list=True))
    with pytest.raises(BackendError):
        backend.list(Kind.SNAPSHOT)


def test_local_reads_past_the_descriptor_cache_open_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.backend.local._MAX_CACHED", 1)
    backend = _local(tmp_path)
    first, second = Handle(Kind.DATA, NAME_A), Handle(Kind.DATA, NAME_B)
    backend.save(first, [b"first pack"])
    backend.save(second, [b"second pack"])
    open_before = len(os.listdir("/proc/self/fd"))
    assert backend.load(first, 5, 0) == b"first"
    assert backend.load(second, 6, 0) == b"second"  # the cache is full: opened and closed again
    assert backend.load(second) == b"second pack" and backend.load(first, -1, 6) == b"pack"
    assert backend.cached_descriptors() == 1 and len(os.listdir("/proc/self/fd")) == open_before + 1
    backend.close()
    assert len(os.listdir("/proc/self/fd")) == open_before
