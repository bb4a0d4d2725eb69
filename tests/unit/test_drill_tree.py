"""The checks of a drill of a tree snapshot (agent.drill.tree): each way a restored entry can differ from
its manifest entry is named, and a link planted where a directory belongs is never followed."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from agent.backend.mem import MemBackend
from agent.drill.tree import _Checker, _count_files
from agent.restorer import restore_snapshot, safe_parts
from agent.store import Repository
from agent.store.manifest import Entry
from agent.store.tree import read_tree
from tests.helpers import NOBODY, as_nobody
from tests.unit.repo_helpers import snapshot_of, store_files

FILES = {"a": b"alpha" * 100, "b": b"bravo" * 100, "c": b"charlie" * 100, "d": b"delta", "e": b"echo" * 50,
         "sub/f": b"foxtrot" * 10, "sub/g": b"golf"}


def _problems(repo, snap, directory) -> dict:
    with _Checker(repo, directory) as checker:
        return {entry.path: checker.check(safe_parts(entry.path), entry)
                for entry in read_tree(repo, snap.tree)}


def test_a_faithful_restore_passes_every_check(repo, tmp_path):
    snap = store_files(repo, "svc", FILES, chunk=64)
    restore_snapshot(repo, snap, str(tmp_path / "t"))
    assert set(_problems(repo, snap, str(tmp_path / "t")).values()) == {None}
    assert _count_files(str(tmp_path / "t")) == len(FILES)


def test_every_difference_is_named_by_what_differs(repo, tmp_path):
    snap = store_files(repo, "svc", FILES, chunk=64)
    target = tmp_path / "t"
    restore_snapshot(repo, snap, str(target))
    (target / "a").unlink()
    (target / "a").symlink_to("b")  # a link where a file belongs: never followed
    os.chmod(target / "b", 0o600)
    (target / "c").write_bytes(FILES["c"][:-1])
    (target / "d").unlink()
    (target / "e").write_bytes(b"ECHO" + FILES["e"][4:])  # same size, other bytes in the first chunk
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, content in (("f", FILES["sub/f"]), ("g", FILES["sub/g"])):
        (outside / name).write_bytes(content)
        os.chmod(outside / name, 0o644)
    for name in ("f", "g"):
        (target / "sub" / name).unlink()
    (target / "sub").rmdir()
    (target / "sub").symlink_to(outside)  # the same files, through a link: not a restore
    found = _problems(repo, snap, str(target))
    assert found["a"] == "restored as something other than a file"
    assert found["b"] == "mode 0600, the manifest says 0644"
    assert found["c"] == f"{len(FILES['c']) - 1} bytes, the manifest says {len(FILES['c'])}"
    assert found["d"] == "not restored (No such file or directory)"
    assert found["e"].startswith("content differs from the manifest at chunk 0 (")
    assert found["sub/f"].startswith("not restored (") and found["sub/g"].startswith("not restored (")
    assert _count_files(str(target)) == 3  # b, c, e: neither the link a nor what sub links to


def test_a_tree_deeper_than_path_max_is_checked_and_counted(repo, tmp_path):
    from agent.drill.tree import prove_tree

    deep = "/".join(f"{'d' * 200}{level}" for level in range(30))  # about 6 KB: past PATH_MAX
    snap = store_files(repo, "svc", {f"{deep}/leaf.txt": b"leaf", "top": b"top"})
    proof = prove_tree(repo, snap, str(tmp_path / "scratch"))
    assert proof.errors == () and proof.files == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user in a child")
def test_an_unreadable_file_is_read_only_as_the_drills_own_copy_and_after_its_mode_is_compared():
    repo = Repository.open(MemBackend(), create=True)  # in memory: the child reads it without permissions
    writer = repo.writer()
    modes = {"mine": 0o000, "wonly": 0o200, "wrong": 0o644, "theirs": 0o000, "dir/f": 0o644}
    entries = [Entry(".", "dir", 0o755, NOBODY, NOBODY, 0), Entry("dir", "dir", 0o600, NOBODY, NOBODY, 0)]
    for path, mode in sorted(modes.items()):
        owner = 0 if path == "theirs" else NOBODY
        entries.append(Entry(path, "file", mode, owner, owner, 0, 1, (writer.save(path[0].encode())[0],)))
    snap = snapshot_of(repo, writer, entries)
    out = tempfile.mkdtemp(prefix="drill-as-nobody-")  # /tmp lets another user reach it, tmp_path does not
    try:
        assert restore_snapshot(repo, snap, out).errors == []  # as root: owners and modes as recorded
        os.chmod(os.path.join(out, "wrong"), 0o000)  # not what the manifest says, and unreadable
        found = as_nobody(lambda: _problems(repo, snap, out))
        assert found == {".": None, "dir": None, "dir/f": None, "mine": None, "wonly": None,
                         "wrong": "mode 0000, the manifest says 0644", "theirs": "cannot be read (Permission denied)"}
        after = {path: stat.S_IMODE(os.lstat(os.path.join(out, path)).st_mode) for path in ("mine", "wonly", "wrong",
                                                                                             "theirs", "dir")}
        # read only once compared, and only the drill user's own: the rest keep the modes they were found with
        assert after == {"mine": 0o400, "wonly": 0o600, "wrong": 0o000, "theirs": 0o000, "dir": 0o700}
    finally:
        shutil.rmtree(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user in a child")
def test_a_drill_checked_by_several_processes_compares_each_directorys_mode_before_a_part_opens_it(monkeypatch):
    """With the check in parts (a drill command of a large tree), a part opens up a 0000 directory to
    check the files in it: every directory's mode is compared first, so none is found changed; what
    differs is still named, from whichever process found it."""
    from agent.drill.tree import prove_tree
    from agent.restorer import fanout

    monkeypatch.setattr(fanout, "writers_for", lambda files: 3)
    # the modules a fork needs, loaded here: this interpreter's library is not readable by the child's user
    assert fanout.in_processes(2, lambda number, progress, halt: number, None) == [0, 1]
    repo = Repository.open(MemBackend(), create=True)
    writer = repo.writer()
    entries = [Entry(".", "dir", 0o755, NOBODY, NOBODY, 0)]

    def file(path: str, data: bytes) -> Entry:
        return Entry(path, "file", 0o644, NOBODY, NOBODY, 0, len(data), tuple(
            writer.save(piece)[0] for piece in repo.chunker.split(data)))

    # weighed so that the first part ends with the 0000 directory, after hashing 12 MiB, while the other
    # parts begin with the files in it
    entries += [Entry("big", "dir", 0o755, NOBODY, NOBODY, 0)] + [
        file(f"big/f{name}", os.urandom(4 << 20)) for name in range(3)]
    entries += [Entry("locked", "dir", 0o000, NOBODY, NOBODY, 0)] + [
        file(f"locked/f{name}", os.urandom(4 << 20)) for name in range(6)] + [
        file(f"locked/small{name}", b"s") for name in range(4)]
    snap = snapshot_of(repo, writer, entries)
    out = tempfile.mkdtemp(prefix="drill-parts-as-nobody-")
    try:
        os.chown(out, NOBODY, NOBODY)
        proof = as_nobody(lambda: prove_tree(repo, snap, os.path.join(out, "scratch"), fork_writers=True))
        assert proof.errors == () and proof.files == 13
    finally:
        shutil.rmtree(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user in a child")
def test_a_non_root_drill_of_a_0000_file_with_two_names_passes_and_a_split_inode_is_named():
    """The first name of a 0000 inode is made readable (0400) once its mode is compared: its later name is
    checked as that same inode, not by the mode the drill gave it. A later name restored as a copy of its
    own is not the file the manifest says."""
    from agent.drill.tree import prove_tree

    repo = Repository.open(MemBackend(), create=True)
    writer = repo.writer()
    blob = writer.save(b"secret\n")[0]
    entries = [Entry(".", "dir", 0o755, NOBODY, NOBODY, 0), Entry("a", "dir", 0o755, NOBODY, NOBODY, 0),
               Entry("a/f", "file", 0o000, NOBODY, NOBODY, 0, 7, (blob,)),
               Entry("b", "dir", 0o755, NOBODY, NOBODY, 0),
               Entry("b/g", "file", 0o000, NOBODY, NOBODY, 0, 7, (blob,), hardlink="a/f")]
    snap = snapshot_of(repo, writer, entries)
    out = tempfile.mkdtemp(prefix="drill-links-as-nobody-")
    try:
        os.chown(out, NOBODY, NOBODY)
        proof = as_nobody(lambda: prove_tree(repo, snap, os.path.join(out, "scratch")))
        assert proof.errors == () and proof.files == 2

        split = os.path.join(out, "split")
        assert restore_snapshot(repo, snap, split).errors == []
        os.unlink(os.path.join(split, "b/g"))
        with open(os.path.join(split, "b/g"), "wb") as handle:
            handle.write(b"secret\n")
        os.chmod(os.path.join(split, "b/g"), 0o000)
        assert _problems(repo, snap, split)["b/g"] == "not the same file as a/f, as the manifest says (a hard link)"
    finally:
        shutil.rmtree(out)
