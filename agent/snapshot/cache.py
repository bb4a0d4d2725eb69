"""The files cache: what each file looked like (size, mtime, ctime, inode, mode, owner) when its content
was stored.

An unchanged stat means the file is not read again (a change of content, mode, owner, link count or
extended attributes changes the ctime). The cache belongs to one job's last snapshot: it is
trusted only while that snapshot still exists in the same repository (prune never deletes the blobs of a
live snapshot), so it can never point at data that is gone.

Layout: flat byte strings (all paths joined, one fixed-size record per file, all chunk ids joined) so that
loading the cache of a 100k-file tree is a few C-level splits, not 100k object constructions; marshal,
unlike pickle, cannot run code.
"""

from __future__ import annotations

import marshal
import os
import struct
from array import array
from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, List, Optional, Set, Tuple

from agent.durable import atomic_write, make_private_dirs
from agent.store.manifest import Xattrs

CACHE_VERSION = 6
STAT_KEY = struct.Struct("<qqqQ")  # size, mtime_ns, ctime_ns, inode
_OWNER = struct.Struct("<III")
# per file: stat key (32 bytes; zeros when not to be trusted), seeded xxh3-128 of the content (16), the
# file's share of the snapshot fingerprint (16), st_mode, st_uid, st_gid (12), the number of its set of
# extended attributes in `xattr_sets` (4; 0: none). With the owner and xattrs here, a file whose stat
# matches needs nothing else from the walk: a change of mode, owner or xattrs changes the ctime.
RECORD = 80
UNTRUSTED = b"\0" * 32
# what `totals` needs of a record: size (0 if untrusted), fingerprint piece as two little-endian halves
_TOTALS = struct.Struct("<q40xQQ16x")
_XSET = struct.Struct("<I")
_V4_RECORD = 64  # version 4 had no owner: its records are upgraded in place, see `load`
_V5_RECORD = 76  # version 5 had no xattrs: likewise


def stat_key(st: os.stat_result) -> bytes:
    return STAT_KEY.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def owner_of(mode: int, uid: int, gid: int) -> bytes:
    return _OWNER.pack(mode, uid, gid)


