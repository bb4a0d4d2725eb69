"""The restorer (agent/restorer) against real repositories and real target trees: manifests written by
hand, so each case (hard links, extended attributes, paths deeper than PATH_MAX, unsafe paths, damaged
blobs, what the plan calls a difference) is exactly the one meant."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest

from agent.backend.mem import MemBackend
from agent.restorer import PathError, RestoreRequest, TargetError, restore_snapshot, restore_snapshots, safe_parts
from agent.restorer.plan import CREATE, REPLACE, SAME, make_plan, selection
from agent.restorer.target import Target
from agent.store import Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree, write_tree
from tests.helpers import NOBODY, as_nobody, deep_path, read_deep
from tests.unit.repo_helpers import snapshot_of

MTIME = 1_700_000_000_123_456_789
UID, GID = os.geteuid(), os.getegid()


def _snapshot(tmp_path, entries: List[Tuple[str, str, object]], xattrs: Optional[Dict[str, tuple]] = None,
              modes: Optional[Dict[str, int]] = None, hardlinks: Optional[Dict[str, str]] = None,
              source: Optional[str] = "/services/api", mtimes: Optional[Dict[str, int]] = None,
              owners: Optional[Dict[str, Tuple[int, int]]] = None) -> Tuple[Repository, Snapshot]:
    """A repository holding one snapshot of `entries`: (path, type, content bytes / link target / None),
    each owned by this process and modified at MTIME unless `owners` or `mtimes` say otherwise."""
    repo = Repository.open(str(tmp_path / "repo"), create=True)
    writer = repo.writer()
    made = []
    for path, kind, value in [(".", "dir", None), *entries]:
        mode = (modes or {}).get(path, 0o755 if kind == "dir" else 0o644)
        extra = {"xattrs": (xattrs or {}).get(path, ()), "hardlink": (hardlinks or {}).get(path, "")}
        uid, gid = (owners or {}).get(path, (UID, GID))
        mtime = (mtimes or {}).get(path, MTIME)
        if kind == "file":
            ids = tuple(writer.save(piece)[0] for piece in repo.chunker.split(value)) if value else ()
            made.append(Entry(path, kind, mode, uid, gid, mtime, len(value), ids, **extra))
        elif kind == "symlink":
            made.append(Entry(path, kind, 0o777, uid, gid, mtime, target=value, **extra))
        else:
            made.append(Entry(path, kind, mode, uid, gid, mtime, **extra))
    tree = write_tree(writer, made)
    writer.flush()
    snapshot = repo.save_snapshot(Snapshot(job="api", type="fs", host="h", time="2026-11-30T00:00:00Z",
                                           trigger="manual", tree=tree, files=0, bytes=0, fingerprint="f",
                                           source=(source,) if source else ()))
    return repo, snapshot


def test_safe_parts_refuses_every_way_out():
    assert safe_parts(".") == () and safe_parts("a/b") == ("a", "b")
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "", "a\0b", "a/"):
        assert safe_parts(bad) is None, bad


def test_unsafe_manifest_paths_are_named_and_nothing_lands_outside(tmp_path):
    repo, snap = _snapshot(tmp_path, [("../escape", "file", b"x"), ("ok", "file", b"fine")])
    result = restore_snapshot(repo, snap, str(tmp_path / "out"))
    assert any("../escape" in error for error in result.errors)
    assert not (tmp_path / "escape").exists() and (tmp_path / "out/ok").read_bytes() == b"fine"


def test_hard_links_come_back_as_one_inode_with_every_name(tmp_path):
    big = os.urandom(1 << 20)
    repo, snap = _snapshot(tmp_path, [("a", "file", big), ("d", "dir", None), ("d/b", "file", big),
                                          ("d/c", "file", big)],
                           hardlinks={"d/b": "a", "d/c": "a"}, modes={"a": 0o640})
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out))
    assert result.errors == [] and result.files == 1 and result.bytes == 1 << 20
    stats = [os.stat(out / name) for name in ("a", "d/b", "d/c")]
    assert len({(st.st_dev, st.st_ino) for st in stats}) == 1 and stats[0].st_nlink == 3
    assert stat.S_IMODE(stats[0].st_mode) == 0o640 and (out / "d/c").read_bytes() == big
    assert stats[0].st_blocks * 512 < 1.1 * (1 << 20)  # 1 MB on disk, not 3

    again = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert (again.created, again.replaced, again.unchanged) == ([], [], 5)
    os.unlink(out / "d/b")  # now a separate copy with the same bytes: one inode is the snapshot's state
    (out / "d/b").write_bytes(big)
    os.chmod(out / "d/b", 0o640)
    os.utime(out / "d/b", ns=(MTIME, MTIME))
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["d/b"]
    fixed = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert fixed.replaced == ["d/b"] and fixed.files == 0
    assert os.stat(out / "d/b").st_ino == os.stat(out / "a").st_ino

    only = restore_snapshot(repo, snap, str(tmp_path / "one"), ["d/c"])  # its first name not restored
    assert only.errors == [] and (tmp_path / "one/d/c").read_bytes() == big


def test_a_later_name_is_never_linked_to_a_first_name_that_failed(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"snapshot bytes" * 100), ("b", "file", b"snapshot bytes" * 100)],
                           hardlinks={"b": "a"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"the operator's own file")
    [entry] = [e for e in _entries(repo, snap) if e.path == "a"]
    _damage(repo, entry.chunks[0])
    result = restore_snapshot(Repository.open(repo.location), snap, str(out), overwrite="always")
    assert [error.split(":")[0] for error in result.errors] == ["a", "b"]
    assert (out / "a").read_bytes() == b"the operator's own file" and not (out / "b").exists()
    assert os.listdir(out) == ["a"]  # the temp file the damaged blob was written to is gone too


def _entries(repo, snap) -> List[Entry]:
    from agent.store.tree import read_tree

    return list(read_tree(repo, snap.tree))


def _damage(repo: Repository, blob_id: bytes) -> None:
    location = repo.index.get(blob_id)
    with open(repo.describe_pack(location.pack), "r+b") as handle:
        handle.seek(location.offset)
        first = handle.read(1)
        handle.seek(location.offset)
        handle.write(bytes([first[0] ^ 0xFF]))


def _acl(*entries: Tuple[int, int, int]) -> bytes:
    """The kernel's POSIX ACL xattr form: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


