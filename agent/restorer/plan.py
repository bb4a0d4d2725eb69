"""What a restore would do: each selected snapshot entry compared with what the target holds now, and
the target's entries that the snapshot does not hold (for `--delete`). Looking changes nothing.

An entry is `create` (nothing there), `same` (type, content, link target, mode, extended attributes
and, for root, owner as recorded; for a later name of a hard-linked inode, already that inode; a
timestamp alone is no difference, the restore just sets it) or `replace` (anything else: under
`--overwrite never` these are the conflicts). A directory in the way of a directory is `same`:
directories never conflict, their recorded metadata is applied.
"""

from __future__ import annotations

import os
import stat
from typing import AbstractSet, BinaryIO, Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Set, Tuple

from agent.leftovers import is_temp_name
from agent.restorer.target import Parts, Target, safe_parts
from agent.restorer.xattrs import reach, xattrs_differ
from agent.store import Repository
from agent.store.manifest import Entry

Keep = Callable[[str, bool], bool]  # (path relative to the target, is a directory) -> never delete it

CREATE = "create"
REPLACE = "replace"
SAME = "same"

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Step(NamedTuple):
    parts: Parts
    entry: Entry
    action: str  # CREATE, REPLACE or SAME


class Plan(NamedTuple):
    steps: Tuple[Step, ...]  # manifest order: a directory before what it holds
    delete: Tuple[Parts, ...]  # topmost extra entries only: removing a directory removes what it holds
    problems: Tuple[str, ...] = ()  # directories that could not be listed for --delete, named
    # directories of ours that could not be listed without a chmod (0000, say): their extra entries are
    # found once the restore has opened them (see extras), never in a dry run
    unlisted: Tuple[Parts, ...] = ()
    held: FrozenSet[Parts] = frozenset()

    def paths(self, action: str) -> List[str]:
        return [show(step.parts) for step in self.steps if step.action == action]


def show(parts: Parts) -> str:
    return "/".join(parts) or "."


def make_plan(repo: Repository, target: Target, selected: Iterable[Tuple[Parts, Entry]],
              delete_under: Iterable[Parts] = (), owner: bool = False, keep: Optional[Keep] = None) -> Plan:
    """Compare `selected` (parts, entry) pairs, in manifest order, with `target`. With `delete_under`
    (the restored paths), also list what lies below those paths in the target but not in the snapshot,
    except what `keep(path, is_dir)` keeps (what the job excludes: the snapshot says nothing about it).
    An entry that cannot be read counts as different."""
    steps: List[Step] = []
    held: Set[Parts] = set()
    firsts: Dict[str, Step] = {}  # files by path: the first names that later names of an inode link to
    for parts, entry in selected:
        held.add(parts)
        first = firsts.get(entry.hardlink) if entry.hardlink else None
        if first is not None:
            step = Step(parts, entry, _compare_link(target, parts, first))
        else:
            step = Step(parts, entry, _compare(repo, target, parts, entry, owner))
            if entry.type == "file":
                firsts[entry.path] = step
        steps.append(step)
    dirs = {step.parts for step in steps if step.entry.type == "dir" and step.action == SAME}
    extra: List[Parts] = []
    problems: List[str] = []
    unlisted: List[Parts] = []
    for top in delete_under:
        for parts in sorted(dirs):
            if parts[: len(top)] == top:
                try:
                    extra.extend(extras(target, parts, held, keep))
                except PermissionError:
                    unlisted.append(parts)
                except OSError as exc:
                    problems.append(f"{show(parts)}: cannot be listed, nothing deleted in it: "
                                    f"{exc.strerror or exc}")
    return Plan(tuple(steps), tuple(dict.fromkeys(extra)), tuple(dict.fromkeys(problems)),
                tuple(dict.fromkeys(unlisted)), frozenset(held))


def extras(target: Target, parts: Parts, held: AbstractSet[Parts], keep: Optional[Keep]) -> List[Parts]:
    """The entries of directory `parts` in the target that are not `held` nor kept; raises OSError."""
    return [parts + (name,) for name in sorted(target.listdir(parts))
            if parts + (name,) not in held and not _kept(target, parts + (name,), keep)
            and not _restore_temp(target, parts + (name,))]


def _restore_temp(target: Target, parts: Parts) -> bool:
    """A restore's temp file: left to the sweep (leftovers.py), which never takes one a live restore
    is writing."""
    if not is_temp_name(parts[-1]):
        return False
    try:
        st = target.lstat(parts)
    except OSError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode)


