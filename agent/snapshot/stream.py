"""Back up a stream (a database dump on a tool's stdout) as a one-file snapshot.

The stream is chunked and stored while it is produced: no temp file, memory bounded by one chunk
window. Nothing is committed until the caller has judged the finished dump: a failed dump leaves only
unreferenced blobs, which prune removes, never a snapshot.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Optional, Tuple

from agent.snapshot.fs import Aborted
from agent.store import BlobWriter, Repository, Snapshot
from agent.store.tree import Entry, write_tree

_TAIL = 4096


@dataclass
class StoredStream:
    chunks: Tuple[bytes, ...]
    size: int
    tail: bytes              # the stream's last bytes, for completion checks
    writer: BlobWriter


def store_stream(repo: Repository, stream: BinaryIO, stop: Optional[threading.Event] = None) -> StoredStream:
    writer = repo.writer()
    ids = []
    size = 0
    tail = bytearray()
    for piece in repo.chunker.split_stream(stream):
        if stop is not None and stop.is_set():
            raise Aborted()
        blob_id, _ = writer.save(piece)
        ids.append(blob_id)
        size += len(piece)
        tail += piece[-_TAIL:]
        del tail[:-_TAIL]
    return StoredStream(tuple(ids), size, bytes(tail), writer)


def commit_stream(repo: Repository, stored: StoredStream, name: str, *, job: str, job_type: str, host: str,
                  trigger: str, now: str, source: str) -> Tuple[Snapshot, bool]:
    """Write the snapshot of a judged-good stream; returns it and whether it differs from the last one."""
    fingerprint = hashlib.sha256(b"".join(stored.chunks)).hexdigest()
    previous = repo.snapshots(job)
    if previous and previous[-1].fingerprint == fingerprint and not previous[-1].partial:
        return previous[-1], False  # identical dump (same bytes): nothing new to keep
    entry = Entry(name, "file", 0o600, os.getuid(), os.getgid(), time.time_ns(), stored.size, stored.chunks)
    tree = write_tree(stored.writer, [Entry(".", "dir", 0o700, os.getuid(), os.getgid(), time.time_ns()), entry])
    stored.writer.flush()
    snapshot = repo.save_snapshot(Snapshot(job=job, type=job_type, host=host, time=now, trigger=trigger,
                                           tree=tree, files=1, bytes=stored.size, fingerprint=fingerprint,
                                           source=(source,)))
    return snapshot, True
