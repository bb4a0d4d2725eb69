"""Proving a tree snapshot (`fs`, `riak`): restore it into an empty directory with the restorer, then
check every entry of the manifest against what is on disk -- type, size, mode, link target, and each
file's content hashed as the repository names its blobs (SHA-256 of each chunk, read in the chunks'
raw lengths from the index) -- and that the restored tree holds as many files as the manifest.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import List, NamedTuple, Optional, Sequence, Tuple

from agent.drill.proof import Proof
from agent.restorer import fanout, restore_snapshot, safe_parts
from agent.restorer.target import Target, open_up
from agent.store import Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree
from agent.text import plural

_TYPES = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_BYTES_A_FILE = 64 * 1024  # the bytes hashed in the time a file is opened and looked at: parts of equal work


def prove_tree(repo: Repository, snapshot: Snapshot, directory: str, fork_writers: bool = False) -> Proof:
    """Restore `snapshot` into the empty `directory` and check it (see the module). Every difference is
    an error naming the path; a blob the restore could not read is named by the restorer's error.
    Raises DamagedBlobError if the manifest itself cannot be read. `fork_writers`: see restore_snapshots."""
    manifest = list(read_tree(repo, snapshot.tree))
    restored = restore_snapshot(repo, snapshot, directory, entries=manifest, fork_writers=fork_writers)
    errors: List[str] = list(restored.errors)
    named = {error.split(": ", 1)[0] for error in restored.errors}
    expected_files = sum(1 for entry in manifest if entry.type == "file")
    checks: List[_Check] = []
    for entry in manifest:
        parts = safe_parts(entry.path)
        if parts is not None and entry.path not in named:  # else the restorer named it (unsafe, unreadable)
            checks.append(_Check(parts, entry))
    writers = fanout.writers_for(len(checks)) if fork_writers else 1
    if writers == 1:
        errors.extend(_checked(repo, directory, checks))
    else:  # as the restore: hashing 100k files is work for every core; parts in manifest order
        # directories first, here: each one's mode is compared before a part opens it up (a 0000 one)
        errors.extend(_checked(repo, directory, [check for check in checks if check.entry.type == "dir"]))
        others = [check for check in checks if check.entry.type != "dir"]
        slices = fanout.split(others, writers, lambda check: 1 + check.entry.size / _BYTES_A_FILE)
        for outcome in fanout.in_processes(len(slices), lambda number, progress, halt: _checked(
                repo, directory, slices[number]), None):
            if isinstance(outcome, fanout.PartFailed):
                errors.append(f"the check of a part of the tree ended: {outcome.why}")
            else:
                errors.extend(outcome)
    found = _count_files(directory)
    if found != expected_files:
        errors.append(f"the restored tree holds {plural(found, 'file')}, the manifest {expected_files}")
    return Proof(errors=tuple(errors), warnings=tuple(restored.warnings), files=expected_files,
                 bytes=restored.bytes)


class _Check(NamedTuple):
    parts: Tuple[str, ...]
    entry: Entry


def _checked(repo: Repository, directory: str, checks: Sequence[_Check]) -> List[str]:
    """Every problem `checks` find in the restored tree, in their order (one process's part)."""
    problems: List[str] = []
    with _Checker(repo, directory) as checker:
        for parts, entry in checks:
            problem = checker.check(parts, entry)
            if problem:
                problems.append(f"{entry.path}: {problem}")
    return problems


class _Checker:
    """Checks restored entries below `directory`, each looked up relative to its directory's descriptor
    (the restorer's Target: opened one component at a time, never through a link, and kept for the next
    entries there: a hundred thousand full path walks cost more than the checks)."""

    def __init__(self, repo: Repository, directory: str) -> None:
        self.repo = repo
        self.directory = directory
        self._target = Target(directory, create=False)

    def __enter__(self) -> _Checker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._target.close()

    def _dir(self, parts: Tuple[str, ...]) -> int:
        """The descriptor of a restored directory; OSError(ENOENT) if there is none (or a link instead).
        One restored without owner permissions (0000) is opened up: it is the drill's own copy, its mode
        compared already (a parent comes before its entries in the manifest)."""
        fd = self._target.find_dir(parts, open_up=True)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/".join(parts))
        return fd

    def check(self, parts: Tuple[str, ...], entry: Entry) -> Optional[str]:
        """What is wrong with the restore of `entry` at `parts` below the directory, None if nothing."""
        try:
            if not parts:
                return _check_stat(os.lstat(self.directory), entry)
            parent, name = self._dir(parts[:-1]), parts[-1]
            first = safe_parts(entry.hardlink) if entry.type == "file" and entry.hardlink else None
            if first is not None:
                return self._check_later_name(os.lstat(name, dir_fd=parent), first, entry)
            if entry.type == "file":  # opened without following a link: one lookup, then fstat
                return self._check_file(parent, name, entry)
            problem = _check_stat(os.lstat(name, dir_fd=parent), entry)
            if problem or entry.type != "symlink":
                return problem
            target = os.readlink(name, dir_fd=parent)
        except OSError as exc:
            return f"not restored ({exc.strerror})"
        return None if target == entry.target else f"links to {target!r}, the manifest says {entry.target!r}"

    def _check_later_name(self, st: os.stat_result, first: Tuple[str, ...], entry: Entry) -> Optional[str]:
        """A later name of an inode (`st`) is right if it is the first name's inode: that inode's type,
        mode, size and content are checked under the first name, before a non-root drill makes a 0000
        file readable (then every name of it shows the drill's own 0400)."""
        first_st = os.lstat(first[-1], dir_fd=self._dir(first[:-1]))
        if (st.st_dev, st.st_ino) != (first_st.st_dev, first_st.st_ino):
            return f"not the same file as {entry.hardlink}, as the manifest says (a hard link)"
        return None

    def _check_file(self, parent: int, name: str, entry: Entry) -> Optional[str]:
        try:
            fd, problem = _open_file(parent, name, entry, self._target.euid)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                return f"not restored ({exc.strerror})" if exc.errno == errno.ENOENT else \
                    f"cannot be read ({exc.strerror})"
            return f"restored as something other than a {entry.type}"
        if fd is None:
            return problem
        try:
            return problem or _content_problem(self.repo, fd, entry)
        finally:
            os.close(fd)


def _open_file(parent: int, name: str, entry: Entry, euid: int) -> Tuple[Optional[int], Optional[str]]:
    """(`name` in `parent` opened for reading, what its status says is wrong with it as `entry`): never
    opened through a link, and a fifo in its place must not block. A file restored without owner read
    (0000, 0200) has its status compared first (no descriptor if that fails) and is then made readable
    if it is this user's own: the drill's copy, not the file the snapshot came from. Raises OSError
    (ELOOP for a link; EACCES for a file of another user, or as root: open_up changes nothing then)."""
    flags = _READ | os.O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except PermissionError:
        problem = _check_stat(os.lstat(name, dir_fd=parent), entry)
        if problem:
            return None, problem
        open_up(parent, name, euid, stat.S_IRUSR, stat.S_IFREG)
        return os.open(name, flags, dir_fd=parent), None
    return fd, _check_stat(os.fstat(fd), entry)


def _check_stat(st: os.stat_result, entry: Entry) -> Optional[str]:
    """What the entry's type, mode and size say that `st` does not, None if nothing."""
    if not _TYPES[entry.type](st.st_mode):
        return f"restored as something other than a {entry.type}"
    if entry.type != "symlink" and stat.S_IMODE(st.st_mode) != entry.mode:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, the manifest says {entry.mode:04o}"
    if entry.type == "file" and st.st_size != entry.size:
        return f"{st.st_size} bytes, the manifest says {entry.size}"
    return None


def content_problem(repo: Repository, path: str, entry: Entry) -> Optional[str]:
    """Whether the file holds exactly the entry's chunks, each hashed as the repository names blobs."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    try:
        return _content_problem(repo, fd, entry)
    finally:
        os.close(fd)


def _content_problem(repo: Repository, fd: int, entry: Entry) -> Optional[str]:
    for number, chunk in enumerate(entry.chunks):
        location = repo.index.get(chunk)
        if location is None:
            return f"chunk {number} ({chunk.hex()[:12]}) is not in the index"
        # one read a chunk, unbuffered: a buffer per file would cost more than the small files it reads
        data = _read_exactly(fd, location.raw_length)
        if len(data) != location.raw_length or repo.hash_blob(data) != chunk:
            return f"content differs from the manifest at chunk {number} ({chunk.hex()[:12]})"
    return None


def _read_exactly(fd: int, length: int) -> bytes:
    """`length` bytes from `fd`, fewer only at the end of the file."""
    data = os.read(fd, length)
    if len(data) == length or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < length:
        piece = os.read(fd, length - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _count_files(directory: str) -> int:
    """Regular files below `directory`: each directory opened relative to its parent's descriptor (paths
    longer than PATH_MAX count too; one descriptor open per level), links not followed, types from the
    directory entries. An unreadable directory's files are not counted: the count then says so."""
    try:
        top = os.open(directory, _DIR | os.O_NOFOLLOW)
    except OSError:
        return 0
    count, subdirectories = _listing(top)
    stack = [(top, iter(subdirectories))]
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            os.close(parent)
            stack.pop()
            continue
        try:
            child = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent)
        except OSError:
            continue
        try:
            files, below = _listing(child)
        except OSError:
            os.close(child)
            continue
        count += files
        stack.append((child, iter(below)))
    return count


def _listing(fd: int) -> Tuple[int, List[str]]:
    """(regular files, names of subdirectories) of the open directory `fd`."""
    files, subdirectories = 0, []
    with os.scandir(fd) as entries:
        for found in entries:
            if found.is_dir(follow_symlinks=False):
                subdirectories.append(found.name)
            elif found.is_file(follow_symlinks=False):
                files += 1
    return files, subdirectories
