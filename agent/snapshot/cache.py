"""The files cache: what each file looked like (size, mtime, ctime, inode) when its content was stored.

An unchanged stat means the file is not read again. The cache belongs to one job's last snapshot: it is
trusted only while that snapshot still exists in the same repository (prune never deletes the blobs of a
live snapshot), so it can never point at data that is gone.

Layout: flat byte strings (all paths joined, one fixed-size record per file, all chunk ids joined) so that
loading the cache of a 100k-file tree is a few C-level splits, not 100k object constructions; marshal,
unlike pickle, cannot run code.
"""

from __future__ import annotations

import marshal
import os
import secrets
import struct
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from agent.store.fsutil import atomic_write, make_private_dirs

CACHE_VERSION = 4
_STAT_KEY = struct.Struct("<qqqQ")
# per file: stat key (32 bytes; zeros when not to be trusted), seeded xxh3-128 of the content (16), the
# file's share of the snapshot fingerprint (16)
RECORD = 64
UNTRUSTED = b"\0" * 32


def stat_key(st: os.stat_result) -> bytes:
    return _STAT_KEY.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def stat_key_mtime(key: bytes) -> int:
    return _STAT_KEY.unpack(key)[1]


@dataclass
class FilesCache:
    path: str
    repo_id: str = ""
    snapshot: str = ""
    fingerprint: str = ""
    rules: str = ""
    # Seeds the xxh3 content and fingerprint hashes: a user who can write under /services cannot aim a
    # crafted collision at a hash whose seed lives in a 0600 file of the agent's.
    seed: int = field(default_factory=lambda: secrets.randbits(64))
    index: Dict[str, int] = field(default_factory=dict)
    records: bytes = b""
    chunk_ends: array = field(default_factory=lambda: array("Q"))
    chunks_blob: bytes = b""
    others: Set[str] = field(default_factory=set)  # directories and symlinks included last time

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

    def chunks(self, number: int) -> bytes:
        start = self.chunk_ends[number - 1] if number else 0
        return self.chunks_blob[start: self.chunk_ends[number]]

    @classmethod
    def load(cls, path: str) -> FilesCache:
        try:
            with open(path, "rb") as handle:
                header, paths, records, ends, chunks, others = marshal.load(handle)
            if header.get("version") != CACHE_VERSION:
                return cls(path)
            names = paths.decode("utf-8", "surrogateescape").split("\0") if paths else []
            chunk_ends = array("Q")
            chunk_ends.frombytes(ends)
            other_names = set(others.decode("utf-8", "surrogateescape").split("\0")) if others else set()
            if len(records) != RECORD * len(names) or len(chunk_ends) != len(names):
                return cls(path)
            return cls(path, header["repo"], header["snapshot"], header["fingerprint"], header["rules"],
                       header["seed"], dict(zip(names, range(len(names)))), records, chunk_ends, chunks,
                       other_names)
        except (OSError, ValueError, EOFError, TypeError, KeyError):
            return cls(path)  # a missing or damaged cache only costs a full read

    def replace(self, files: List[tuple], others: Set[str]) -> None:
        """Take a new content: `files` holds (rel, stat key, digest, chunk ids joined, piece)."""
        names, records, chunks = [], [], []
        chunk_ends = array("Q")
        end = 0
        for rel, key, digest, joined, piece in files:
            names.append(rel)
            records.append(key + digest + piece)
            chunks.append(joined)
            end += len(joined)
            chunk_ends.append(end)
        self.index = dict(zip(names, range(len(names))))
        self.records, self.chunks_blob, self.chunk_ends = b"".join(records), b"".join(chunks), chunk_ends
        self.others = others

    def save(self) -> None:
        make_private_dirs(os.path.dirname(self.path))
        header = {"version": CACHE_VERSION, "repo": self.repo_id, "snapshot": self.snapshot,
                  "fingerprint": self.fingerprint, "rules": self.rules, "seed": self.seed}
        names = sorted(self.index, key=self.index.__getitem__)
        data = marshal.dumps((header, "\0".join(names).encode("utf-8", "surrogateescape"), self.records,
                              self.chunk_ends.tobytes(), self.chunks_blob,
                              "\0".join(sorted(self.others)).encode("utf-8", "surrogateescape")))
        atomic_write(self.path, data, durable=False)


def cache_path(state_dir: str, job: str) -> str:
    return os.path.join(state_dir, "cache", f"{job}.files")
