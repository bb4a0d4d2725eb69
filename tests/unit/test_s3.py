"""The pieces of the S3 backend that need no server: location parsing, the credentials file, the cache of
immutable objects, parallel pack uploads; and the lock objects against the real loopback server."""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import List

import pytest

from agent.backend import BackendError, Handle, Kind, Span, open_backend
from agent.backend.cache import CachedBackend
from agent.backend.mem import MemBackend
from agent.backend.s3 import S3Location, parse_location, read_credentials
from agent.store import Repository


@pytest.mark.parametrize(("text", "expected"), [
    ("s3:https://s3.example.net:9000/bucket/node-1", S3Location("https://s3.example.net:9000", "bucket", "node-1")),
    ("s3:http://127.0.0.1:9000/bucket", S3Location("http://127.0.0.1:9000", "bucket", "")),
    ("s3:https://h/b/a/b/", S3Location("https://h", "b", "a/b")),
])
def test_locations_parse_into_endpoint_bucket_and_prefix(text, expected):
    assert parse_location(text) == expected
    assert str(parse_location(text)) == text.rstrip("/")


@pytest.mark.parametrize(("text", "why"), [
    ("s3:ftp://h/b", "s3:https://HOST"), ("s3:https://h", "bucket is missing"), ("s3:https:///b", "s3:https://HOST"),
    ("s3:https://AK:SK@h/b", "keys do not belong"), ("s3:https://h/b/../x", "not allowed"),
    ("s3:https://h/b?x=1", "no query"),
])
def test_bad_locations_say_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        parse_location(text)


def test_credentials_errors_name_file_and_key_never_a_value(tmp_path):
    path = tmp_path / "creds"
    path.write_text("[default]\naws_access_key_id = AKEXAMPLE\naws_secret_access_key = sEcReT/value\n")
    keys = read_credentials(str(path))
    assert keys.secret_key == "sEcReT/value" and "sEcReT" not in repr(keys)
    path.write_text("[default]\naws_access_key_id = AKEXAMPLE\n")
    with pytest.raises(BackendError, match=r"creds: \[default\] aws_secret_access_key is missing"):
        read_credentials(str(path))
    path.write_text("aws_secret_access_key = sEcReT/value\n")
    with pytest.raises(BackendError) as raised:
        read_credentials(str(path))
    assert "sEcReT" not in str(raised.value)
    with pytest.raises(BackendError, match="cannot be read"):
        read_credentials(str(tmp_path / "missing"))
    with pytest.raises(BackendError, match=r"\[s3\] table"):
        open_backend("s3:https://h/b")


def test_the_cache_answers_whole_loads_of_immutable_objects_and_refetches_damaged_copies(tmp_path):
    inner = MemBackend()
    cached = CachedBackend(inner, str(tmp_path / "cache"))
    name = "ab" * 32
    cached.save(Handle(Kind.INDEX, name), [b"index ", b"bytes"])
    assert cached.load(Handle(Kind.INDEX, name)) == b"index bytes" and cached.hits == 1  # written through
    inner.remove(Handle(Kind.INDEX, name))
    inner.save(Handle(Kind.INDEX, name), [b"other"])  # what the store holds is not asked again
    assert cached.load(Handle(Kind.INDEX, name)) == b"index bytes"
    path = tmp_path / "cache" / "index" / name
    path.write_bytes(b"garbage")  # a damaged cache file is fetched again
    assert cached.load(Handle(Kind.INDEX, name)) == b"other"
    assert cached.load(Handle(Kind.INDEX, name), 2, 1) == b"th"  # ranges go to the store
    assert [info.name for info in cached.list(Kind.INDEX)] == [name]
    inner.remove(Handle(Kind.INDEX, name))  # prune elsewhere: the next listing drops the copy
    assert cached.list(Kind.INDEX) == [] and not path.exists()
    cached.save(Handle(Kind.DATA, name), [b"pack"])
    assert not (tmp_path / "cache" / "data").exists()  # packs are never cached


_OVERLAP_BOUND_S = 20.0  # only a failure bound: with a right writer, no upload waits on it


