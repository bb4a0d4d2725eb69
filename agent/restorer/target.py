"""The restore target: directory descriptors below DIR and the few things a restore does there (look,
create, make writable, remove), none of which can reach outside DIR.

Every name is resolved one component at a time relative to its parent's descriptor with O_NOFOLLOW, so
neither a tampered manifest (`../x`, `/etc/x`; refused before it gets here by `safe_parts`) nor a symlink
planted in the target can redirect a write or a delete, and paths longer than PATH_MAX work.
`remove_tree` is the same removal for a directory of the caller's own (a drill's scratch directory).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Dict, Iterator, Optional, Set, Tuple

Parts = Tuple[str, ...]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHED_FDS = 256  # open directory descriptors kept; past it the cache starts over
_LINK = "{} is a symbolic link: not followed (a link there could send the restore outside its directory); " \
    "remove it, or restore elsewhere"


class TargetError(Exception):
    """DIR cannot be a restore target (it is a file, say); the message names it."""


class PathError(Exception):
    """A PATH to restore is outside the job's path or not in the snapshot; the message names each."""


def safe_parts(path: str) -> Optional[Parts]:
    """The components of a manifest path ('.' is the root), or None if it could escape the target."""
    if path == ".":
        return ()
    if not path or path.startswith("/") or "\0" in path:
        return None
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        return None
    return parts