_NO_ID = 0xFFFFFFFF
ACL = _acl((0x01, 6, _NO_ID), (0x02, 4, 4242), (0x04, 4, _NO_ID), (0x10, 4, _NO_ID), (0x20, 0, _NO_ID))


def test_extended_attributes_and_acls_are_restored_and_compared(tmp_path):
    repo, snap = _snapshot(
        tmp_path, [("conf", "dir", None), ("conf/app.xml", "file", b"<app/>"), ("link", "symlink", "conf")],
        xattrs={"conf/app.xml": (("system.posix_acl_access", ACL), ("user.origin", b"release 42")),
                "conf": (("user.dir", b"d"),), "link": (("user.on-a-link", b"x"),)},
        modes={"conf/app.xml": 0o640})
    out = tmp_path / "out"
    try:
        result = restore_snapshot(repo, snap, str(out))
    except OSError as exc:  # pragma: no cover - a filesystem without user xattrs
        pytest.skip(f"no xattrs here: {exc}")
    assert os.getxattr(out / "conf/app.xml", "user.origin") == b"release 42"
    assert os.getxattr(out / "conf/app.xml", "system.posix_acl_access") == ACL
    assert stat.S_IMODE(os.stat(out / "conf/app.xml").st_mode) == 0o640
    assert os.getxattr(out / "conf", "user.dir") == b"d"
    # Linux refuses user.* attributes on a symlink: a warning that names it, and the run is not failed
    assert result.errors == [] and len(result.warnings) == 1
    assert result.warnings[0].startswith("link: extended attribute user.on-a-link not restored")

    assert restore_snapshot(repo, snap, str(out)).conflicts == []  # the same: no conflict
    os.removexattr(out / "conf/app.xml", "user.origin")  # one the snapshot holds, missing
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["conf/app.xml"]
    os.setxattr(out / "conf/app.xml", "user.origin", b"edited")
    os.setxattr(out / "conf", "user.added", b"local")
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["conf/app.xml"]
    fixed = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert fixed.replaced == ["conf/app.xml"]
    assert os.getxattr(out / "conf/app.xml", "user.origin") == b"release 42"
    assert "user.added" not in os.listxattr(out / "conf")  # a directory's metadata is the snapshot's


def test_a_label_the_system_gave_is_not_a_difference(tmp_path):
    repo, snap = _snapshot(tmp_path, [("f", "file", b"x")])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    try:
        os.setxattr(out / "f", "trusted.label", b"local policy")
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):
            raise
        pytest.skip("trusted.* needs CAP_SYS_ADMIN")
    assert restore_snapshot(repo, snap, str(out)).conflicts == []
    os.setxattr(out / "f", "user.note", b"mine")
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["f"]


DEEP = deep_path()


def test_paths_longer_than_path_max_restore_and_compare(tmp_path):
    assert len(DEEP) > os.pathconf("/", "PC_PATH_MAX")
    dirs = [("/".join(DEEP.split("/")[:depth]), "dir", None) for depth in range(1, 26)]
    repo, snap = _snapshot(tmp_path, [*dirs, (DEEP + "/file.txt", "file", b"at the bottom")])
    out = str(tmp_path / "out")
    result = restore_snapshot(repo, snap, out)
    assert result.errors == [] and read_deep(out, DEEP + "/file.txt") == b"at the bottom"
    again = restore_snapshot(repo, snap, out, overwrite="if-changed", delete=True)
    assert (again.created, again.replaced, again.deleted, again.errors) == ([], [], [], [])
    part = restore_snapshot(repo, snap, str(tmp_path / "part"), [DEEP + "/file.txt"])
    assert part.errors == [] and read_deep(str(tmp_path / "part"), DEEP + "/file.txt") == b"at the bottom"


def test_the_plan_tells_create_same_and_replace_apart(tmp_path):
    repo, snap = _snapshot(tmp_path, [("same", "file", b"abc" * 1000), ("flipped", "file", b"abc" * 1000),
                                      ("touched", "file", b"t"), ("chmodded", "file", b"m"),
                                      ("absent", "file", b"n"), ("dir", "dir", None), ("link", "symlink", "same")])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    (out / "flipped").write_bytes(b"abd" * 1000)  # same size, other bytes: only the hash tells
    os.utime(out / "touched", ns=(1, 1))  # a timestamp alone is no difference
    os.chmod(out / "chmodded", 0o600)
    os.chmod(out / "dir", 0o700)  # directories never differ
    os.unlink(out / "absent")
    entries = _entries(repo, snap)
    chosen, unsafe, found = selection(entries, [])
    target = Target(str(out))
    try:
        plan = make_plan(repo, target, chosen)
    finally:
        target.close()
    actions = {step.entry.path: step.action for step in plan.steps}
    assert actions == {".": SAME, "same": SAME, "flipped": REPLACE, "touched": SAME, "chmodded": REPLACE,
                       "absent": CREATE, "dir": SAME, "link": SAME}
    result = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert sorted(result.replaced) == ["chmodded", "flipped"] and result.created == ["absent"]
    assert os.stat(out / "touched").st_mtime_ns == MTIME and stat.S_IMODE(os.stat(out / "dir").st_mode) == 0o755


