"""The files cache: what each file looked like (size, mtime, ctime, inode) when its content was stored.

An unchanged stat means the file is not read again. The cache belongs to one job's last snapshot: it is
trusted only while that snapshot still exists in the same repository (prune never deletes the blobs of a
live snapshot), so it can never point at data that is gone. marshal keeps loading it fast and, unlike
pickle, cannot run code.
"""

from __future__ import annotations

import marshal
import os
import secrets
import struct
from dataclasses import dataclass, field
from typing import Dict, Set, Tuple

from agent.store.fsutil import atomic_write, make_private_dirs

CACHE_VERSION = 3

# stat key (size, mtime_ns, ctime_ns, inode packed; b"" when not to be trusted), xxh3-128 of the content,
# the chunk ids joined, and the file's share of the snapshot fingerprint. Flat bytes keep loading a
# 100k-file cache fast.
CachedFile = Tuple[bytes, bytes, bytes, bytes]
_STAT_KEY = struct.Struct("<qqqQ")


def stat_key(st: os.stat_result) -> bytes:
    return _STAT_KEY.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class FilesCache:
    path: str
    repo_id: str = ""
    snapshot: str = ""
    fingerprint: str = ""
    rules: str = ""
    files: Dict[str, CachedFile] = field(default_factory=dict)
    others: Set[str] = field(default_factory=set)  # directories and symlinks included last time
    # Seeds the xxh3 content and fingerprint hashes: a user who can write under /services cannot aim a
    # crafted collision at a hash whose seed lives in a 0600 file of the agent's.
    seed: int = field(default_factory=lambda: secrets.randbits(64))

    @classmethod
    def load(cls, path: str) -> FilesCache:
        try:
            with open(path, "rb") as handle:
                header, files, others = marshal.load(handle)
            if header.get("version") != CACHE_VERSION:
                return cls(path)
            return cls(path, header["repo"], header["snapshot"], header["fingerprint"], header["rules"],
                       files, others, header["seed"])
        except (OSError, ValueError, EOFError, TypeError, KeyError):
            return cls(path)  # a missing or damaged cache only costs a full read

    def save(self) -> None:
        make_private_dirs(os.path.dirname(self.path))
        header = {"version": CACHE_VERSION, "repo": self.repo_id, "snapshot": self.snapshot,
                  "fingerprint": self.fingerprint, "rules": self.rules, "seed": self.seed}
        atomic_write(self.path, marshal.dumps((header, self.files, self.others)), durable=False)


def cache_path(state_dir: str, job: str) -> str:
    return os.path.join(state_dir, "cache", f"{job}.files")