def _waiting_for_room(thread: threading.Thread) -> bool:
    """Whether `thread` is blocked in BlobWriter._collect (it waits for a pack upload to end)."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None or frame.f_code.co_name != "wait":
        return False
    while frame is not None:
        if frame.f_code.co_name == "_collect":
            return True
        frame = frame.f_back
    return False


class _SlowStore(MemBackend):
    """A memory backend whose first three pack uploads are held until the third has begun and the writer
    (`writer_thread`) waits for room or a fourth upload began; it records how many uploads run at once and
    how many packs exist meanwhile (`packs`: every PackWriter made, held weakly, freed once uploaded)."""

    parallel_saves = 3

    def __init__(self, writer_thread: threading.Thread) -> None:
        super().__init__()
        self.writer_thread = writer_thread
        self.started = 0
        self.running = 0
        self.most = 0
        self.most_packs = 0
        self.gave_up = False
        self.packs: weakref.WeakSet = weakref.WeakSet()
        self.guard = threading.Condition()

    def _may_go_on(self) -> bool:
        # `started` only grows: a waiter woken late still sees it (`running` falls again as soon as the
        # third upload ends: a wait on it could miss that moment)
        return self.gave_up or self.started > 3 or (self.started == 3 and _waiting_for_room(self.writer_thread))

    def save(self, handle, pieces) -> None:
        if handle.kind is Kind.DATA:
            with self.guard:
                self.started += 1
                self.running += 1
                self.most = max(self.most, self.running)
                self.most_packs = max(self.most_packs, len(self.packs))
                self.guard.notify_all()
                deadline = time.monotonic() + _OVERLAP_BOUND_S
                while not self._may_go_on():  # polled: the writer's waiting is not announced
                    if time.monotonic() > deadline:
                        self.gave_up = True  # the other uploads stop waiting too: the test fails at once
                        break
                    self.guard.wait(0.01)
                self.most_packs = max(self.most_packs, len(self.packs))
            with self.guard:
                self.running -= 1
        super().save(handle, pieces)


def test_packs_are_uploaded_several_at_once_where_the_backend_says_so():
    store = _SlowStore(threading.current_thread())
    repo = Repository.open(store, create=True)
    make_pack = repo.pack_writer

    def tracked_pack():
        pack = make_pack()
        store.packs.add(pack)
        return pack

    repo.pack_writer = tracked_pack
    writer = repo.writer()
    for number in range(6):  # six incompressible packs of about 16 MiB
        writer.save(os.urandom(16 << 20) + bytes([number]))
    writer.flush()
    assert not store.gave_up, "the third upload did not begin while two were in flight"
    assert store.most == 3
    # memory: while three uploads were held, the writer filled one more pack and waited for room
    assert store.most_packs == store.parallel_saves + 1
    assert len(store.list(Kind.DATA)) == 6
    assert len(Repository.open(store).index) == 6  # every pack indexed once durable


class _OneSlowUpload(MemBackend):
    """A memory backend whose first pack upload is held until three more have begun (a retried upload)."""

    parallel_saves = 3

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.gave_up = False
        self.guard = threading.Condition()

    def save(self, handle, pieces) -> None:
        if handle.kind is Kind.DATA:
            with self.guard:
                self.started += 1
                self.guard.notify_all()
                if self.started == 1 and not self.guard.wait_for(lambda: self.started >= 4, _OVERLAP_BOUND_S):
                    self.gave_up = True
        super().save(handle, pieces)


def test_a_slow_upload_does_not_hold_up_the_slots_of_the_others():
    store = _OneSlowUpload()
    writer = Repository.open(store, create=True).writer()
    for number in range(5):
        writer.save(os.urandom(16 << 20) + bytes([number]))
    writer.flush()
    assert not store.gave_up, "the writer waited for the oldest upload while the other slots were free"
    assert len(Repository.open(store).index) == 5


def test_a_stale_lock_of_a_dead_process_does_not_keep_prune_out(tmp_path, s3_server):
    import subprocess
    import sys

    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path))
    backend = open_backend(location, settings)
    backend.create()
    script = ("import sys, os; from agent.backend import open_backend; from agent.config.model import S3Settings;"
              "b = open_backend(sys.argv[1], S3Settings(credentials_file=sys.argv[2]));"
              "b.lock(False, 'backup x').acquire(); os._exit(0)")  # dies holding it, as kill -9 would
    subprocess.run([sys.executable, "-c", script, location, settings.credentials_file], check=True, timeout=60,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    waits = []
    prune = backend.lock(True, "prune")
    prune.acquire(timeout=5, on_wait=waits.append)
    assert waits == []
    assert backend.remove_leftovers() == 1  # the dead holder's lock objects
    prune.release()


def test_a_pack_read_blob_by_blob_is_fetched_whole_once(tmp_path, s3_server, s3_proxy):
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    writer = repo.writer()
    blobs = [writer.save(os.urandom(10_000))[0] for _ in range(200)]
    writer.flush()
    reader = Repository.open(open_backend(location, settings))
    reader.index.refresh()
    s3_proxy.reset_counts()
    assert all(len(reader.read_blob(blob)) == 10_000 for blob in blobs)
    assert s3_proxy.counts.get("GET", 0) == 2  # the first blob's range, then the whole pack
    reader.backend.release()
    s3_proxy.reset_counts()
    reader.read_blob(blobs[0])
    assert s3_proxy.counts.get("GET", 0) == 1  # one range: a single read fetches no more




def test_a_restore_of_files_stored_out_of_path_order_fetches_each_pack_once(tmp_path, s3_server, s3_proxy,
                                                                           monkeypatch):
    """The backup stored the files in another order than their paths (here: every eighth one, from each
    of eight starts): in path order a restore jumps between more packs than it keeps. It reads them in
    storage order instead, each pack whole once, ahead of the writing."""
    from collections import Counter

    from agent.restorer import restore_snapshot
    from agent.store import Snapshot
    from agent.store.manifest import Entry
    from agent.store.tree import write_tree
    from tests.fixtures.s3 import s3_location

    monkeypatch.setattr("agent.store.writer.TARGET_SIZE", 60_000)  # packs of about six files
    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    files = {f"d{number:02}/f": os.urandom(10_000) for number in range(64)}
    paths = sorted(files)
    writer = repo.writer()
    ids = {path: writer.save(files[path])[0] for start in range(8) for path in paths[start::8]}
    writer.flush()
    entries = [Entry(".", "dir", 0o755, 0, 0, 0)]
    for path in paths:
        entries += [Entry(path.split("/")[0], "dir", 0o755, 0, 0, 0),
                    Entry(path, "file", 0o644, 0, 0, 0, len(files[path]), (ids[path],))]
    writer = repo.writer()
    tree = write_tree(writer, entries)
    writer.flush()
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-12-01T00:00:00Z",
                                       trigger="manual", tree=tree, files=64, bytes=640_000, fingerprint="f"))
    packs = {repo.index.get(blob).pack.hex() for blob in ids.values()}
    assert len(packs) >= 8
    reader = Repository.open(open_backend(location, settings))
    s3_proxy.reset_counts()
    result = restore_snapshot(reader, snap, str(tmp_path / "target"))
    assert result.errors == [] and result.created[:3] == [".", "d00", "d00/f"]  # reported in path order
    fetched = Counter(line.split("/")[-1].split("?")[0] for line in s3_proxy.seen
                      if line.startswith("GET") and "/data/" in line)
    assert {name: count for name, count in fetched.items() if name in packs} == {name: 1 for name in packs}
    assert all((tmp_path / "target" / path).read_bytes() == files[path] for path in paths)


def test_snapshots_restored_together_read_a_pack_they_share_once(tmp_path, s3_server, s3_proxy, monkeypatch):
    """`restore --all` of six services holding the same jars: restored together, the files of every
    snapshot are written in one storage order, so a pack they share is fetched once (not once a
    snapshot), also when each file's blobs lie in two packs, and no more of a pack than the restore reads
    (a snapshot's file list: a few blobs of a pack). A request that cannot start fails alone."""
    from collections import Counter

    from agent.restorer import RestoreRequest, TargetError, restore_snapshots
    from agent.store import Snapshot
    from agent.store.manifest import Entry
    from agent.store.tree import write_tree
    from tests.fixtures.s3 import s3_location

    monkeypatch.setattr("agent.store.writer.TARGET_SIZE", 60_000)  # packs of about six blobs
    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    halves = {f"d{number:02}/f": (os.urandom(10_000), os.urandom(10_000)) for number in range(24)}
    paths = sorted(halves)
    writer = repo.writer()
    firsts = {path: writer.save(halves[path][0])[0] for path in paths}  # first halves in the early packs,
    seconds = {path: writer.save(halves[path][1])[0] for path in paths}  # second halves in the later ones
    writer.flush()
    entries = [Entry(".", "dir", 0o755, 0, 0, 0)]
    for path in paths:
        entries += [Entry(path.split("/")[0], "dir", 0o755, 0, 0, 0),
                    Entry(path, "file", 0o644, 0, 0, 0, 20_000, (firsts[path], seconds[path]))]
    writer = repo.writer()
    tree = write_tree(writer, entries)
    filler = os.urandom(200_000)  # in the file list's pack, read by no restore of these snapshots
    writer.save(filler)
    writer.flush()
    snaps = [repo.save_snapshot(Snapshot(job=job, type="fs", host="h", time="2026-12-01T00:00:00Z",
                                         trigger="manual", tree=tree, files=24, bytes=480_000, fingerprint="f"))
             for job in ("api", "console", "worker")]
    packs = {repo.index.get(blob).pack.hex() for blob in [*firsts.values(), *seconds.values()]}
    assert len(packs) >= 8
    (tmp_path / "file").write_bytes(b"")
    reader = Repository.open(open_backend(location, settings))
    s3_proxy.reset_counts()
    done = restore_snapshots(reader, [RestoreRequest(snap, str(tmp_path / "all" / snap.job)) for snap in snaps]
                             + [RestoreRequest(snaps[0], str(tmp_path / "file" / "x"))])
    assert isinstance(done[-1].failure, TargetError) and done[-1].result is None
    assert all(one.failure is None and one.result.errors == [] and one.result.files == 24 for one in done[:3])
    fetched = Counter(line.split("/")[-1].split("?")[0] for line in s3_proxy.seen
                      if line.startswith("GET") and "/data/" in line)
    assert {name: count for name, count in fetched.items() if name in packs} == {name: 1 for name in packs}
    stored = sum(info.size for kind in Kind if kind is not Kind.CONFIG for info in reader.backend.list(kind))
    assert s3_proxy.counts["GET bytes"] < stored - len(filler) // 2  # of the file list's pack, its blobs only
    for snap in snaps:
        assert all((tmp_path / "all" / snap.job / path).read_bytes() == b"".join(halves[path]) for path in paths)


def test_a_pack_the_server_will_not_give_fails_its_files_each_named_and_the_rest_is_restored(tmp_path, s3_server,
                                                                                            s3_proxy):
    """One pack refused (after the client's retries), holding more files than a run of failures that stops
    a restore: each of its files is named, it is not asked for again file after file, and the files of the
    pack stored after it are restored."""
    from collections import Counter

    from agent.restorer import restore_snapshot
    from agent.store import Snapshot
    from agent.store.manifest import Entry
    from agent.store.tree import write_tree
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    files = {f"g{group}/f{number:03}": os.urandom(200) for group in (1, 2) for number in range(150)}
    ids = {}
    for group in ("g1/", "g2/"):  # each group in a pack of its own
        writer = repo.writer()
        ids.update({path: writer.save(data)[0] for path, data in files.items() if path.startswith(group)})
        writer.flush()
    entries = [Entry(".", "dir", 0o755, 0, 0, 0), Entry("g1", "dir", 0o755, 0, 0, 0),
               Entry("g2", "dir", 0o755, 0, 0, 0)]
    entries += [Entry(path, "file", 0o644, 0, 0, 0, 200, (ids[path],)) for path in sorted(files)]
    writer = repo.writer()
    tree = write_tree(writer, entries)
    writer.flush()
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-12-01T00:00:00Z",
                                       trigger="manual", tree=tree, files=300, bytes=60_000, fingerprint="f"))
    packs = {group: repo.index.get(ids[f"{group}/f000"]).pack.hex() for group in ("g1", "g2")}
    first = min(packs, key=packs.__getitem__)  # restored first: storage order
    reader = Repository.open(open_backend(location, settings))
    s3_proxy.reset_counts()
    s3_proxy.faults.refuse_get, s3_proxy.faults.only = True, packs[first]
    result = restore_snapshot(reader, snap, str(tmp_path / "out"))
    named = sorted(error.split(":")[0] for error in result.errors)
    assert named == sorted(path for path in files if path.startswith(first)), result.errors[-1:]
    assert all(packs[first] in error for error in result.errors)
    assert Counter(line.split("?")[0].split("/")[-1] for line in s3_proxy.seen)[packs[first]] <= 2
    rest = [path for path in files if not path.startswith(first)]
    assert all((tmp_path / "out" / path).read_bytes() == files[path] for path in rest)
    assert not any((tmp_path / "out" / path).exists() for path in files if path.startswith(first))