def test_selection_adds_the_directories_above_a_path_and_names_what_is_missing(tmp_path):
    entries = [Entry(path, "file" if path.endswith(".xml") else "dir", 0o755, 0, 0, 0)
               for path in (".", "a", "a/b", "a/b/c.xml", "a/d.xml", "e")]
    chosen, unsafe, found = selection(entries, [("a", "b", "c.xml"), ("nope",)])
    assert [parts for parts, _ in chosen] == [(), ("a",), ("a", "b"), ("a", "b", "c.xml")]
    assert unsafe == [] and found == [True, False]


def test_absolute_paths_must_lie_under_the_jobs_path(tmp_path):
    repo, snap = _snapshot(tmp_path, [("conf", "dir", None), ("conf/a", "file", b"a")], source="/services/api")
    ok = restore_snapshot(repo, snap, str(tmp_path / "o1"), ["/services/api/conf/"])
    assert ok.errors == [] and (tmp_path / "o1/conf/a").read_bytes() == b"a"
    for bad in ("/services/apiother/conf", "/etc"):
        with pytest.raises(PathError, match="not under the job's path /services/api"):
            restore_snapshot(repo, snap, str(tmp_path / "o2"), [bad])
    with pytest.raises(PathError, match="nope: not in snapshot"):
        restore_snapshot(repo, snap, str(tmp_path / "o2"), ["conf/a", "nope"])
    assert not (tmp_path / "o2").exists()


def test_a_link_at_a_derived_target_is_refused_alone_never_followed(tmp_path):
    # restore --all's DIR/JOB with a link planted there: that request fails, the others are restored
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), ("d/a", "file", b"new")])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("precious")
    os.chmod(victim, 0o711)
    os.utime(victim, ns=(MTIME, MTIME))
    before = os.stat(victim)
    out = tmp_path / "all"
    out.mkdir()
    os.symlink(victim, out / "app")
    os.symlink(tmp_path / "nowhere", out / "dangling")
    done = restore_snapshots(repo, [RestoreRequest(snap, str(out / "app"), overwrite="if-changed", delete=True),
                                    RestoreRequest(snap, str(out / "dangling")),
                                    RestoreRequest(snap, str(out / "km"), delete=True)])
    for restored, name in zip(done, ("app", "dangling")):
        assert restored.result is None and isinstance(restored.failure, TargetError)
        assert str(restored.failure) == (f"{out / name} is a symbolic link: not followed (a link there could send "
                                         "the restore outside its directory); remove it, or restore elsewhere")
    assert done[2].failure is None and done[2].result.created == [".", "d", "d/a"]
    assert (out / "km/d/a").read_bytes() == b"new"
    assert os.listdir(victim) == ["precious.txt"] and not (tmp_path / "nowhere").exists()
    after = os.stat(victim)
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o711, before.st_mtime_ns)
    with pytest.raises(TargetError, match="symbolic link: not followed"):
        restore_snapshot(repo, snap, str(out / "app"), dry_run=True)
    assert os.path.islink(out / "app") and os.path.islink(out / "dangling")


def test_target_that_is_a_file_and_a_dry_run_that_creates_nothing(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"a")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(TargetError, match="not a directory"):
        restore_snapshot(repo, snap, str(tmp_path / "file"))
    with pytest.raises(TargetError, match=r"file/below is not a directory \(or a parent of it is not\)"):
        restore_snapshot(repo, snap, str(tmp_path / "file" / "below"))
    os.mkdir(tmp_path / "real")
    os.symlink("real", tmp_path / "link")  # DIR named by the operator may be a symlink: it is followed
    assert restore_snapshot(repo, snap, str(tmp_path / "link"), follow_target=True).errors == []
    assert (tmp_path / "real" / "a").read_bytes() == b"a"
    dry = restore_snapshot(repo, snap, str(tmp_path / "new" / "dir"), dry_run=True)
    assert dry.created == [".", "a"] and not (tmp_path / "new").exists()
    done = restore_snapshot(repo, snap, str(tmp_path / "new" / "dir"))
    assert (done.created, done.unchanged) == ([".", "a"], 0)


def test_remove_and_replace_never_follow_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep").write_text("keep")
    root = tmp_path / "t"
    root.mkdir()
    os.symlink(str(outside), str(root / "link-to-dir"))
    os.symlink(str(outside / "sub"), str(root / "where-a-dir-goes"))
    target = Target(str(root))
    try:
        target.remove(target.dir_fd(()), "link-to-dir")
        fd = target.dir_fd(("where-a-dir-goes", "x"))
        assert os.listdir(fd) == []
    finally:
        target.close()
    assert (outside / "sub" / "keep").read_text() == "keep" and os.listdir(outside / "sub") == ["keep"]
    assert not os.path.islink(root / "where-a-dir-goes") and not os.path.lexists(root / "link-to-dir")


