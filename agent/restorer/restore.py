"""Restore a snapshot (or some paths of it) into a directory, never writing outside that directory.

Every path is opened relative to a directory descriptor with O_NOFOLLOW, so neither a tampered manifest
(`../x`, `/etc/x`) nor a symlink planted in the target can redirect a write. Files are written to a temp
name and renamed into place, so a restore never leaves a half-written file under a real name.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from agent.store import DamagedBlobError, Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    errors: List[str] = field(default_factory=list)


def safe_parts(path: str) -> Optional[Tuple[str, ...]]:
    """The components of a manifest path, or None if it could escape the target."""
    if path == ".":
        return ()
    if not path or path.startswith("/") or "\0" in path:
        return None
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        return None
    return parts


def _selected(parts: Tuple[str, ...], wanted: List[Tuple[str, ...]]) -> bool:
    return not wanted or any(parts[: len(prefix)] == prefix for prefix in wanted)


class _Target:
    """Directory descriptors below the restore target, opened without following any symlink."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, 0o700, exist_ok=True)
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds: Dict[Tuple[str, ...], int] = {(): self.root_fd}

    def dir_fd(self, parts: Tuple[str, ...]) -> int:
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        if len(self._fds) > 256:
            self._close_cached()
        parent = self.dir_fd(parts[:-1])
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            # A symlink or file where the snapshot has a directory: replace the entry itself, never
            # follow it (a planted link must not lead a write outside the target).
            os.unlink(name, dir_fd=parent)
            os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._fds[parts] = fd
        return fd

    def _close_cached(self) -> None:
        for key, fd in list(self._fds.items()):
            if key:
                os.close(fd)
                del self._fds[key]

    def close(self) -> None:
        self._close_cached()
        os.close(self.root_fd)


def restore_snapshot(repo: Repository, snapshot: Snapshot, target: str,
                     paths: Iterable[str] = ()) -> RestoreResult:
    result = RestoreResult()
    wanted = []
    for path in paths:
        parts = safe_parts(os.path.normpath(path).strip("/") or ".")
        if parts is None:
            result.errors.append(f"{path}: not a path inside the snapshot")
            return result
        wanted.append(parts)
    owner = os.geteuid() == 0
    entries = list(read_tree(repo, snapshot.tree))
    found = [False] * len(wanted)
    dirs: List[Tuple[Tuple[str, ...], Entry]] = []
    dest = _Target(target)
    try:
        for entry in entries:
            parts = safe_parts(entry.path)
            if parts is None:
                result.errors.append(f"{entry.path!r}: unsafe path in the manifest, not restored")
                continue
            if not _selected(parts, wanted):
                continue
            for number, prefix in enumerate(wanted):
                found[number] = found[number] or parts[: len(prefix)] == prefix
            try:
                if entry.type == "dir":
                    dest.dir_fd(parts)
                    dirs.append((parts, entry))
                elif entry.type == "file" and parts:
                    _restore_file(repo, dest.dir_fd(parts[:-1]), parts[-1], entry, owner)
                    result.files += 1
                    result.bytes += entry.size
                elif entry.type == "symlink" and parts:
                    _restore_symlink(dest.dir_fd(parts[:-1]), parts[-1], entry, owner)
                else:
                    result.errors.append(f"{entry.path}: unknown entry type {entry.type!r}")
            except DamagedBlobError as exc:
                result.errors.append(f"{entry.path}: {exc}")
            except OSError as exc:
                result.errors.append(f"{entry.path}: {exc.strerror or exc}")
        # Directory modes and times last, deepest first: writing into a directory changes its mtime,
        # and a read-only directory could not be filled.
        for parts, entry in sorted(dirs, key=lambda item: len(item[0]), reverse=True):
            try:
                fd = dest.dir_fd(parts)
                if owner:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            except OSError as exc:
                result.errors.append(f"{entry.path}: {exc.strerror or exc}")
    finally:
        dest.close()
    for number, prefix in enumerate(wanted):
        if not found[number]:
            result.errors.append(f"{'/'.join(prefix)}: not in snapshot {snapshot.id[:12]}")
    return result


def _restore_file(repo: Repository, parent: int, name: str, entry: Entry, owner: bool) -> None:
    tmp = f".restore-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=parent)
    try:
        for chunk in entry.chunks:
            view = memoryview(repo.read_blob(chunk))
            while view:
                view = view[os.write(fd, view):]
        if owner:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=parent)
        raise
    os.close(fd)
    try:
        existing = os.lstat(name, dir_fd=parent)
        if stat.S_ISDIR(existing.st_mode):
            os.unlink(tmp, dir_fd=parent)
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way")
    except FileNotFoundError:
        pass
    os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _restore_symlink(parent: int, name: str, entry: Entry, owner: bool) -> None:
    try:
        existing = os.lstat(name, dir_fd=parent)
        if stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way")
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    os.symlink(entry.target, name, dir_fd=parent)
    if owner:
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)