def _kept(target: Target, parts: Parts, keep: Optional[Keep]) -> bool:
    if keep is None:
        return False
    try:
        st = target.lstat(parts)
    except OSError:
        return True  # what cannot be looked at is not deleted
    return keep("/".join(parts), st is not None and stat.S_ISDIR(st.st_mode))


def _compare(repo: Repository, target: Target, parts: Parts, entry: Entry, owner: bool) -> str:
    try:
        st = target.lstat(parts)
    except OSError:
        return REPLACE
    if st is None or (not parts and target.fresh):
        return CREATE
    if entry.type == "dir":
        return SAME if stat.S_ISDIR(st.st_mode) else REPLACE
    if stat.S_IMODE(st.st_mode) != entry.mode and entry.type != "symlink":
        return REPLACE
    if owner and (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
        return REPLACE
    if entry.type == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            return REPLACE
        parent = target.find_dir(parts[:-1])
        try:
            if parent is None or os.readlink(parts[-1], dir_fd=parent) != entry.target:
                return REPLACE
        except OSError:
            return REPLACE
        return REPLACE if _xattrs_differ(target, parts, entry) else SAME
    if entry.type == "file" and stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
        return SAME if _same_content(repo, target, parts, entry) and not _xattrs_differ(target, parts, entry) \
            else REPLACE
    return REPLACE


def _xattrs_differ(target: Target, parts: Parts, entry: Entry) -> bool:
    try:
        parent = target.find_dir(parts[:-1])
    except OSError:
        return True
    return parent is None or xattrs_differ(reach(parent, parts[-1]), entry.xattrs, entry.type == "symlink")


def _compare_link(target: Target, parts: Parts, first: Step) -> str:
    """A later name of an inode whose first name is restored too: the same only if it is already that
    inode (and the first name is the same), else it is (re)linked."""
    try:
        st = target.lstat(parts)
        if st is None:
            return CREATE
        if first.action != SAME:
            return REPLACE
        first_st = target.lstat(first.parts)
    except OSError:
        return REPLACE
    same = first_st is not None and (st.st_dev, st.st_ino) == (first_st.st_dev, first_st.st_ino)
    return SAME if same else REPLACE


def _same_content(repo: Repository, target: Target, parts: Parts, entry: Entry) -> bool:
    """Whether the file at `parts` holds exactly the entry's chunks: read in the chunks' raw lengths
    (from the index, no pack is read) and hashed as the repository names blobs (SHA-256 of the raw
    bytes, keyed in an encrypted repository). A chunk missing from the index, or a file that cannot be
    read, is a difference."""
    parent = target.find_dir(parts[:-1])
    if parent is None:
        return False
    try:
        fd = os.open(parts[-1], _READ, dir_fd=parent)
    except OSError:
        return False
    try:
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            for chunk in entry.chunks:
                location = repo.index.get(chunk)
                if location is None:
                    return False
                data = _read_exactly(handle, location.raw_length)
                if data is None or repo.hash_blob(data) != chunk:
                    return False
            return handle.read(1) == b""
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_exactly(handle: BinaryIO, size: int) -> Optional[bytes]:
    pieces = []
    while size:
        piece = handle.read(size)
        if not piece:
            return None
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def selection(entries: Iterable[Entry], wanted: List[Parts]) -> Tuple[List[Tuple[Parts, Entry]], List[str],
                                                                      List[bool]]:
    """The entries to restore: everything (no `wanted`), or those at or below a wanted path plus the
    directories above them (created with their recorded modes). Returns (selected pairs in manifest
    order, manifest paths refused as unsafe, for each wanted path whether the snapshot holds it)."""
    ancestors: Dict[Parts, None] = {}
    for prefix in wanted:
        for depth in range(len(prefix)):
            ancestors[prefix[:depth]] = None
    chosen: List[Tuple[Parts, Entry]] = []
    unsafe: List[str] = []
    found = [False] * len(wanted)
    for entry in entries:
        parts = safe_parts(entry.path)
        if parts is None:
            unsafe.append(entry.path)
            continue
        if not wanted:
            chosen.append((parts, entry))
            continue
        hit = False
        for number, prefix in enumerate(wanted):
            if parts[: len(prefix)] == prefix:
                found[number] = hit = True
        if hit or (parts in ancestors and entry.type == "dir"):
            chosen.append((parts, entry))
    return chosen, unsafe, found
