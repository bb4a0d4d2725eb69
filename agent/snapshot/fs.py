"""Back up a directory tree: walk it, skip excluded paths, store new content, write the manifest last.

Unchanged files (same size, mtime, ctime, inode as in the files cache) are not read. A file whose stat
changed but whose content did not (same xxh3-128) reuses its chunks. If nothing that matters changed
(paths, types, modes, owners, contents, link targets), no snapshot is written at all.

The walk is the hot path of a no-change backup of 100k files, so the per-file work for an unchanged
file is kept to a stat, a dict lookup and a hash update; manifest entries are built only when a new
snapshot is actually written.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import xxhash

from agent.snapshot.cache import CachedFile, FilesCache, stat_key
from agent.store import BlobWriter, Repository, Snapshot
from agent.store.tree import Entry, write_tree
from agent.watch.ignore import IgnoreRules

# Files up to this size are read whole: one read, one xxhash, no streaming machinery.
_WHOLE_FILE = 2 * 1024 * 1024
_READ_BLOCK = 1024 * 1024
_ATTEMPTS = 3
# A file modified this close to the scan may still be changing within the same timestamp tick ("racy
# git"): its stat is not trusted next time, so the content is checked again.
_RACY_NS = 2_000_000_000
_ID = 32


class ChangedWhileReading(Exception):
    pass


@dataclass(frozen=True)
class TreeResult:
    """What a tree backup did; the runner turns it into a RunReport."""

    snapshot: Optional[Snapshot]
    changed: bool
    files: int
    bytes: int
    new_bytes: int
    errors: Tuple[str, ...]
    warnings: Tuple[str, ...]


def _piece(rel: str, kind: str, st: os.stat_result, extra: bytes) -> bytes:
    """An entry's share of the snapshot fingerprint: everything but timestamps, so a file rewritten with
    the same content (configuration management) does not make a new snapshot."""
    size = st.st_size if kind == "file" else 0
    head = f"{rel}\0{kind}\0{stat.S_IMODE(st.st_mode)}\0{st.st_uid}\0{st.st_gid}\0{size}\0"
    return xxhash.xxh3_64_digest(head.encode("utf-8", "surrogateescape") + extra)


class TreeBackup:
    def __init__(self, repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache) -> None:
        self.repo = repo
        self.root = root
        self.rules = rules
        self.old = cache
        self.trusted = cache.repo_id == repo.id and bool(cache.snapshot) and repo.has_snapshot(cache.snapshot)
        self.old_files = cache.files if self.trusted else {}
        self.known_included = cache.others | cache.files.keys() if self.trusted and cache.rules == rules.digest \
            else set()
        self.new_files: dict = {}
        self.new_others: set = set()
        # (kind, rel, stat, chunks joined or link target) in walk order; Entries are made only on commit
        self.records: List[tuple] = []
        self.errors: List[str] = []
        self.warnings: List[str] = []
        self.hasher = xxhash.xxh3_128()
        self.files = 0
        self.bytes = 0
        self.writer: Optional[BlobWriter] = None
        self.racy_before_ns = time.time_ns() - _RACY_NS

    # --- walking ------------------------------------------------------------------------------------

    def walk(self) -> None:
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self.root} is not a directory")
        self._other(".", "dir", st, b"")
        known = self.known_included
        excludes = self.rules.excludes
        old_files = self.old_files
        stack: List[Tuple[str, str]] = [(self.root, "")]
        while stack:
            directory, rel_dir = stack.pop()
            prefix = rel_dir + "/" if rel_dir else ""
            try:
                with os.scandir(directory) as listing:
                    children = sorted(listing, key=lambda item: item.name)
            except OSError as exc:
                self.errors.append(f"{rel_dir or '.'}: cannot list directory: {exc.strerror}")
                continue
            subdirs = []
            for child in children:
                rel = prefix + child.name
                try:
                    st = child.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished between listing and stat: simply not part of this snapshot
                except OSError as exc:
                    self.errors.append(f"{rel}: cannot stat: {exc.strerror}")
                    continue
                mode = st.st_mode
                if stat.S_ISREG(mode):
                    if rel in known or not excludes(rel, False):
                        cached = old_files.get(rel)
                        if cached is not None and cached[0] == stat_key(st):
                            self._keep_file(rel, st, cached)
                        else:
                            self._file(child.path, rel, st, cached)
                elif stat.S_ISDIR(mode):
                    if rel in known or not excludes(rel, True):
                        self._other(rel, "dir", st, b"")
                        subdirs.append((child.path, rel))
                elif stat.S_ISLNK(mode):
                    if rel in known or not excludes(rel, False):
                        self._symlink(child.path, rel, st)
                elif not excludes(rel, False):
                    self.warnings.append(f"{rel}: skipped special file ({_kind(mode)})")
            stack.extend(reversed(subdirs))

    def _other(self, rel: str, kind: str, st: os.stat_result, target: bytes) -> None:
        self.records.append((kind, rel, st, target))
        self.hasher.update(_piece(rel, kind, st, target))
        if rel != ".":
            self.new_others.add(rel)

    def _symlink(self, path: str, rel: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            self.errors.append(f"{rel}: cannot read link: {exc.strerror}")
            return
        self._other(rel, "symlink", st, target.encode("utf-8", "surrogateescape"))

    # --- files --------------------------------------------------------------------------------------

    def _keep_file(self, rel: str, st: os.stat_result, cached: CachedFile) -> None:
        self.records.append(("file", rel, st, cached[2]))
        self.hasher.update(cached[3])
        self.new_files[rel] = cached
        self.files += 1
        self.bytes += st.st_size

    def _file(self, path: str, rel: str, st: os.stat_result, cached: Optional[CachedFile]) -> None:
        for _ in range(_ATTEMPTS):
            try:
                st, digest, chunks = self._read(path, cached)
                break
            except ChangedWhileReading:
                continue
            except FileNotFoundError:
                return  # deleted while we were about to read it: not part of this snapshot
            except OSError as exc:
                self.errors.append(f"{rel}: cannot read: {exc.strerror or exc}")
                return
        else:
            self.errors.append(f"{rel}: changed while being read ({_ATTEMPTS} attempts); not stored")
            return
        trusted = max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_before_ns
        self._keep_file(rel, st, (stat_key(st) if trusted else b"", digest, chunks, _piece(rel, "file", st, chunks)))

    def _read(self, path: str, cached: Optional[CachedFile]) -> Tuple[os.stat_result, bytes, bytes]:
        fd = _open_noatime(path)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ChangedWhileReading()  # replaced by something else between stat and open
            if before.st_size <= _WHOLE_FILE:
                data = _read_all(fd, before.st_size)
                digest = xxhash.xxh3_128_digest(data)
                if cached is not None and cached[1] == digest:
                    chunks = cached[2]
                else:
                    chunks = b"".join(self._save(piece) for piece in self.repo.chunker.split(data))
                size = len(data)
            else:
                hasher = xxhash.xxh3_128()
                ids = []
                size = 0
                with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
                    for piece in self.repo.chunker.split_stream(stream):
                        hasher.update(piece)
                        size += len(piece)
                        ids.append(self._save(piece))
                digest, chunks = hasher.digest(), b"".join(ids)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or size != after.st_size:
            raise ChangedWhileReading()
        return after, digest, chunks

    def _save(self, piece: memoryview | bytes) -> bytes:
        if self.writer is None:
            self.writer = self.repo.writer()
        blob_id, _ = self.writer.save(piece)
        return blob_id

    # --- committing ---------------------------------------------------------------------------------

    def entries(self) -> List[Entry]:
        result = []
        for kind, rel, st, extra in self.records:
            base = (rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
            if kind == "file":
                chunks = tuple(extra[i:i + _ID] for i in range(0, len(extra), _ID))
                result.append(Entry(*base, st.st_size, chunks))
            elif kind == "symlink":
                result.append(Entry(*base, target=extra.decode("utf-8", "surrogateescape")))
            else:
                result.append(Entry(*base))
        return result

    def commit(self, job: str, job_type: str, host: str, trigger: str, now: str, cache: FilesCache) -> TreeResult:
        fingerprint = self.hasher.hexdigest()
        partial = bool(self.errors)
        unchanged = self.trusted and fingerprint == self.old.fingerprint and not partial
        snapshot: Optional[Snapshot]
        if unchanged:
            snapshot = self.repo.load_snapshot(self.old.snapshot)
        else:
            if self.writer is None:
                self.writer = self.repo.writer()
            tree = write_tree(self.writer, self.entries())
            self.writer.flush()
            snapshot = self.repo.save_snapshot(Snapshot(
                job=job, type=job_type, host=host, time=now, trigger=trigger, tree=tree, files=self.files,
                bytes=self.bytes, fingerprint=fingerprint, source=(self.root,), partial=partial))
        new_bytes = self.writer.new_bytes if self.writer else 0
        # The cache is saved only after the manifest is durable: it must never name blobs that no
        # snapshot holds. Rewriting an identical cache is skipped: that is most runs.
        if not (unchanged and self.new_files == self.old_files and self.new_others == cache.others
                and cache.rules == self.rules.digest):
            cache.repo_id, cache.snapshot, cache.fingerprint = self.repo.id, snapshot.id, fingerprint
            cache.rules, cache.files, cache.others = self.rules.digest, self.new_files, self.new_others
            cache.save()
        return TreeResult(snapshot, not unchanged, self.files, self.bytes, new_bytes,
                          tuple(self.errors), tuple(self.warnings))


def _open_noatime(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return os.open(path, flags)  # O_NOATIME needs ownership; fall back
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ChangedWhileReading() from None  # became a symlink after the stat
        raise


def _read_all(fd: int, expected: int) -> bytes:
    parts = []
    total = 0
    while True:
        block = os.read(fd, max(expected - total, 0) + 1 if total <= expected else _READ_BLOCK)
        if not block:
            break
        parts.append(block)
        total += len(block)
        if total > _WHOLE_FILE:
            raise ChangedWhileReading()  # grew past the whole-file limit while reading
    return b"".join(parts)


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "unknown type"


def backup_tree(repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache, *, job: str,
                job_type: str, host: str, trigger: str, now: str) -> TreeResult:
    run = TreeBackup(repo, root, rules, cache)
    run.walk()
    return run.commit(job, job_type, host, trigger, now, cache)