def test_a_restore_stops_once_the_storage_gives_no_object_in_a_row(tmp_path, s3_server, s3_proxy):
    """The server gone (every pack refused): the restore stops after a run of objects that all failed, with
    one message counting what was left out, instead of asking for every pack in turn."""
    from agent.restorer import restore_snapshot
    from agent.store import Snapshot
    from agent.store.manifest import Entry
    from agent.store.tree import read_tree, write_tree
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    entries = [Entry(".", "dir", 0o755, 0, 0, 0)]
    for number in range(15):  # a pack a file
        writer = repo.writer()
        entries.append(Entry(f"f{number:02}", "file", 0o644, 0, 0, 0, 100, (writer.save(os.urandom(100))[0],)))
        writer.flush()
    writer = repo.writer()
    tree = write_tree(writer, entries)
    writer.flush()
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-12-01T00:00:00Z",
                                       trigger="manual", tree=tree, files=15, bytes=1500, fingerprint="f"))
    reader = Repository.open(open_backend(location, settings))
    manifest = list(read_tree(reader, snap.tree))
    s3_proxy.faults.refuse_get, s3_proxy.faults.only = True, "/data/"
    s3_proxy.reset_counts()
    result = restore_snapshot(reader, snap, str(tmp_path / "out"), entries=manifest)
    assert len(result.errors) == 11 and all(": not restored, " in error for error in result.errors[:10])
    assert result.errors[10].startswith("restore stopped: the repository's storage would not give 10 objects in a row; "
                                        "5 entries after ")
    assert s3_proxy.counts["GET"] <= 10