def test_delete_removes_extra_trees_below_the_restored_paths_only_and_keeps_what_keep_keeps(tmp_path):
    repo, snap = _snapshot(tmp_path, [("conf", "dir", None), ("conf/a.xml", "file", b"a"), ("lib", "dir", None),
                                      ("lib/x.jar", "file", b"x"), ("logs", "dir", None)])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("p")
    os.makedirs(out / "conf/old/deeper")
    (out / "conf/old/deeper/f").write_text("f")
    os.chmod(out / "conf/old/deeper", 0o555)
    os.symlink(str(outside), str(out / "conf/old/link-out"))
    (out / "conf/b.xml").write_text("b")
    (out / "lib/extra.jar").write_text("e")
    (out / "logs/catalina.out").write_text("log")
    os.symlink(str(outside / "precious"), str(out / "stray-link"))

    dry = restore_snapshot(repo, snap, str(out), ["conf"], delete=True, dry_run=True)
    assert dry.deleted == ["conf/b.xml", "conf/old"] and (out / "conf/b.xml").exists()
    only_conf = restore_snapshot(repo, snap, str(out), ["conf"], delete=True)
    assert only_conf.deleted == ["conf/b.xml", "conf/old"] and only_conf.errors == []
    assert not (out / "conf/old").exists() and (out / "lib/extra.jar").exists()
    everything = restore_snapshot(repo, snap, str(out), delete=True,
                                  keep=lambda path, is_dir: path.startswith("logs/"))
    assert everything.deleted == ["stray-link", "lib/extra.jar"], everything
    assert (out / "logs/catalina.out").read_text() == "log" and not os.path.lexists(out / "stray-link")
    assert (outside / "precious").read_text() == "p"


def test_a_removed_directory_is_not_reached_through_a_stale_descriptor(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    target = Target(str(root))
    try:
        fd = target.dir_fd(("a", "b"))
        os.mkdir("was-here", dir_fd=fd)
        target.remove(target.dir_fd(()), "a")
        assert not (root / "a").exists()
        fresh = target.dir_fd(("a", "b"))  # a new directory, not the removed one's descriptor
        os.mkdir("new", dir_fd=fresh)
        assert os.listdir(root / "a" / "b") == ["new"]
        assert target.find_dir(("gone",)) is None and target.lstat(("gone", "x")) is None
        assert list(target.listdir(("gone",))) == []
    finally:
        target.close()


def test_many_directories_go_through_the_descriptor_cache(tmp_path):
    entries: List[Tuple[str, str, object]] = []
    for number in range(300):  # more than the cache holds open at once
        entries += [(f"d{number:03}", "dir", None), (f"d{number:03}/f", "file", b"%d" % number)]
    repo, snap = _snapshot(tmp_path, entries)
    out = tmp_path / "out"
    assert restore_snapshot(repo, snap, str(out)).errors == []
    assert (out / "d299/f").read_bytes() == b"299" and (out / "d000/f").read_bytes() == b"0"
    again = restore_snapshot(repo, snap, str(out), overwrite="if-changed", delete=True)
    assert (again.created, again.replaced, again.deleted, again.unchanged) == ([], [], [], 601)
    assert len(os.listdir("/proc/self/fd")) < 100  # every directory descriptor closed


def test_a_symlinks_attributes_are_its_own_not_its_targets(tmp_path):
    repo, snap = _snapshot(tmp_path, [("f", "file", b"x"), ("l", "symlink", "f")],
                           xattrs={"f": (("user.a", b"1"),)})
    out = tmp_path / "out"
    assert restore_snapshot(repo, snap, str(out)).errors == []
    assert os.getxattr(out / "l", "user.a") == b"1"  # read through the link: the file's
    assert restore_snapshot(repo, snap, str(out)).conflicts == []
    os.setxattr(out / "f", "user.b", b"2")
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["f"]


class _Counted:
    """A Progress that keeps what it was told."""

    def __init__(self) -> None:
        self.expected: List[Tuple[Optional[int], Optional[int]]] = []
        self.files = self.bytes = 0

    def expect(self, files: Optional[int], bytes: Optional[int]) -> None:
        self.expected.append((files, bytes))

    def advance(self, files: int = 0, bytes: int = 0) -> None:
        self.files += files
        self.bytes += bytes


def test_progress_counts_and_times_of_what_is_written_and_always_rewrites(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"a" * 100), ("b", "file", b"b" * 200), ("d", "dir", None),
                                      ("d/c", "file", b"c" * 300), ("l", "symlink", "a")])
    out = tmp_path / "out"
    progress = _Counted()
    result = restore_snapshot(repo, snap, str(out), progress=progress)
    assert result.errors == [] and (result.files, result.bytes) == (3, 600)
    assert progress.expected == [(3, 600)] and (progress.files, progress.bytes) == (3, 600)
    for name in (".", "a", "d", "d/c"):  # directories get their times after they were filled
        assert os.stat(out / name).st_mtime_ns == MTIME, name

    inode = os.stat(out / "a").st_ino
    always = restore_snapshot(repo, snap, str(out), overwrite="always")
    assert sorted(always.replaced) == ["a", "b", "d/c", "l"] and always.unchanged == 2
    assert (always.files, always.bytes) == (3, 600) and os.stat(out / "a").st_ino != inode
    same = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert (same.replaced, same.files, same.unchanged) == ([], 0, 6)


def test_a_dry_run_tells_what_would_be_created_replaced_and_left_and_changes_nothing(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"a"), ("b", "file", b"b"), ("d", "dir", None),
                                      ("d/c", "file", b"c"), ("extra-free", "dir", None)])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    os.unlink(out / "a")
    (out / "b").write_bytes(b"B")
    (out / "d/stray").write_bytes(b"s")
    dry = restore_snapshot(repo, snap, str(out), overwrite="if-changed", delete=True, dry_run=True)
    assert (dry.created, dry.replaced, dry.deleted, dry.unchanged) == (["a"], ["b"], ["d/stray"], 4)
    assert dry.warnings == [] and dry.errors == [] and dry.files == 0
    assert not (out / "a").exists() and (out / "b").read_bytes() == b"B" and (out / "d/stray").exists()


