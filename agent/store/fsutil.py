"""Durable file writes: temp name, fsync, rename, fsync of the directory; everything private (0600/0700).

A crash at any instant leaves either the old file or the complete new one, never a torn file.
"""

from __future__ import annotations

import os
import secrets
from typing import Iterable

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: str) -> None:
    """Create `path` and missing parents 0700; new directories are fsynced into their parents."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))


def write_temp(directory: str, pieces: Iterable[bytes], prefix: str = ".tmp-", durable: bool = True) -> str:
    """Write `pieces` to a new private file in `directory` (fsynced if durable); the caller renames it
    into place. On any error the temp file is removed."""
    tmp = os.path.join(directory, f"{prefix}{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: str, data: bytes, tmp_dir: str | None = None, durable: bool = True) -> None:
    """Write `data` to `path` so that readers and crashes see the old or the new content, nothing between.

    durable=False skips the fsyncs, for state that is only an optimisation (caches, last-run records):
    after a power loss such a file may be old or empty, and its readers treat both as "start afresh".
    """
    directory = os.path.dirname(path)
    tmp = write_temp(tmp_dir or directory, [data], durable=durable)
    os.rename(tmp, path)
    if not durable:
        return
    fsync_dir(directory)
    if tmp_dir and tmp_dir != directory:
        fsync_dir(tmp_dir)