def test_an_empty_file_is_restored_whatever_pack_holds_its_empty_blob(tmp_path, s3_server, s3_proxy):
    """A backup stores an empty file as the empty blob: its content is known from its size, so a pack the
    server will not give never fails it (the file beside it in that pack is named)."""
    from agent.restorer import restore_snapshot
    from agent.store import Snapshot
    from agent.store.manifest import Entry
    from agent.store.tree import write_tree
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    writer = repo.writer()
    empty, full = writer.save(b"")[0], writer.save(os.urandom(500))[0]
    writer.flush()
    writer = repo.writer()
    tree = write_tree(writer, [Entry(".", "dir", 0o755, 0, 0, 0), Entry("empty", "file", 0o644, 0, 0, 0, 0, (empty,)),
                               Entry("full", "file", 0o644, 0, 0, 0, 500, (full,))])
    writer.flush()
    snap = repo.save_snapshot(Snapshot(job="svc", type="fs", host="h", time="2026-12-01T00:00:00Z",
                                       trigger="manual", tree=tree, files=2, bytes=500, fingerprint="f"))
    refused = repo.index.get(empty).pack.hex()
    assert repo.index.get(full).pack.hex() == refused
    reader = Repository.open(open_backend(location, settings))
    s3_proxy.faults.refuse_get, s3_proxy.faults.only = True, refused
    result = restore_snapshot(reader, snap, str(tmp_path / "out"))
    assert [error.split(":")[0] for error in result.errors] == ["full"]
    assert (tmp_path / "out" / "empty").read_bytes() == b"" and not (tmp_path / "out" / "full").exists()