def test_without_delete_what_the_snapshot_does_not_hold_stays(tmp_path):
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), ("d/c", "file", b"c")])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    (out / "d/mine").write_bytes(b"mine")
    result = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert result.deleted == [] and (out / "d/mine").read_bytes() == b"mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files another owner needs root")
def test_root_restores_recorded_owners_of_files_directories_and_links_themselves(tmp_path):
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), ("g", "file", b"g"), ("l", "symlink", "g")],
                           owners={"d": (12345, 23456), "g": (0, 0), "l": (34567, 45678)})
    out = tmp_path / "out"
    assert restore_snapshot(repo, snap, str(out)).errors == []
    owners = {name: (st.st_uid, st.st_gid) for name in ("d", "g", "l") for st in [os.lstat(out / name)]}
    assert owners == {"d": (12345, 23456), "g": (0, 0), "l": (34567, 45678)}
    assert restore_snapshot(repo, snap, str(out)).conflicts == []
    os.chown(out / "g", 1, 1)
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["g"]


def test_a_links_times_are_its_own_and_links_replace_what_is_in_their_way(tmp_path):
    repo, snap = _snapshot(tmp_path, [("dangling", "symlink", "nowhere"), ("f", "file", b"f"), ("l", "symlink", "f"),
                                      ("was-dir", "symlink", "f"), ("was-file", "symlink", "f")],
                           mtimes={"dangling": 1_000_000_000_000, "l": 2_000_000_000_000, "f": 3_000_000_000_000})
    out = tmp_path / "out"
    os.makedirs(out / "was-dir")  # empty: one holding entries is replaced only with --delete (see below)
    (out / "was-file").write_bytes(b"in the way")
    result = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert result.errors == [] and sorted(result.replaced) == ["was-dir", "was-file"]
    assert os.readlink(out / "was-dir") == "f" and os.readlink(out / "was-file") == "f"
    times = {name: os.lstat(out / name).st_mtime_ns for name in ("dangling", "l", "f")}
    assert times == {"dangling": 1_000_000_000_000, "l": 2_000_000_000_000, "f": 3_000_000_000_000}

    os.utime(out / "l", ns=(5, 5), follow_symlinks=False)
    os.utime(out / "dangling", ns=(5, 5), follow_symlinks=False)
    again = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert again.errors == [] and again.replaced == [] and again.unchanged == 6
    times = {name: os.lstat(out / name).st_mtime_ns for name in ("dangling", "l", "f")}
    assert times == {"dangling": 1_000_000_000_000, "l": 2_000_000_000_000, "f": 3_000_000_000_000}


def test_a_file_replaces_a_directory_and_a_directory_a_file(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"file now"), ("d", "dir", None), ("d/y", "file", b"y")])
    out = tmp_path / "out"
    os.makedirs(out / "a/deeper")
    (out / "a/deeper/x").write_bytes(b"x")
    (out / "d").write_bytes(b"a file where a directory goes")
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["a", "d"]
    kept = restore_snapshot(repo, snap, str(out), overwrite="if-changed")  # a/deeper/x: not the snapshot's
    assert [error.split(":")[0] for error in kept.errors] == ["a"] and (kept.replaced, kept.created) == (["d"], ["d/y"])
    assert (out / "a/deeper/x").read_bytes() == b"x"
    result = restore_snapshot(repo, snap, str(out), overwrite="if-changed", delete=True)
    assert result.errors == [] and result.replaced == ["a"]
    assert (out / "a").read_bytes() == b"file now" and (out / "d/y").read_bytes() == b"y"
    assert sorted(os.listdir(out)) == ["a", "d"]  # no temp name left behind


def test_an_entry_of_an_unknown_type_is_named_and_nothing_is_made_for_it(tmp_path):
    repo, snap = _snapshot(tmp_path, [("after", "file", b"after"), ("pipe", "fifo", None)])
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out))
    assert result.errors == ["pipe: unknown entry type 'fifo'"]
    assert not os.path.lexists(out / "pipe") and (out / "after").read_bytes() == b"after"
    assert result.created == [".", "after"]


def test_a_file_that_cannot_be_written_is_named_and_the_rest_is_restored(tmp_path):
    long_name = "n" * 300  # longer than NAME_MAX: ENAMETOOLONG for this file alone
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), (f"d/{long_name}", "file", b"x"), ("d/z", "file", b"z")],
                           modes={"d": 0o750})
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out), overwrite="always")
    assert result.errors == [f"d/{long_name}: {os.strerror(errno.ENAMETOOLONG)}"]
    assert (out / "d/z").read_bytes() == b"z" and stat.S_IMODE(os.stat(out / "d").st_mode) == 0o750
    assert os.listdir(out / "d") == ["z"]


def test_later_names_of_an_inode_at_other_depths_link_to_the_first(tmp_path):
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), ("d/a", "file", b"same"), ("d/e", "dir", None),
                                      ("d/e/b", "file", b"same"), ("z", "file", b"same")],
                           hardlinks={"d/e/b": "d/a", "z": "d/a"})
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out))
    assert result.errors == [] and result.files == 1
    assert os.stat(out / "d/e/b").st_ino == os.stat(out / "z").st_ino == os.stat(out / "d/a").st_ino
    assert os.stat(out / "d/a").st_nlink == 3 and sorted(os.listdir(out / "d/e")) == ["b"]


