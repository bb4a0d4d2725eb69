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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Deque, Optional, Tuple

from agent.progress import Progress
from agent.snapshot.reader import Aborted, StoreFailed
from agent.store import BlobWriter, Repository, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import write_tree

_TAIL = 4096
_WORKERS = 2      # the machines this runs on have 2+ cores, one of them busy with the dump tool
_AHEAD = 16       # chunks prepared ahead of the writer: memory stays bounded (16 x 512 KiB at most)


@dataclass
class StoredStream:
    chunks: Tuple[bytes, ...]
    size: int
    tail: bytes              # the stream's last bytes, for completion checks
    writer: BlobWriter


def store_stream(repo: Repository, stream: BinaryIO, stop: Optional[threading.Event] = None,
                 progress: Optional[Progress] = None) -> StoredStream:
    """Chunk the stream on this thread while worker threads hash and compress the chunks before it: the
    dump tool, the chunker and compression run at once, so the tool is not held up by a full pipe.
    `progress` is told each chunk's bytes. Raises StoreFailed for an OSError (how far it got), Aborted
    when `stop` is set."""
    writer = repo.writer()
    ids = []
    size = 0
    tail = bytearray()
    in_flight: Deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="stream-compress") as pool:
        try:
            for piece in repo.stream_chunker.split_stream(stream):
                if stop is not None and stop.is_set():
                    raise Aborted()
                data = bytes(piece)  # the chunker reuses its buffer for the next chunk
                # dumps are text: compressing a sample first to see whether it compresses only costs CPU
                # (a chunk that does not compress is still stored raw)
                in_flight.append(pool.submit(writer.prepare, data, False))
                size += len(data)
                if progress is not None:
                    progress.advance(bytes=len(data))
                tail += data[-_TAIL:]
                del tail[:-_TAIL]
                while len(in_flight) > _AHEAD or (in_flight and in_flight[0].done()):
                    ids.append(_add(writer, in_flight.popleft()))
            while in_flight:
                ids.append(_add(writer, in_flight.popleft()))
            if progress is not None:
                progress.advance(files=1)  # the dump is one file of the snapshot
        except OSError as exc:
            raise StoreFailed(exc, size, writer.new_bytes) from exc
        finally:
            for future in in_flight:
                future.cancel()
    return StoredStream(tuple(ids), size, bytes(tail), writer)


def _add(writer: BlobWriter, future: Future) -> bytes:
    blob = future.result()
    writer.save_prepared(blob)
    return blob.blob_id


def commit_stream(repo: Repository, stored: StoredStream, name: str, *, job: str, job_type: str, host: str,
                  trigger: str, now: str, source: str) -> Tuple[Snapshot, bool]:
    """Write the snapshot of a judged-good stream; returns it and whether it differs from the last one.
    Raises StoreFailed when the repository refuses a write."""
    fingerprint = hashlib.sha256(b"".join(stored.chunks)).hexdigest()
    previous = repo.history(job, host)  # a snapshot dated by a wrong clock does not count as the last
    if previous and previous[-1].fingerprint == fingerprint and not previous[-1].partial:
        return previous[-1], False  # identical dump (same bytes): nothing new to keep
    entry = Entry(name, "file", 0o600, os.getuid(), os.getgid(), time.time_ns(), stored.size, stored.chunks)
    try:
        tree = write_tree(stored.writer, [Entry(".", "dir", 0o700, os.getuid(), os.getgid(), time.time_ns()),
                                          entry])
        stored.writer.flush()  # the last packs: the first write that fails on a full disk, often
        snapshot = repo.save_snapshot(Snapshot(job=job, type=job_type, host=host, time=now, trigger=trigger,
                                               tree=tree, files=1, bytes=stored.size, fingerprint=fingerprint,
                                               source=(source,)))
    except OSError as exc:
        raise StoreFailed(exc, stored.size, stored.writer.new_bytes) from exc
    return snapshot, True