def _spans(names: str) -> List[Span]:
    return [Span(Handle(Kind.DATA, name)) for name in names]


def test_read_ahead_serves_a_pack_read_again_after_others_and_reads_left_out():
    from agent.backend.readahead import RecentPacks

    packs = {name: name.encode() * 100 for name in "abc"}
    fetched = []

    def fetch(span: Span) -> bytes:
        fetched.append(span.handle.name)
        return packs[span.handle.name]

    def never() -> bytes:
        raise AssertionError("a planned read waited for a fetch of its own")

    recent = RecentPacks()
    with recent.ahead(_spans("aabacb"), fetch):  # runs: a b a c b
        assert recent.read("a", 3, 0, never, never) == b"aaa"
        assert recent.read("a", -1, 98, never, never) == b"aa"
        assert recent.read("b", 2, 1, never, never) == b"bb"
        assert recent.read("a", 1, 5, never, never) == b"a"
        # the run of c left out (a hard link's second name): b is served by its next run
        assert recent.read("b", 1, 0, never, never) == b"b"
    # a and b kept for their later runs: each fetched once (c, passed over, may have been cancelled)
    assert fetched.count("a") == 1 and fetched.count("b") == 1 and fetched.count("c") <= 1


def test_read_ahead_fetches_only_the_bytes_its_runs_cover():
    """A run names the bytes of the pack it reads (a snapshot's file list: a few blobs of a 16 MiB pack):
    the fetch gets those, once for the runs it serves; a read outside them is a range of its own."""
    from agent.backend.readahead import RecentPacks

    objects = {"a": bytes(range(256)) * 4, "b": bytes(range(255, -1, -1)) * 4}
    fetched = []

    def fetch(span: Span) -> bytes:
        fetched.append(span)
        data = objects[span.handle.name]
        return data[span.offset:] if span.end < 0 else data[span.offset:span.end]

    def never() -> bytes:
        raise AssertionError("a planned read waited for a fetch of its own")

    a, b = Handle(Kind.DATA, "a"), Handle(Kind.DATA, "b")
    recent = RecentPacks()
    with recent.ahead([Span(a, 100, 150), Span(a, 150, 200), Span(b, 0, 50), Span(a, 300, 400)], fetch):
        assert recent.read("a", 50, 100, never, never) == objects["a"][100:150]
        assert recent.read("a", 50, 150, never, never) == objects["a"][150:200]
        assert recent.read("b", 10, 40, never, never) == objects["b"][40:50]
        assert recent.read("a", 100, 300, never, never) == objects["a"][300:400]
        assert recent.read("a", 10, 0, never, lambda: b"ranged") == b"ranged"  # not in what was named
    assert sorted(fetched) == [Span(a, 100, 400), Span(b, 0, 50)]