def test_paths_are_read_as_the_jobs_and_each_wrong_one_is_named(tmp_path):
    entries = [("conf", "dir", None), ("conf/a", "file", b"a"), ("conf/X", "file", b"X")]
    repo, snap = _snapshot(tmp_path, entries, source="/")  # riak's job path
    out = tmp_path / "root"
    assert restore_snapshot(repo, snap, str(out), ["/conf/a"]).errors == []
    assert os.listdir(out / "conf") == ["a"]
    repo, snap = _snapshot(tmp_path / "x", entries, source="/srv/X")
    assert restore_snapshot(repo, snap, str(tmp_path / "x-out"), ["/srv/X/conf/a"]).errors == []
    assert os.listdir(tmp_path / "x-out/conf") == ["a"]
    assert restore_snapshot(repo, snap, str(tmp_path / "x-rel"), ["conf/X"]).errors == []
    assert os.listdir(tmp_path / "x-rel/conf") == ["X"]
    whole = restore_snapshot(repo, snap, str(tmp_path / "whole"), ["/srv/X"])
    assert whole.created == [".", "conf", "conf/a", "conf/X"]
    with pytest.raises(PathError) as wrong:
        restore_snapshot(repo, snap, str(tmp_path / "no"), ["/etc", "../up", "/srv/Y", "a/../../b"])
    assert str(wrong.value).split("; ") == [
        "/etc: not under the job's path /srv/X", "../up: not a path inside the snapshot",
        "/srv/Y: not under the job's path /srv/X", "a/../../b: not a path inside the snapshot"]
    with pytest.raises(PathError) as missing:
        restore_snapshot(repo, snap, str(tmp_path / "no"), ["nope", "conf/b"])
    assert str(missing.value) == f"nope: not in snapshot {snap.id[:12]}; conf/b: not in snapshot {snap.id[:12]}"
    with pytest.raises(ValueError, match="overwrite must be one of"):
        restore_snapshot(repo, snap, str(tmp_path / "no"), overwrite="sometimes")
    assert not (tmp_path / "no").exists()

    repo, snap = _snapshot(tmp_path / "nosource", entries, source=None)
    assert restore_snapshot(repo, snap, str(tmp_path / "rel"), ["conf/a"]).errors == []
    with pytest.raises(PathError, match=r"^/conf: not under the job's path \(unknown\)$"):
        restore_snapshot(repo, snap, str(tmp_path / "no"), ["/conf"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user in a child")
def test_a_user_without_override_restores_unreadable_and_read_only_directories_and_deletes_in_them(tmp_path):
    repo = Repository.open(MemBackend(), create=True)  # in memory: the child reads it without permissions
    writer = repo.writer()
    own = {"uid": NOBODY, "gid": NOBODY, "mtime_ns": MTIME}
    entries = [Entry(".", "dir", 0o755, **own), Entry("locked", "dir", 0o000, **own),
               Entry("locked/inner", "dir", 0o755, **own),
               Entry("locked/inner/f", "file", 0o644, size=1, chunks=(writer.save(b"f")[0],), **own),
               Entry("ro", "dir", 0o555, **own), Entry("ro/x", "file", 0o444, size=1, chunks=(writer.save(b"x")[0],),
                                                         **own)]
    snap = snapshot_of(repo, writer, entries)
    out = tempfile.mkdtemp(prefix="restore-as-nobody-")  # /tmp lets another user reach it, tmp_path does not
    try:
        os.chown(out, NOBODY, NOBODY)
        first = as_nobody(lambda: restore_snapshot(repo, snap, out))
        assert first.errors == [] and first.created == ["locked", "locked/inner", "locked/inner/f", "ro", "ro/x"]
        modes = {name: stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) for name in ("locked", "ro", "ro/x")}
        assert modes == {"locked": 0o000, "ro": 0o555, "ro/x": 0o444}
        with open(os.path.join(out, "locked/inner/f"), "rb") as restored:
            assert restored.read() == b"f"

        for name in ("locked/stray", "locked/kept", "ro/stray"):  # root puts them there
            with open(os.path.join(out, name), "wb") as handle:
                handle.write(b"extra")
        keep = lambda path, is_dir: path == "locked/kept"  # noqa: E731
        dry = as_nobody(lambda: restore_snapshot(repo, snap, out, delete=True, dry_run=True, keep=keep))
        assert dry.deleted == ["ro/stray"] and dry.errors == []
        assert dry.warnings == ["locked: not readable without changing its mode; what --delete would remove in it "
                                "is known only when the restore opens it"]
        done = as_nobody(lambda: restore_snapshot(repo, snap, out, delete=True, overwrite="if-changed", keep=keep))
        assert done.errors == [] and done.deleted == ["ro/stray", "locked/stray"]
        assert sorted(os.listdir(os.path.join(out, "locked"))) == ["inner", "kept"]
        assert stat.S_IMODE(os.stat(os.path.join(out, "locked")).st_mode) == 0o000
        assert stat.S_IMODE(os.stat(os.path.join(out, "ro")).st_mode) == 0o555

        # every file rewritten, those in the 0000 directory too: a file this user cannot look at yet is
        # not taken for a directory holding entries
        always = as_nobody(lambda: restore_snapshot(repo, snap, out, overwrite="always", keep=keep))
        assert always.errors == [] and sorted(always.replaced) == ["locked/inner", "locked/inner/f", "ro/x"]
        assert always.unchanged == 3  # the directories it could look at
    finally:
        shutil.rmtree(out)


def test_a_link_pointing_elsewhere_is_a_conflict_at_any_depth(tmp_path):
    repo, snap = _snapshot(tmp_path, [("d", "dir", None), ("d/e", "dir", None), ("d/e/l", "symlink", "../f"),
                                      ("d/f", "file", b"f")])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    assert restore_snapshot(repo, snap, str(out)).conflicts == []
    os.unlink(out / "d/e/l")
    os.symlink("../elsewhere", out / "d/e/l")
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["d/e/l"]
    assert restore_snapshot(repo, snap, str(out), overwrite="if-changed").replaced == ["d/e/l"]
    assert os.readlink(out / "d/e/l") == "../f"


def test_keep_is_told_whether_an_extra_entry_is_a_directory(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"a")])
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    os.makedirs(out / "extra-dir/below")
    (out / "extra-file").write_bytes(b"x")
    result = restore_snapshot(repo, snap, str(out), delete=True, keep=lambda path, is_dir: is_dir)
    assert result.deleted == ["extra-file"] and (out / "extra-dir/below").is_dir()


