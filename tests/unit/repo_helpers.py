"""Small repositories for the store and operation tests: real Repository objects on a real backend."""

from __future__ import annotations

import os
from typing import Dict, List

from agent.store import Repository, Snapshot
from agent.store.tree import Entry, write_tree
from agent.store.writer import BlobWriter


def store_files(repo: Repository, job: str, files: Dict[str, bytes], time: str = "2026-11-27T07:00:00Z",
                chunk: int = 0, host: str = "h") -> Snapshot:
    """A snapshot of `job` holding `files` (path -> content), each content one blob (or `chunk`-byte
    pieces when given). Data blobs and the file list go to packs of their own."""
    writer = repo.writer()
    entries = [Entry(".", "dir", 0o755, 0, 0, 0)]
    for path, content in sorted(files.items()):
        pieces = [content[i:i + chunk] for i in range(0, len(content), chunk)] if chunk else [content]
        ids = tuple(writer.save(piece)[0] for piece in pieces if piece)
        entries.append(Entry(path, "file", 0o644, 0, 0, 0, len(content), ids))
    writer.flush()
    writer = repo.writer()
    tree = write_tree(writer, entries)
    writer.flush()
    return repo.save_snapshot(Snapshot(job=job, type="fs", host=host, time=time, trigger="manual", tree=tree,
                                       files=len(files), bytes=sum(map(len, files.values())),
                                       fingerprint=f"{job}-{time}-{len(files)}"))


def snapshot_of(repo: Repository, writer: BlobWriter, entries: List[Entry], job: str = "api") -> Snapshot:
    """A snapshot of `job` holding exactly `entries` (their blobs saved by `writer` already)."""
    tree = write_tree(writer, entries)
    writer.flush()
    files = [entry for entry in entries if entry.type == "file"]
    return repo.save_snapshot(Snapshot(job=job, type="fs", host="h", time="2026-11-30T00:00:00Z", trigger="manual",
                                       tree=tree, files=len(files), bytes=sum(entry.size for entry in files),
                                       fingerprint="f", source=(f"/services/{job}",)))


def deleted_descriptors() -> int:
    """How many of this process's descriptors refer to deleted files (space the disk cannot free)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").endswith("(deleted)")
        except OSError:
            pass
    return count