def test_read_ahead_fetches_each_pack_once_for_files_that_span_packs_restored_many_times():
    """The same 3-pack jar in six services, restored one copy after another: runs a b c a b c ...; each pack
    fetched once. With more packs than are kept, the fewest fetches Belady's rule allows, never more."""
    from agent.backend.readahead import ReadAhead, RecentPacks, belady

    fetched = []

    def fetch(span: Span) -> bytes:
        fetched.append(span.handle.name)
        return span.handle.name.encode() * 10

    def never() -> bytes:
        raise AssertionError("a planned read waited for a fetch of its own")

    recent = RecentPacks()
    plan = list("abc") * 6
    with recent.ahead(_spans(plan), fetch):
        for name in plan:
            assert recent.read(name, 2, 0, never, never) == name.encode() * 2
    assert sorted(fetched) == ["a", "b", "c"]

    # more packs than are kept (4): a b c d e f g h, then a and h again: only a and h are worth keeping
    plan = list("abcdefgh") + ["a", "h"]
    fetched.clear()
    with recent.ahead(_spans(plan), fetch):
        for name in plan:
            assert recent.read(name, 1, 0, never, never) == name.encode()
    serves, packs, _ = belady(plan, ReadAhead.KEPT)
    assert len(fetched) == len(packs) and sorted(set(fetched)) == sorted(set(plan))
    assert len(packs) == 8 and serves[8] == serves[0] and serves[9] == serves[7]

    # five packs wanted again, more than are kept: the one needed again last is fetched twice
    plan = list("abcdefgh") + list("abcde")
    serves, packs, last = belady(plan, 4)
    assert packs == list("abcdefgh") + ["e"] and serves[8:] == [0, 1, 2, 3, 8] and last[3] == 11 and last[4] == 4


def test_a_pack_blob_list_is_read_by_range_never_whole(tmp_path, s3_server, s3_proxy):
    """Indexing a pack no index file names (a backup killed before its index) reads its trailer's few
    bytes, not the 16 MiB pack: the second small read of a pack is no reason to fetch it whole."""
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    repo = Repository.open(open_backend(location, settings), create=True)
    writer = repo.writer()
    blobs = [writer.save(os.urandom(10_000))[0] for _ in range(150)]
    writer.flush()
    pack = repo.index.get(blobs[0]).pack
    size = repo.packs()[pack]
    reader = Repository.open(open_backend(location, settings))
    s3_proxy.reset_counts()
    listed = reader.pack_blobs(pack, size)
    assert sorted(blob_id for blob_id, _ in listed) == sorted(blobs)
    assert 2 <= s3_proxy.counts["GET"] <= 3 and s3_proxy.counts["GET bytes"] < size // 10