@dataclass
class FilesCache:
    path: str
    repo_id: str = ""
    snapshot: str = ""
    fingerprint: str = ""
    rules: str = ""
    # Seeds the xxh3 content and fingerprint hashes: a user who can write under /services cannot aim a
    # crafted collision at a hash whose seed lives in a 0600 file of the agent's.
    seed: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "little"))
    index: Dict[str, int] = field(default_factory=dict)
    records: bytes = b""
    chunk_ends: array = field(default_factory=lambda: array("Q"))
    chunks_blob: bytes = b""
    others: Set[str] = field(default_factory=set)  # directories and symlinks included last time
    # distinct sets of extended attributes (most files share one: none, or one SELinux label)
    xattr_sets: List[Xattrs] = field(default_factory=lambda: [()])
    sums: Optional[Tuple[int, int]] = None  # see `totals`; saved with the cache

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, rel: str) -> Optional[int]:
        return self.index.get(rel)

    def key(self, number: int) -> bytes:
        return self.records[number * RECORD: number * RECORD + 32]

    def digest(self, number: int) -> bytes:
        return self.records[number * RECORD + 32: number * RECORD + 48]

    def piece(self, number: int) -> bytes:
        return self.records[number * RECORD + 48: number * RECORD + 64]

    def owner(self, number: int) -> bytes:
        return self.records[number * RECORD + 64: number * RECORD + 76]

    def xattrs(self, number: int) -> Xattrs:
        return self.xattr_sets[_XSET.unpack_from(self.records, number * RECORD + 76)[0]]

    def _xset(self, xattrs: Xattrs, numbers: Dict[Xattrs, int]) -> bytes:
        number = numbers.get(xattrs)
        if number is None:
            number = numbers[xattrs] = len(self.xattr_sets)
            self.xattr_sets.append(xattrs)
        return _XSET.pack(number)

    def totals(self, numbers: Collection[int]) -> Tuple[int, int]:
        """(total size, sum of the fingerprint pieces) of the distinct files `numbers`. The sums over the
        whole cache are kept with it, so a run that kept every file pays nothing and one that kept
        nearly all pays for the others only."""
        if self.sums is None:
            self.sums = self._sum(range(len(self)))
        if len(numbers) == len(self):
            return self.sums
        if len(numbers) < len(self) // 2:
            return self._sum(numbers)
        size, piece = self._sum(set(range(len(self))).difference(numbers))
        return self.sums[0] - size, self.sums[1] - piece

    def _sum(self, numbers: Iterable[int]) -> Tuple[int, int]:
        size = piece = 0
        unpack, records = _TOTALS.unpack_from, self.records
        for number in numbers:
            file_size, low, high = unpack(records, number * RECORD)
            size += file_size
            piece += low + (high << 64)
        return size, piece

    def stat_of(self, number: int) -> Tuple[int, int, int, int, int]:
        """(size, mtime_ns, mode, uid, gid) as the file was when cached."""
        size, mtime_ns, _, _ = STAT_KEY.unpack_from(self.records, number * RECORD)
        mode, uid, gid = _OWNER.unpack_from(self.records, number * RECORD + 64)
        return size, mtime_ns, mode, uid, gid

    def references(self, blob_ids: Iterable[bytes]) -> bool:
        """Whether some file's chunks include one of `blob_ids` (blobs found damaged: such a file must be
        read again, however unchanged its stat, so that a good copy is stored)."""
        blob = self.chunks_blob
        for blob_id in blob_ids:
            at = blob.find(blob_id)
            while at != -1 and at % 32:  # matched across two ids, not an id
                at = blob.find(blob_id, at + 1)
            if at != -1:
                return True
        return False

    def chunks(self, number: int) -> bytes:
        start = self.chunk_ends[number - 1] if number else 0
        return self.chunks_blob[start: self.chunk_ends[number]]

    @classmethod
    def load(cls, path: str) -> FilesCache:
        try:
            with open(path, "rb") as handle:
                header, paths, records, ends, chunks, others, *rest = marshal.load(handle)
            xattr_sets = list(rest[0]) if rest else [()]
            if header.get("version") == 4 and len(records) % _V4_RECORD == 0:
                records = _upgrade(records, _V4_RECORD)
            elif header.get("version") == 5 and len(records) % _V5_RECORD == 0:
                records = _upgrade(records, _V5_RECORD)
            elif header.get("version") != CACHE_VERSION:
                return cls(path)
            names = paths.decode("utf-8", "surrogateescape").split("\0") if paths else []
            chunk_ends = array("Q")
            chunk_ends.frombytes(ends)
            other_names = set(others.decode("utf-8", "surrogateescape").split("\0")) if others else set()
            if len(records) != RECORD * len(names) or len(chunk_ends) != len(names):
                return cls(path)
            sums = header.get("sums") if header["version"] == CACHE_VERSION else None
            return cls(path, header["repo"], header["snapshot"], header["fingerprint"], header["rules"],
                       header["seed"], dict(zip(names, range(len(names)))), records, chunk_ends, chunks,
                       other_names, xattr_sets, tuple(sums) if sums else None)
        except (OSError, ValueError, EOFError, TypeError, KeyError):
            return cls(path)  # a missing or damaged cache only costs a full read

    def replace(self, files: List[tuple], others: Set[str]) -> None:
        """Take a new content: `files` holds (rel, stat key, digest, chunk ids joined, piece, owner, xattrs)."""
        names, records, chunks = [], [], []
        chunk_ends = array("Q")
        end = 0
        self.xattr_sets = [()]
        numbers: Dict[Xattrs, int] = {(): 0}
        for rel, key, digest, joined, piece, owner, xattrs in files:
            names.append(rel)
            records.append(key + digest + piece + owner + self._xset(xattrs, numbers))
            chunks.append(joined)
            end += len(joined)
            chunk_ends.append(end)
        self.index = dict(zip(names, range(len(names))))
        self.records, self.chunks_blob, self.chunk_ends = b"".join(records), b"".join(chunks), chunk_ends
        self.others = others
        self.sums = None

    def patch(self, updates: Dict[int, tuple]) -> bool:
        """Rewrite some files in place: `updates` maps a file's number to (stat key, digest, chunk ids
        joined, piece, owner, xattrs). A run that changed a few files of a large tree then costs a few slices,
        not a rebuild. Returns False, changing nothing, if a file's number of chunks changed (the
        caller then uses `replace`)."""
        if any(len(update[2]) != len(self.chunks(number)) for number, update in updates.items()):
            return False
        before = self._sum(updates)
        records, chunks = bytearray(self.records), bytearray(self.chunks_blob)
        numbers = {xattrs: number for number, xattrs in enumerate(self.xattr_sets)}
        for number, (key, digest, joined, piece, owner, xattrs) in updates.items():
            records[number * RECORD: (number + 1) * RECORD] = key + digest + piece + owner + self._xset(xattrs, numbers)
            start = self.chunk_ends[number - 1] if number else 0
            chunks[start: self.chunk_ends[number]] = joined
        self.records, self.chunks_blob = bytes(records), bytes(chunks)
        if self.sums is not None:
            after = self._sum(updates)
            self.sums = (self.sums[0] - before[0] + after[0], self.sums[1] - before[1] + after[1])
        return True

    def save(self) -> None:
        make_private_dirs(os.path.dirname(self.path))
        header = {"version": CACHE_VERSION, "repo": self.repo_id, "snapshot": self.snapshot,
                  "fingerprint": self.fingerprint, "rules": self.rules, "seed": self.seed,
                  "sums": self.totals(range(len(self)))}
        names = sorted(self.index, key=self.index.__getitem__)
        data = marshal.dumps((header, "\0".join(names).encode("utf-8", "surrogateescape"), self.records,
                              self.chunk_ends.tobytes(), self.chunks_blob,
                              "\0".join(sorted(self.others)).encode("utf-8", "surrogateescape"),
                              tuple(self.xattr_sets)))
        atomic_write(self.path, data, durable=False)


def _upgrade(records: bytes, size: int) -> bytes:
    """A version 4 cache did not know owners, a version 5 one xattrs: its stat keys are dropped, so each
    file is read once more and, its content digest matching, keeps its chunks (nothing is chunked or
    stored again)."""
    return b"".join(UNTRUSTED + records[at + 32: at + 64] + b"\0" * 16 for at in range(0, len(records), size))


def cache_path(state_dir: str, job: str) -> str:
    return os.path.join(state_dir, "cache", f"{job}.files")
