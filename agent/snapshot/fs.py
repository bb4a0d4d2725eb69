"""Back up a directory tree: walk it (or only what changed), skip excluded paths, store new content,
write the manifest last.

Unchanged files (same size, mtime, ctime, inode as in the files cache) are not read. A file whose stat
changed but whose content did not (same seeded xxh3-128) reuses its chunks. If nothing that matters
changed (paths, types, modes, owners, contents, link targets), no snapshot is written at all.

A change-triggered run starts from the previous snapshot's entries and re-examines only the paths the
watcher named, so a one-file change in a 100k-file tree neither walks nor stats the whole tree.

The walk is the hot path of a no-change backup, so the per-file work for an unchanged file is a stat, a
dict lookup, a comparison with the cached stat and its number in the cache stored; everything else about
it (owner, chunks, its share of the fingerprint) is read from the cache only when needed.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass
from itertools import chain
from typing import Dict, List, NamedTuple, Optional, Tuple

import xxhash

from agent.snapshot.cache import RECORD, STAT_KEY, UNTRUSTED, FilesCache, owner_of, stat_key
from agent.snapshot.changes import ChangeSet
from agent.snapshot.ignore import IgnoreRules
from agent.store import BlobWriter, Repository, Snapshot
from agent.store.diff import ManifestDiff, diff_manifests
from agent.store.manifest import encode_line, manifest_order
from agent.store.tree import read_encoded, read_tree, write_encoded

# Files up to this size are read whole: one read, one xxhash, no streaming machinery.
_WHOLE_FILE = 2 * 1024 * 1024
_READ_BLOCK = 1024 * 1024
_ATTEMPTS = 3
# A file modified this close to the scan may still be changing within the same timestamp tick ("racy
# git"): its stat is not trusted next time, so the content is checked again.
_RACY_NS = 2_000_000_000
_MASK128 = (1 << 128) - 1


class ChangedWhileReading(Exception):
    pass


class Aborted(Exception):
    """The agent is stopping: the run ends without a snapshot (what was written is unreferenced)."""


class Meta(NamedTuple):
    """The part of a stat result a manifest keeps; previous snapshots' entries come back as this."""

    st_mode: int
    st_uid: int
    st_gid: int
    st_mtime_ns: int
    st_size: int


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
    incremental: bool = False
    changes: Optional[ManifestDiff] = None  # change-triggered runs: since the job's previous snapshot