def test_an_interrupted_command_lets_go_of_its_lock_at_once_when_the_storage_does_not_answer(
        tmp_path, s3_server, s3_proxy, monkeypatch, capsys):
    """Ctrl-C against a server that stopped answering: the lock's end is written if it answers within a
    moment (here 1 s, 10 s in use), else the lock is left to go stale, named in a warning; the client's
    retries (minutes) do not hold the operator's interrupt."""
    import time

    from tests.fixtures.s3 import s3_location

    monkeypatch.setattr("agent.backend.s3lock._INTERRUPTED_RELEASE_S", 0.5)
    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    backend = open_backend(location, settings)
    backend.create()
    began = None
    with pytest.raises(KeyboardInterrupt), backend.lock(False, "restore"):
        s3_proxy.faults.latency = 8.0  # the server answers nothing for a while from here on
        began = time.monotonic()
        raise KeyboardInterrupt
    assert began is not None and time.monotonic() - began < 4
    assert "releasing the repository lock: no answer within 0.5 s; it goes stale by itself" in \
        capsys.readouterr().err
    s3_proxy.faults.latency = 0.0
    for thread in threading.enumerate():  # the end is written once the server answers, in the background
        if thread.name == "repository-lock-release":
            thread.join(60)

    # a server that answers: the lock's end is written as always
    with pytest.raises(KeyboardInterrupt), backend.lock(False, "restore"):
        raise KeyboardInterrupt
    assert "releasing" not in capsys.readouterr().err
    keys = [item.key for item in backend.list_keys(backend.key_under("locks/"))[0]]
    assert len([key for key in keys if key.endswith(".end")]) == 2  # the first's too, once the server answered


def test_a_body_cut_short_is_asked_for_again_and_named_when_it_stays_cut(tmp_path, s3_server, s3_proxy):
    """The client retries a request, not the reading of its body: a pack whose body stops half way (a
    connection reset, a stall past the read timeout) is fetched again, up to three times in all."""
    from agent.backend import BackendError
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path), s3_proxy)
    backend = open_backend(location, settings)
    backend.create()
    data = os.urandom(3 << 20)
    key = backend.key_under("data/ab/cut-test")
    backend.put(key, [data], "the test object")
    s3_proxy.faults.cut_body = 2
    s3_proxy.reset_counts()
    assert backend.get(key, "the test object") == data
    assert s3_proxy.counts["GET"] == 3
    s3_proxy.faults.cut_body = 3
    with pytest.raises(BackendError) as failed:
        backend.get(key, "the test object")
    assert str(failed.value).startswith("the test object: ") and "after retrying" in str(failed.value)
    assert settings.credentials_file not in str(failed.value)


def test_a_refused_head_request_says_it_names_no_cause(tmp_path):
    """A HEAD answer has no body: botocore gives its status as the error code. The message must not read
    "HTTP 403 403"; a refused GET names its code."""
    from botocore.exceptions import ClientError

    from agent.backend.s3 import AccessDenied, S3Backend
    from agent.config.model import S3Settings

    credentials = tmp_path / "s3.credentials"
    credentials.write_text("[default]\naws_access_key_id = AKEXAMPLE\naws_secret_access_key = not-shown\n")
    backend = S3Backend("s3:http://127.0.0.1:9/bucket/prefix", S3Settings(credentials_file=str(credentials)))
    head = ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject")
    refused = backend._client_error(head, "the config")
    assert isinstance(refused, AccessDenied) and "403 403" not in str(refused)
    assert "access denied (HTTP 403, a HEAD request names no cause; the keys are in [s3] credentials_file)" \
        in str(refused)
    get = ClientError({"Error": {"Code": "SignatureDoesNotMatch"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                      "GetObject")
    assert "the secret key does not match the access key (HTTP 403 SignatureDoesNotMatch;" in \
        str(backend._client_error(get, "the config"))
    teapot = ClientError({"Error": {"Code": "418"}, "ResponseMetadata": {"HTTPStatusCode": 418}}, "HeadObject")
    assert str(backend._client_error(teapot, "the config")).endswith("HTTP 418")
