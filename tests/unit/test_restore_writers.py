"""A restore written by forked writer processes (agent/restorer/fanout.py) does what the same restore
does in one process: the same tree on disk, the same result, hard links whose names fall in different
parts, damaged blobs and failing packs named per file, progress counted. The fan-out is forced (three
writers) on trees small enough for a unit test; a real restore forks only for thousands of files."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Dict, List, Tuple

import pytest

from agent.backend import open_backend
from agent.restorer import RestoreRequest, fanout, restore_snapshot, restore_snapshots
from agent.store import Repository
from agent.store.tree import write_tree
from tests.unit.test_restore import MTIME, _Counted, _damage, _entries, _snapshot


@pytest.fixture
def three_writers(monkeypatch):
    """Three writers for any restore that may fork them; asserts at the end that one did."""
    forked: List[int] = []
    real = fanout.in_processes

    def in_processes(parts, work, progress):
        forked.append(parts)
        return real(parts, work, progress)

    monkeypatch.setattr(fanout, "writers_for", lambda files: 3)
    monkeypatch.setattr(fanout, "in_processes", in_processes)
    yield
    assert forked and set(forked) == {3}


def _tree(root) -> Dict[str, Tuple]:
    """Every entry under `root`: type, mode, mtime, content or link target, and which names share an inode."""
    found: Dict[str, Tuple] = {}
    inodes: Dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", st.st_mtime_ns, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                first = inodes.setdefault(st.st_ino, rel)
                with open(path, "rb") as handle:
                    found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, handle.read(), first)
    return found


def _entries_of_many(count: int) -> Tuple[List[Tuple[str, str, object]], Dict[str, str]]:
    """Files in directories, some sharing content, symlinks, and later names of inodes spread over the
    storage order (first names early, later names late, so they fall in other parts)."""
    entries: List[Tuple[str, str, object]] = [(f"d{number}", "dir", None) for number in range(7)]
    contents: Dict[str, bytes] = {}
    for number in range(count):
        path = f"d{number % 7}/f{number}"
        contents[path] = os.urandom(3000 + number) if number % 3 else b"shared jar content" * 400
        entries.append((path, "file", contents[path]))
        if number % 11 == 0:
            entries.append((f"d{number % 7}/l{number}", "symlink", f"f{number}"))
    hardlinks = {f"d{(number + 3) % 7}/h{number}": f"d{number % 7}/f{number}" for number in range(0, count, 13)}
    entries += [(later, "file", contents[first]) for later, first in hardlinks.items()]
    entries.append(("empty", "file", b""))
    return entries, hardlinks


def test_writer_processes_restore_what_one_process_restores(tmp_path, three_writers):
    entries, hardlinks = _entries_of_many(60)
    repo, snap = _snapshot(tmp_path, entries, hardlinks=hardlinks, modes={"d1/f1": 0o600, "d2": 0o700})
    one = restore_snapshot(repo, snap, str(tmp_path / "one"))
    counted = _Counted()
    forked = restore_snapshot(repo, snap, str(tmp_path / "forked"), progress=counted, fork_writers=True)
    assert forked.errors == [] and forked == one
    assert (counted.files, counted.bytes) == (forked.files + len(hardlinks), forked.bytes + sum(
        len(value) for path, kind, value in entries if path in hardlinks))
    assert counted.expected == [(counted.files, counted.bytes)]
    assert _tree(tmp_path / "forked") == _tree(tmp_path / "one")
    for later, first in hardlinks.items():  # one inode with every name, though written by other processes
        assert os.stat(tmp_path / "forked" / later).st_ino == os.stat(tmp_path / "forked" / first).st_ino
    assert os.stat(tmp_path / "forked").st_mtime_ns == MTIME

    # files replaced in place by a rename: the writers' temp names never collide, none is left
    for path in ("d0/f7", "d3/f10", "d6/f55"):
        (tmp_path / "forked" / path).write_bytes(b"changed by the operator")
    again = restore_snapshot(repo, snap, str(tmp_path / "forked"), overwrite="if-changed", fork_writers=True)
    assert again.errors == [] and sorted(again.replaced) == ["d0/f7", "d3/f10", "d6/f55"]
    assert _tree(tmp_path / "forked") == _tree(tmp_path / "one")


def test_a_damaged_blob_in_a_writers_part_fails_its_file_alone_and_no_later_name_links_to_it(tmp_path, three_writers):
    entries, hardlinks = _entries_of_many(60)
    repo, snap = _snapshot(tmp_path, entries, hardlinks=hardlinks)
    stored = sorted((repo.read_order(entry.chunks[0]), entry.path) for entry in _entries(repo, snap)
                    if entry.type == "file" and entry.chunks and not entry.hardlink)
    late = [path for _, path in stored[-20:] if path in hardlinks.values() and "f" in path]
    victim = late[-1] if late else stored[-1][1]  # in the last part: a writer process's
    [entry] = [e for e in _entries(repo, snap) if e.path == victim]
    _damage(repo, entry.chunks[0])
    result = restore_snapshot(Repository.open(repo.location), snap, str(tmp_path / "out"), fork_writers=True)
    named = sorted(error.split(":")[0] for error in result.errors)
    later = sorted(name for name, first in hardlinks.items() if first == victim)
    assert named == sorted([victim, *later])
    assert not (tmp_path / "out" / victim).exists()
    assert all(not (tmp_path / "out" / name).exists() for name in later)
    assert result.files == sum(1 for path, kind, value in entries if kind == "file" and path not in hardlinks) - 1


def test_restore_all_from_object_storage_in_writer_processes(tmp_path, s3_server, three_writers):
    """Each writer process reads through a client of its own (a forked copy of the parent's pooled
    connections would mix answers), with its own read-ahead."""
    from tests.fixtures.s3 import s3_location

    location, settings = s3_location(s3_server, str(tmp_path))
    entries, hardlinks = _entries_of_many(80)
    local, snap = _snapshot(tmp_path, entries, hardlinks=hardlinks)
    one = restore_snapshot(local, snap, str(tmp_path / "local"))
    repo = Repository.open(open_backend(location, settings), create=True)
    writer = repo.writer()
    listed = _entries(local, snap)
    for entry in listed:
        for chunk in entry.chunks:
            writer.save(local.read_blob(chunk))
    tree = write_tree(writer, listed)
    writer.flush()
    remote = repo.save_snapshot(dataclasses.replace(snap, tree=tree))
    reader = Repository.open(open_backend(location, settings))  # its client made before the fork
    done = restore_snapshots(reader, [RestoreRequest(remote, str(tmp_path / "s3" / job)) for job in ("a", "b")],
                             fork_writers=True)
    for restored in done:
        assert restored.failure is None and restored.result is not None
        assert restored.result.errors == [] and restored.result.files == one.files
    assert _tree(tmp_path / "s3" / "a") == _tree(tmp_path / "local") == _tree(tmp_path / "s3" / "b")


@pytest.mark.parametrize("cached", [7, 8])
def test_later_names_linked_after_hundreds_of_directories_link_in_the_right_place(tmp_path, three_writers,
                                                                                  monkeypatch, cached):
    """Later names are linked after the writers, long after their first names' directories were used: the
    target's descriptor cache starts over meanwhile (past 256; 7 or 8 here, so that it does all the time,
    on either of the two directories a link needs) and must not close the directory a link is being made
    in (EBADF, or a link made in whatever directory reused that number)."""
    monkeypatch.setattr("agent.restorer.target._CACHED_FDS", cached)
    entries: List[Tuple[str, str, object]] = []
    contents: Dict[str, bytes] = {}
    for number in range(400):
        entries.append((f"d{number:03}", "dir", None))
        contents[f"d{number:03}/f"] = os.urandom(50) + bytes([number % 256])
        entries.append((f"d{number:03}/f", "file", contents[f"d{number:03}/f"]))
    hardlinks = {f"d{(number + 200) % 400:03}/link-{number}": f"d{number:03}/f" for number in range(0, 400, 7)}
    entries += [(later, "file", contents[first]) for later, first in hardlinks.items()]
    repo, snap = _snapshot(tmp_path, entries, hardlinks=hardlinks)
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out), fork_writers=True)
    assert result.errors == []
    for later, first in hardlinks.items():
        assert os.stat(out / later).st_ino == os.stat(out / first).st_ino, later
    assert sorted(str(path.relative_to(out)) for path in out.rglob("link-*")) == sorted(hardlinks)


def test_a_writer_that_dies_is_named_and_no_later_name_becomes_a_copy_of_its_own(tmp_path, monkeypatch):
    """The last part's process dies (as a kill -9 would end it): the restore names it; later names whose
    first name was in that part are left out and counted, never written as copies (the inode split)."""
    real = fanout.in_processes

    def last_part_dies(parts, work, progress):
        return real(parts, lambda number, counted, halt: os._exit(9) if number == parts - 1
                    else work(number, counted, halt), progress)

    monkeypatch.setattr(fanout, "writers_for", lambda files: 3)
    monkeypatch.setattr(fanout, "in_processes", last_part_dies)
    entries, hardlinks = _entries_of_many(60)
    repo, snap = _snapshot(tmp_path, entries, hardlinks=hardlinks)
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out), fork_writers=True)
    assert any(error.startswith("restore stopped: its writer process ended (exit status 9); up to ")
               for error in result.errors), result.errors
    for later, first in hardlinks.items():
        if (out / later).exists():
            assert os.stat(out / later).st_ino == os.stat(out / first).st_ino, later
    missing = [later for later in hardlinks if not (out / later).exists()]
    assert missing and f"{len(missing)} later names of hard links not restored: their first names were written " \
        "by the part that ended" in result.errors