class TreeBackup:
    def __init__(self, repo: Repository, root: str, rules: IgnoreRules, cache: FilesCache,
                 stop: Optional[threading.Event] = None) -> None:
        self.repo = repo
        self.root = root
        self.rules = rules
        self.old = cache
        self.seed = cache.seed
        self.stop = stop or threading.Event()
        self.trusted = cache.repo_id == repo.id and bool(cache.snapshot) and repo.has_snapshot(cache.snapshot)
        damaged = repo.unhealed() if self.trusted else frozenset()
        if damaged and (cache.references(damaged) or repo.tree_unhealed(cache.snapshot, damaged)):
            self.trusted = False  # read everything once: the damaged blobs get stored again
        # what the cache knows is only used while it describes a snapshot that still exists
        self.cached = cache if self.trusted else FilesCache(cache.path, seed=cache.seed)
        self.rules_unchanged = self.trusted and cache.rules == rules.digest
        # rel -> (kind, meta, chunk ids joined or link target, fingerprint piece, stat key, content digest)
        self.records: Dict[str, tuple] = {}
        # rel -> number in the cache, for files whose stat matches the cache: everything about them (owner,
        # mode, chunks, fingerprint piece) is read from the cache, and only if a snapshot or a new cache is
        # written. An int per file rather than a tuple: building a tuple per unchanged file cost the walk
        # of a 100k-file tree about a third of its time.
        self.kept: Dict[str, int] = {}
        self.dirty = False  # whether the files cache must be rewritten
        self.errors: List[str] = []
        self.warnings: List[str] = []
        self.writer: Optional[BlobWriter] = None
        self.racy_before_ns = time.time_ns() - _RACY_NS
        self.incremental = False

    def _piece(self, rel: str, kind: str, meta, extra: bytes) -> bytes:
        """An entry's share of the snapshot fingerprint: everything but timestamps, so a file rewritten
        with the same content (configuration management) does not make a new snapshot."""
        size = meta.st_size if kind == "file" else 0
        head = f"{rel}\0{kind}\0{stat.S_IMODE(meta.st_mode)}\0{meta.st_uid}\0{meta.st_gid}\0{size}\0"
        return xxhash.xxh3_128_digest(head.encode("utf-8", "surrogateescape") + extra, self.seed)

    # --- full walk ----------------------------------------------------------------------------------

    def walk(self) -> None:
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self.root} is not a directory")
        self._other(".", "dir", st, b"")
        self._walk_below(self.root, "")

    def _walk_below(self, top: str, top_rel: str) -> None:
        cached = self.cached
        index, others = cached.index, cached.others
        if not self.rules_unchanged:
            index, others = {}, set()  # "included last time" says nothing under other rules
        excludes = self.rules.excludes
        kept, cache_records, lookup, pack_key = self.kept, cached.records, cached.lookup, STAT_KEY.pack
        stack: List[Tuple[str, str]] = [(top, top_rel)]
        while stack:
            if self.stop.is_set():
                raise Aborted()
            directory, rel_dir = stack.pop()
            prefix = rel_dir + "/" if rel_dir else ""
            base = directory if directory.endswith("/") else directory + "/"
            # Listed through a descriptor, each child's lstat resolves one name, not the whole path (a
            # quarter less system time on a deep tree); O_NOFOLLOW: a directory swapped for a symlink
            # since its stat is not followed.
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                self.errors.append(f"{rel_dir or '.'}: cannot list directory: {exc.strerror}")
                continue
            try:
                try:
                    with os.scandir(fd) as listing:
                        children = list(listing)
                except OSError as exc:
                    self.errors.append(f"{rel_dir or '.'}: cannot list directory: {exc.strerror}")
                    continue
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
                        number = index.get(rel)
                        if number is not None or not excludes(rel, False):
                            if number is None:
                                number = lookup(rel)
                            # cached.key(number) == stat_key(st), inline: this line runs for every file
                            at = (number or 0) * RECORD
                            if number is not None and cache_records[at:at + 32] == \
                                    pack_key(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
                                kept[rel] = number
                            else:
                                self._file(base + child.name, rel, st, number)
                    elif stat.S_ISDIR(mode):
                        if rel in others or not excludes(rel, True):
                            self._other(rel, "dir", st, b"")
                            stack.append((base + child.name, rel))
                    elif stat.S_ISLNK(mode):
                        if rel in others or not excludes(rel, False):
                            self._symlink(base + child.name, rel, st)
                    elif not excludes(rel, False):
                        self.warnings.append(f"{rel}: skipped special file ({_kind(mode)})")
            finally:
                os.close(fd)

    # --- incremental --------------------------------------------------------------------------------

    def apply_changes(self, changes: ChangeSet) -> None:
        """Start from the previous snapshot and re-examine only what `changes` names."""
        self.incremental = True
        previous = self.repo.load_snapshot(self.old.snapshot)
        cached = self.cached
        for entry in read_tree(self.repo, previous.tree):
            number = cached.lookup(entry.path) if entry.type == "file" else None
            if number is not None:
                key = cached.key(number)
                if key != UNTRUSTED:
                    # the cache is at least as recent as the snapshot (which may predate a touch that
                    # changed nothing)
                    self.kept[entry.path] = number
                    continue
                meta = Meta(entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size)
                self.records[entry.path] = ("file", meta, cached.chunks(number), cached.piece(number), key,
                                            cached.digest(number))
                continue
            extra = b"".join(entry.chunks) if entry.type == "file" else \
                entry.target.encode("utf-8", "surrogateescape")
            meta = Meta(entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size)
            self.records[entry.path] = (entry.type, meta, extra, self._piece(entry.path, entry.type, meta, extra),
                                        UNTRUSTED, b"")
        for path in sorted(changes.paths | changes.trees):
            if self.stop.is_set():
                raise Aborted()
            rel = self._relative(path)
            if rel is None:
                continue
            self._reexamine(path, rel, whole=path in changes.trees)

    def _relative(self, path: str) -> Optional[str]:
        if path == self.root:
            return "."
        if not path.startswith(self.root.rstrip("/") + "/"):
            return None
        rel = path[len(self.root.rstrip("/")) + 1:]
        if self.rules.excludes_any_parent(rel):
            return None
        return rel

    def _forget(self, rel: str) -> None:
        prefix = rel + "/"
        for table in (self.records, self.kept):
            for key in [key for key in table if key == rel or key.startswith(prefix)]:
                del table[key]
                self.dirty = True

    def _reexamine(self, path: str, rel: str, whole: bool) -> None:
        # A path whose parent directory is not in the snapshot came with a directory the events did not
        # describe (created and filled between two reads of the queue): take the whole missing subtree.
        parts = rel.split("/") if rel != "." else []
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            if ancestor not in self.records:  # directories are always records
                path, rel, whole = os.path.join(self.root, ancestor), ancestor, True
                break
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._forget(rel)
            return
        except OSError as exc:
            self.errors.append(f"{rel}: cannot stat: {exc.strerror}")
            return
        previous = self.records.get(rel)
        if stat.S_ISDIR(st.st_mode):
            if rel != "." and self.rules.excludes(rel, True):
                self._forget(rel)
                return
            if whole or previous is None or previous[0] != "dir":
                self._forget(rel)
                self._other(rel, "dir", st, b"")
                self._walk_below(path, "" if rel == "." else rel)
            else:
                self._other(rel, "dir", st, b"")
            return
        self._forget(rel)
        if self.rules.excludes(rel, False):
            return
        if stat.S_ISREG(st.st_mode):
            number = self.cached.lookup(rel)
            if number is not None and self.cached.key(number) == stat_key(st):
                self.kept[rel] = number
            else:
                self._file(path, rel, st, number)
        elif stat.S_ISLNK(st.st_mode):
            self._symlink(path, rel, st)
        else:
            self.warnings.append(f"{rel}: skipped special file ({_kind(st.st_mode)})")

    # --- entries ------------------------------------------------------------------------------------

    def _other(self, rel: str, kind: str, st, target: bytes) -> None:
        meta = Meta(st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)
        self.records[rel] = (kind, meta, target, self._piece(rel, kind, meta, target), b"", b"")

    def _symlink(self, path: str, rel: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            self.errors.append(f"{rel}: cannot read link: {exc.strerror}")
            return
        self._other(rel, "symlink", st, target.encode("utf-8", "surrogateescape"))

    def _file(self, path: str, rel: str, st: os.stat_result, number: Optional[int]) -> None:
        self.dirty = True
        for _ in range(_ATTEMPTS):
            try:
                st, digest, chunks = self._read(path, number)
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
        key = stat_key(st) if trusted else UNTRUSTED
        meta = Meta(st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)  # a tenth of a stat_result
        self.records[rel] = ("file", meta, chunks, self._piece(rel, "file", meta, chunks), key, digest)

    def _read(self, path: str, number: Optional[int]) -> Tuple[os.stat_result, bytes, bytes]:
        fd = _open_noatime(path)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ChangedWhileReading()  # replaced by something else between stat and open
            if before.st_size <= _WHOLE_FILE:
                data = _read_all(fd, before.st_size)
                digest = xxhash.xxh3_128_digest(data, self.seed)
                if number is not None and self.cached.digest(number) == digest:
                    chunks = self.cached.chunks(number)
                else:
                    chunks = b"".join(self._save(piece) for piece in self.repo.chunker.split(data))
                size = len(data)
            else:
                hasher = xxhash.xxh3_128(seed=self.seed)
                ids = []
                size = 0
                with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
                    for piece in self.repo.chunker.split_stream(stream):
                        if self.stop.is_set():
                            raise Aborted()
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

    def fingerprint(self, kept_pieces: int) -> str:
        """Order-independent, so an incremental run and a full walk of the same tree agree."""
        total = kept_pieces
        for record in self.records.values():
            total += int.from_bytes(record[3], "little")
        return f"{total & _MASK128:032x}-{len(self.records) + len(self.kept)}"

    def manifest(self) -> bytes:
        """The manifest's lines in path order."""
        records, kept, cached_chunks, cached_stat = self.records, self.kept, self.cached.chunks, self.cached.stat_of
        lines = []
        for rel in sorted(chain(records, kept), key=manifest_order):
            number = kept.get(rel)
            if number is not None:
                size, mtime_ns, mode, uid, gid = cached_stat(number)
                lines.append(encode_line(rel, "file", mode & 0o7777, uid, gid, mtime_ns, size, cached_chunks(number)))
                continue
            kind, meta, extra = records[rel][:3]
            if kind == "file":
                lines.append(encode_line(rel, kind, meta.st_mode & 0o7777, meta.st_uid, meta.st_gid,
                                         meta.st_mtime_ns, meta.st_size, extra))
            else:
                target = extra.decode("utf-8", "surrogateescape") if kind == "symlink" else ""
                lines.append(encode_line(rel, kind, meta.st_mode & 0o7777, meta.st_uid, meta.st_gid,
                                         meta.st_mtime_ns, target=target))
        return "".join(lines).encode("ascii")

    def commit(self, job: str, job_type: str, host: str, trigger: str, now: str, cache: FilesCache) -> TreeResult:
        if self.stop.is_set():
            raise Aborted()
        cached = self.cached
        kept_bytes, kept_pieces = cached.totals(self.kept.values())
        fingerprint = self.fingerprint(kept_pieces)
        files = [record for record in self.records.values() if record[0] == "file"]
        file_count = len(files) + len(self.kept)
        total_bytes = sum(record[1].st_size for record in files) + kept_bytes
        partial = bool(self.errors)
        unchanged = self.trusted and fingerprint == self.old.fingerprint and not partial
        snapshot: Optional[Snapshot]
        changes: Optional[ManifestDiff] = None
        if unchanged:
            snapshot = self.repo.load_snapshot(self.old.snapshot)
        else:
            if self.writer is None:
                self.writer = self.repo.writer()
            manifest = self.manifest()
            tree = write_encoded(self.writer, manifest)
            self.writer.flush()
            changes = self.changes_since_previous(manifest) if trigger == "change" else None
            snapshot = self.repo.save_snapshot(Snapshot(
                job=job, type=job_type, host=host, time=now, trigger=trigger, tree=tree, files=file_count,
                bytes=total_bytes, fingerprint=fingerprint, source=(self.root,), partial=partial,
                changes=changes.counts() if changes is not None else None))
        new_bytes = self.writer.new_bytes if self.writer else 0
        others = {rel for rel, record in self.records.items() if record[0] != "file" and rel != "."}
        # The cache is saved only after the manifest is durable: it must never name blobs that no
        # snapshot holds. Rewriting an identical cache is skipped: that is most runs.
        if self.dirty or not unchanged or file_count != len(cached) or others != cached.others \
                or not self.rules_unchanged:
            cache.repo_id, cache.snapshot, cache.fingerprint = self.repo.id, snapshot.id, fingerprint
            cache.rules, cache.seed = self.rules.digest, self.seed
            examined = [(rel, (record[4], record[5], record[2], record[3], owner_of(record[1])))
                        for rel, record in self.records.items() if record[0] == "file"]
            numbers = [cached.lookup(rel) for rel, _ in examined]
            # the same files as in the cache (all kept or examined, none new): patch the examined ones
            if not (cached is cache and file_count == len(cached) and None not in numbers
                    and cache.patch({number: update for number, (_, update) in zip(numbers, examined)})):
                cache.replace([(rel, *update) for rel, update in examined] +
                              [(rel, cached.key(number), cached.digest(number), cached.chunks(number),
                                cached.piece(number), cached.owner(number)) for rel, number in self.kept.items()],
                              others)
            cache.others = others
            try:
                cache.save()
            except OSError as exc:  # the snapshot is committed: the report must still name it
                self.errors.append(f"cannot save the files cache {cache.path}: {exc.strerror}")
        return TreeResult(snapshot, not unchanged, file_count, total_bytes, new_bytes,
                          tuple(self.errors), tuple(self.warnings), self.incremental, changes)

    def changes_since_previous(self, manifest: bytes) -> Optional[ManifestDiff]:
        """The diff from the snapshot the files cache describes (the job's previous one) to `manifest`;
        None without one."""
        if not self.trusted:
            return None
        previous = self.repo.load_snapshot(self.old.snapshot)
        return diff_manifests(read_encoded(self.repo, previous.tree), manifest)


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
                job_type: str, host: str, trigger: str, now: str, changes: Optional[ChangeSet] = None,
                stop: Optional[threading.Event] = None) -> TreeResult:
    run = TreeBackup(repo, root, rules, cache, stop)
    if changes is not None and not changes.full and run.trusted:
        run.apply_changes(changes)
    else:
        run.walk()
    return run.commit(job, job_type, host, trigger, now, cache)