class Target:
    """DIR, opened once; `dir_fd` opens (and creates) directories below it and caches their descriptors.

    Without `create` (a dry run) a missing DIR is not created and looks empty; `dir_fd` must not be
    called then. A symlink at DIR itself is followed only with `follow_root` (the operator named DIR:
    `restore SNAPSHOT --target DIR`); a DIR the caller derived (`restore --all`'s DIR/JOB, a drill's
    scratch directory) that is a link is refused, so that a link planted there cannot send the restore
    elsewhere. Raises TargetError if DIR exists and is not a directory (or is such a link), or cannot be
    created or opened."""

    def __init__(self, root: str, create: bool = True, follow_root: bool = False) -> None:
        self.root = root
        self.euid = os.geteuid()
        self._fds: Dict[Parts, int] = {}
        # directories found missing: the plan looks up every entry, and in a new target each lookup
        # would try to open the same missing directories again (one failed open an entry)
        self._missing: Set[Parts] = set()
        self._opened_writable: Set[Parts] = set()
        self.fresh = not os.path.lexists(root)  # DIR did not exist: made (or, in a dry run, to be made) now
        if not follow_root and os.path.islink(root):
            raise TargetError(_LINK.format(root))
        try:
            if create:
                os.makedirs(root, 0o700, exist_ok=True)
            elif not os.path.lexists(root):
                return
            # O_NOFOLLOW: a link put there after the check above is refused too, never followed
            self._fds[()] = os.open(root, _DIR_FLAGS if not follow_root else _DIR_FLAGS & ~os.O_NOFOLLOW)
        except FileExistsError:
            raise TargetError(f"{root} exists and is not a directory") from None
        except NotADirectoryError:
            if not follow_root and os.path.islink(root):  # what O_NOFOLLOW with O_DIRECTORY says of a link
                raise TargetError(_LINK.format(root)) from None
            raise TargetError(f"{root} is not a directory (or a parent of it is not)") from None
        except OSError as exc:
            raise TargetError(f"{root}: {exc.strerror or exc}") from None

    # --- looking, changing nothing ---------------------------------------------------------------------

    def find_dir(self, parts: Parts, open_up: bool = False) -> Optional[int]:
        """The descriptor of an existing directory (never a symlink to one), or None; creates nothing.
        With `open_up`, a directory of this user that it may not open or search (0000, 0600) gets owner
        rwx on the way (a drill checking its own scratch copy: the mode was compared before, parents come
        first)."""
        fd = self._fds.get(parts)
        if fd is not None or not parts or parts in self._missing:
            return fd
        parent = self.find_dir(parts[:-1], open_up)
        if parent is None:
            self._missing.add(parts)
            return None
        try:
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except PermissionError:
                if not open_up:
                    raise
                _open_up(parent, parts[-1], self.euid)
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self._missing.add(parts)
                return None
            raise
        if open_up:  # one it may read but not search (0600) would hide its entries all the same
            _make_writable(fd, self.euid, need=0o500)
        return self._remember(parts, fd)

    def lstat(self, parts: Parts) -> Optional[os.stat_result]:
        """What is at `parts` now (a symlink is not followed), or None if nothing is."""
        if not parts:
            root = self._fds.get(())
            return None if root is None else os.fstat(root)
        parent = self.find_dir(parts[:-1])
        if parent is None:
            return None
        try:
            return os.lstat(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return None

    def listdir(self, parts: Parts) -> Iterator[str]:
        """Names in an existing directory (none if it is absent or not a directory)."""
        fd = self.find_dir(parts)
        if fd is None:
            return iter(())
        return iter(os.listdir(fd))

    # --- changing ----------------------------------------------------------------------------------------

    def dir_fd(self, parts: Parts) -> int:
        """An existing or new directory at `parts` that this process can write into. Anything else in
        the way (a file, a symlink, ...) is removed, never followed. A directory of ours without owner
        write or search permission (a 0555 directory restored before) gets them until the restore sets
        its recorded mode: a process without CAP_DAC_OVERRIDE could not fill it otherwise."""
        fd = self._fds.get(parts)
        if fd is None:
            parent = self.dir_fd(parts[:-1])
            name = parts[-1]
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                _make_dir(parent, name)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except PermissionError:
                _open_up(parent, name, self.euid)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self.remove(parent, name)
                _make_dir(parent, name)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            fd = self._remember(parts, fd)
            self._missing.clear()  # it, and maybe what was missing below it, exist now
        if parts not in self._opened_writable:
            _make_writable(fd, self.euid)
            self._opened_writable.add(parts)
        return fd

    def remove(self, parent: int, name: str) -> None:
        """Remove `name` in directory `parent`, a directory with everything below it, never following
        a symlink (a link is removed, not what it points to)."""
        if not _unlinked(parent, name):
            self._forget_below(parent, name)
            _remove_dir(parent, name, self.euid)

    def _forget_below(self, parent: int, name: str) -> None:
        """Drop cached descriptors of a directory about to be removed (and of everything below it)."""
        for parts in list(self._fds):
            if parts and self._fds.get(parts[:-1]) == parent and parts[-1] == name:
                for key in [key for key in self._fds if key[: len(parts)] == parts]:
                    os.close(self._fds.pop(key))
                    self._opened_writable.discard(key)

    def _remember(self, parts: Parts, fd: int) -> int:
        if len(self._fds) > _CACHED_FDS:
            self._close_cached()
        self._fds[parts] = fd
        return fd

    def _close_cached(self) -> None:
        for key, fd in list(self._fds.items()):
            if key:
                os.close(fd)
                del self._fds[key]

    def close(self) -> None:
        self._close_cached()
        root = self._fds.pop((), None)
        if root is not None:
            os.close(root)


def _make_dir(parent: int, name: str) -> None:
    """A new private directory (its recorded mode comes last); one made meanwhile by another restore into
    the same target is as good (the open that follows refuses anything but a directory)."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass


def remove_tree(parent: int, name: str) -> None:
    """Remove `name` in the open directory `parent` and, if it is a directory, everything below it, each
    entry relative to its directory's descriptor: a symlink is removed, never followed. A directory of this
    process's user that refuses it (0000, 0500: restored so) gets owner rwx first. Raises OSError."""
    if not _unlinked(parent, name):
        _remove_dir(parent, name, os.geteuid())


def _unlinked(parent: int, name: str) -> bool:
    """Unlink `name` in `parent`; False (nothing done) if it is a directory."""
    try:
        os.unlink(name, dir_fd=parent)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
        return False


def _remove_dir(parent: int, name: str, euid: int) -> None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        _open_up(parent, name, euid)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        _make_writable(fd, euid)
        for child in os.listdir(fd):
            if not _unlinked(fd, child):
                _remove_dir(fd, child, euid)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _make_writable(fd: int, euid: int, need: int = 0o300) -> None:
    """Owner rwx on a directory of ours that lacks the owner permissions `need` (write and search on a
    0555 one; read and search, 0o500, on a 0600 one)."""
    st = os.fstat(fd)
    if euid != 0 and st.st_uid == euid and st.st_mode & need != need:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)


def _open_up(parent: int, name: str, euid: int) -> None:
    """A directory of ours that we may not even open (0000, say): give the owner rwx."""
    open_up(parent, name, euid, 0o700, stat.S_IFDIR)


def open_up(parent: int, name: str, euid: int, bits: int, kind: int) -> None:
    """Give the owner `bits` (0o400: read) on `name` in `parent`, an entry of ours of type `kind`
    (stat.S_IFDIR, stat.S_IFREG) whose mode denies us what we need (a 0000 directory, a 0200 file); one
    of another type is left as it is. An O_PATH descriptor needs no permission, and chmod through
    /proc/self/fd/N changes that very inode (never a symlink: O_NOFOLLOW opens the link itself, whose
    type is not `kind`). Raises PermissionError for root (nothing is denied to it but by a mount or an
    attribute, which a chmod would not lift) and for an entry of another user: never ours to change."""
    if euid == 0:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if kind == stat.S_IFDIR else 0)
    fd = os.open(name, flags, dir_fd=parent)
    try:
        st = os.fstat(fd)
        if st.st_uid != euid:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        if stat.S_IFMT(st.st_mode) == kind and st.st_mode & bits != bits:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | bits)
    finally:
        os.close(fd)