def test_a_temp_name_already_taken_in_the_target_is_passed_over_and_left_alone(tmp_path, monkeypatch):
    """A killed restore's leftover (or a planted file) under the name a restore would write to first."""
    repo, snap = _snapshot(tmp_path, [("a", "file", b"alpha"), ("b", "file", b"alpha"), ("c", "file", b"c")],
                           hardlinks={"b": "a"})
    monkeypatch.setattr("agent.restorer.writer.secrets.token_hex", lambda size: "f" * size * 2)
    out = tmp_path / "out"
    out.mkdir()
    taken = [f".restore-{'f' * 12}{number:x}" for number in range(3)]
    for name in taken:
        (out / name).write_bytes(b"someone else's")
    result = restore_snapshot(repo, snap, str(out))
    assert result.errors == [] and result.created == ["a", "b", "c"]
    assert all((out / name).read_bytes() == b"someone else's" for name in taken)
    assert sorted(os.listdir(out)) == sorted(["a", "b", "c", *taken])
    assert os.lstat(out / "a").st_ino == os.lstat(out / "b").st_ino


def test_planning_a_new_target_does_not_look_for_each_missing_directory_again(tmp_path, monkeypatch):
    """The plan looks up every entry; in a new target the directories above them are missing, and each
    is found missing once, not once an entry (a failed open each, a hundred thousand of them)."""
    entries = [("conf", "dir", None)] + [(f"conf/f{number}", "file", b"x%d" % number) for number in range(50)]
    repo, snap = _snapshot(tmp_path, entries)
    opened: List[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    (tmp_path / "new").mkdir()
    monkeypatch.setattr("agent.restorer.target.os.open", counting_open)
    target = Target(str(tmp_path / "new"), create=False)
    plan = make_plan(repo, target, selection(read_tree(repo, snap.tree), [])[0], (), False, None)
    assert {step.action for step in plan.steps if step.parts} == {CREATE} and opened.count("conf") <= 1
    target.close()
    result = restore_snapshot(repo, snap, str(tmp_path / "new"))
    assert result.errors == [] and len(result.created) == 51  # "." was there
    assert (tmp_path / "new/conf/f7").read_bytes() == b"x7"


@pytest.mark.parametrize("cut", ["content", "mode"])
def test_a_new_file_a_crash_cut_short_is_found_different_by_the_next_restore(tmp_path, cut):
    """New files are written under their names, mode and times last: what a kill -9 leaves (content cut
    short, or whole but not yet given its mode) is never taken for restored."""
    content = os.urandom(300_000)
    repo, snap = _snapshot(tmp_path, [("a", "file", content), ("b", "file", b"b")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(content[:100_000] if cut == "content" else content)
    os.chmod(out / "a", 0o600)
    assert restore_snapshot(repo, snap, str(out)).conflicts == ["a"]
    result = restore_snapshot(repo, snap, str(out), overwrite="if-changed")
    assert result.errors == [] and result.replaced == ["a"] and (out / "a").read_bytes() == content
    assert stat.S_IMODE(os.lstat(out / "a").st_mode) == 0o644 and os.lstat(out / "a").st_mtime_ns == MTIME


def test_new_files_and_links_are_made_under_their_names_and_leave_no_temp_name(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"alpha"), ("b", "file", b"alpha"), ("d", "dir", None),
                                      ("d/c", "file", b"c")], hardlinks={"b": "a"})
    out = tmp_path / "out"
    result = restore_snapshot(repo, snap, str(out))
    assert result.errors == [] and result.created == [".", "a", "b", "d", "d/c"]
    assert sorted(os.listdir(out)) == ["a", "b", "d"] and os.listdir(out / "d") == ["c"]
    assert os.lstat(out / "a").st_ino == os.lstat(out / "b").st_ino and (out / "d/c").read_bytes() == b"c"


def test_a_directory_with_entries_is_never_replaced_by_a_file_without_delete(tmp_path):
    """Where the snapshot has a file or a symlink and the target a directory holding entries, replacing it
    would remove what the directory holds, which the snapshot does not hold: refused without --delete (and
    said in a dry run), done with it; an empty directory is simply replaced."""
    repo, snap = _snapshot(tmp_path, [("lib", "dir", None), ("lib/a.jar", "file", b"jar" * 100),
                                      ("empty.txt", "file", b""), ("current", "symlink", "lib")])
    out = tmp_path / "out"
    for name in ("lib/a.jar", "current"):
        (out / name / "inner").mkdir(parents=True)
        (out / name / "inner" / "precious").write_text("operator's")
    (out / "empty.txt").mkdir()
    dry = restore_snapshot(repo, snap, str(out), overwrite="if-changed", dry_run=True)
    assert sorted(error.split(":")[0] for error in dry.errors) == ["current", "lib/a.jar"]
    assert dry.replaced == ["empty.txt"]
    result = restore_snapshot(repo, snap, str(out), overwrite="always")
    assert sorted(error.split(":")[0] for error in result.errors) == ["current", "lib/a.jar"]
    assert (out / "lib/a.jar/inner/precious").read_text() == "operator's"
    assert (out / "current/inner/precious").read_text() == "operator's"
    assert (out / "empty.txt").is_file() and (out / "empty.txt").read_bytes() == b""
    deleted = restore_snapshot(repo, snap, str(out), overwrite="if-changed", delete=True)
    assert deleted.errors == [] and len(deleted.warnings) == 2
    assert (out / "lib/a.jar").read_bytes() == b"jar" * 100 and os.readlink(out / "current") == "lib"


def test_a_dry_run_of_always_counts_what_always_rewrites(tmp_path):
    repo, snap = _snapshot(tmp_path, [("a", "file", b"a" * 100), ("d", "dir", None), ("d/c", "file", b"c" * 300),
                                      ("l", "symlink", "a"), ("h", "file", b"a" * 100)], hardlinks={"h": "a"})
    out = tmp_path / "out"
    restore_snapshot(repo, snap, str(out))
    (out / "d/c").write_bytes(b"changed")
    dry = restore_snapshot(repo, snap, str(out), overwrite="always", dry_run=True)
    done = restore_snapshot(repo, snap, str(out), overwrite="always")
    assert (sorted(dry.replaced), dry.unchanged, dry.created) == (sorted(done.replaced), done.unchanged, done.created)
    assert sorted(done.replaced) == ["a", "d/c", "h", "l"] and done.unchanged == 2  # "." and "d"


def test_a_later_name_another_restore_linked_meanwhile_leaves_no_temp_name(tmp_path):
    """rename(2) does nothing when both names are links to one inode: two restores into one target, the
    other one having just linked the name to the same first name."""
    from agent.restorer.plan import Step
    from agent.restorer.writer import RestoreResult, Writer

    repo, snap = _snapshot(tmp_path, [("a", "file", b"a" * 100), ("b", "file", b"a" * 100)], hardlinks={"b": "a"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"a" * 100)
    os.link(out / "a", out / "b")  # what the other restore did after this one's plan found b different
    entries = {entry.path: entry for entry in _entries(repo, snap)}
    target = Target(str(out), create=False)
    try:
        writer = Writer(repo, target, always=False, owner=False, result=RestoreResult())
        writer.good["a"] = ("a",)
        writer.step(Step(("b",), entries["b"], REPLACE))
    finally:
        target.close()
    assert sorted(os.listdir(out)) == ["a", "b"] and os.stat(out / "b").st_ino == os.stat(out / "a").st_ino


def test_an_interrupt_just_after_a_file_is_renamed_into_place_is_not_lost(tmp_path, monkeypatch):
    """A KeyboardInterrupt between the rename and the next step: removing the temp name (gone already)
    must not replace the interrupt with an error of its own. The instant cannot be had on demand: the
    rename is followed by the interrupt."""
    repo, snap = _snapshot(tmp_path, [("a", "file", b"new content")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"old")
    rename = os.rename

    def rename_then_interrupt(*args, **kwargs):
        rename(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("agent.restorer.writer.os.rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        restore_snapshot(repo, snap, str(out), overwrite="always")
    assert os.listdir(out) == ["a"] and (out / "a").read_bytes() == b"new content"


def test_a_directory_another_restore_makes_between_look_and_mkdir_is_used(tmp_path, monkeypatch):
    """Two restores into one new target: the other one makes the directory after this one found it
    missing and before its mkdir. The instant cannot be had on demand: the first open makes it, then
    reports it missing."""
    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open
    raced: List[str] = []

    def open_after_the_other_restore(path, flags, mode=0o777, *, dir_fd=None):
        if path == "conf" and not raced:
            raced.append(path)
            os.mkdir(path, 0o755, dir_fd=dir_fd)  # the other restore, just now
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    target = Target(str(out), create=False)
    try:
        monkeypatch.setattr("agent.restorer.target.os.open", open_after_the_other_restore)
        fd = target.dir_fd(("conf",))
        assert raced and os.path.samestat(os.fstat(fd), os.stat(out / "conf"))
    finally:
        target.close()


@pytest.mark.parametrize("instant", ["made", "held"])
def test_an_interrupt_as_a_temp_file_is_made_leaves_no_temp_file(tmp_path, monkeypatch, instant):
    """A KeyboardInterrupt is raised as the call that created the temp file returns (the kernel's file
    creation is most of a restore's time, so that is where an interrupt most often lands), or while the file
    is being locked: the temp file goes with the restore. The instants cannot be had on demand."""
    repo, snap = _snapshot(tmp_path, [("a", "file", b"new content")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_bytes(b"old")
    real_open = os.open

    def open_then_interrupt(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if str(path).startswith(".restore-"):
            os.close(fd)
            raise KeyboardInterrupt
        return fd

    def interrupt(fd):
        raise KeyboardInterrupt

    if instant == "made":
        monkeypatch.setattr("agent.restorer.writer.os.open", open_then_interrupt)
    else:
        monkeypatch.setattr("agent.restorer.writer.hold", interrupt)
    with pytest.raises(KeyboardInterrupt):
        restore_snapshot(repo, snap, str(out), overwrite="always")
    assert os.listdir(out) == ["a"] and (out / "a").read_bytes() == b"old"
