"""Proving a tree snapshot (`fs`, `riak`): restore it into an empty directory with the restorer, then
check every entry of the manifest against what is on disk -- type, size, mode, link target, and each
file's content hashed as the repository names its blobs (SHA-256 of each chunk, read in the chunks'
raw lengths from the index) -- and that the restored tree holds as many files as the manifest.
"""

from __future__ import annotations

import os
import stat
from typing import List, Optional

from agent.drill.proof import Proof
from agent.restorer import restore_snapshot, safe_parts
from agent.store import Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree
from agent.text import plural

_TYPES = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_BLOCK = 1 << 20


def prove_tree(repo: Repository, snapshot: Snapshot, directory: str) -> Proof:
    """Restore `snapshot` into the empty `directory` and check it (see the module). Every difference is
    an error naming the path; a blob the restore could not read is named by the restorer's error.
    Raises DamagedBlobError if the manifest itself cannot be read."""
    restored = restore_snapshot(repo, snapshot, directory)
    errors: List[str] = list(restored.errors)
    named = {error.split(": ", 1)[0] for error in restored.errors}
    expected_files = 0
    for entry in read_tree(repo, snapshot.tree):
        if entry.type == "file":
            expected_files += 1
        parts = safe_parts(entry.path)
        if parts is None or entry.path in named:
            continue  # the restorer already named it (unsafe, or its content could not be read)
        problem = _check(repo, os.path.join(directory, *parts) if parts else directory, entry)
        if problem:
            errors.append(f"{entry.path}: {problem}")
    found = _count_files(directory)
    if found != expected_files:
        errors.append(f"the restored tree holds {plural(found, 'file')}, the manifest {expected_files}")
    return Proof(errors=tuple(errors), warnings=tuple(restored.warnings), files=expected_files,
                 bytes=restored.bytes)


def _check(repo: Repository, path: str, entry: Entry) -> Optional[str]:
    """What is wrong with `path` as a restore of `entry`, None if nothing."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"not restored ({exc.strerror})"
    if not _TYPES[entry.type](st.st_mode):
        return f"restored as something other than a {entry.type}"
    if entry.type != "symlink" and stat.S_IMODE(st.st_mode) != entry.mode:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, the manifest says {entry.mode:04o}"
    if entry.type == "symlink":
        target = os.readlink(path)
        return None if target == entry.target else f"links to {target!r}, the manifest says {entry.target!r}"
    if entry.type == "file":
        if st.st_size != entry.size:
            return f"{st.st_size} bytes, the manifest says {entry.size}"
        return content_problem(repo, path, entry)
    return None


def content_problem(repo: Repository, path: str, entry: Entry) -> Optional[str]:
    """Whether the file holds exactly the entry's chunks, each hashed as the repository names blobs."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    with open(fd, "rb", buffering=_BLOCK) as handle:
        for number, chunk in enumerate(entry.chunks):
            location = repo.index.get(chunk)
            if location is None:
                return f"chunk {number} ({chunk.hex()[:12]}) is not in the index"
            data = handle.read(location.raw_length)
            if len(data) != location.raw_length or repo.hash_blob(data) != chunk:
                return f"content differs from the manifest at chunk {number} ({chunk.hex()[:12]})"
    return None


def _count_files(directory: str) -> int:
    count = 0
    for _root, _dirs, files in os.walk(directory):
        count += sum(1 for name in files if stat.S_ISREG(os.lstat(os.path.join(_root, name)).st_mode))
    return count
