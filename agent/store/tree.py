"""A snapshot's tree: one JSON line per entry, stored as content-defined blobs so that a snapshot of a
tree where little changed shares nearly all of its tree blobs with the previous one.

Paths are relative to the job's path, '/'-separated; names that are not UTF-8 keep their bytes as
surrogate escapes (\\udcXX in the JSON), which round-trip exactly through os.fsencode.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator, List, NamedTuple, Tuple

from agent.store.index import KIND_TREE
from agent.store.repository import BlobWriter, Repository


class Entry(NamedTuple):
    path: str
    type: str  # "file", "dir" or "symlink"
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    chunks: Tuple[bytes, ...] = ()
    target: str = ""


def _record(entry: Entry) -> dict:
    record = {"path": entry.path, "type": entry.type, "mode": entry.mode, "uid": entry.uid,
              "gid": entry.gid, "mtime_ns": entry.mtime_ns}
    if entry.type == "file":
        record["size"] = entry.size
        record["chunks"] = [chunk.hex() for chunk in entry.chunks]
    elif entry.type == "symlink":
        record["target"] = entry.target
    return record


def encode_entry(entry: Entry) -> bytes:
    return json.dumps(_record(entry), separators=(",", ":")).encode("ascii") + b"\n"


def encode_tree(entries: Iterable[Entry]) -> bytes:
    return encode_records([_record(entry) for entry in entries])


def encode_records(records: List[dict]) -> bytes:
    """All entries, one JSON object per line, serialised in one C-level call: the line breaks go where
    the array's "},{" separators were, and json.dumps never writes a raw newline inside a string, so
    `read_tree` turning every newline back into a comma is the exact inverse."""
    text = json.dumps(records, separators=(",", ":"))
    if text == "[]":
        return b""
    return text[1:-1].replace("},{", "}\n{").encode("ascii") + b"\n"


def decode_entry(line: bytes) -> Entry:
    return _from_record(json.loads(line))


def _from_record(record: dict) -> Entry:
    return Entry(record["path"], record["type"], int(record["mode"]), int(record["uid"]),
                 int(record["gid"]), int(record["mtime_ns"]), int(record.get("size", 0)),
                 tuple(bytes.fromhex(chunk) for chunk in record.get("chunks", ())),
                 record.get("target", ""))


def write_tree(writer: BlobWriter, entries: Iterable[Entry]) -> Tuple[str, ...]:
    return write_encoded(writer, encode_tree(entries))


def write_encoded(writer: BlobWriter, data: bytes) -> Tuple[str, ...]:
    blob_ids = []
    for piece in writer.repo.chunker.split(data):
        blob_id, _ = writer.save(piece, KIND_TREE)
        blob_ids.append(blob_id.hex())
    return tuple(blob_ids)


def read_tree(repo: Repository, tree: Iterable[str]) -> Iterator[Entry]:
    data = b"".join(repo.read_blob(bytes.fromhex(blob_id)) for blob_id in tree).rstrip(b"\n")
    if not data:
        return
    # one JSON array parsed in C instead of a parse call per line (encoded lines never hold a raw newline)
    for record in json.loads(b"[" + data.replace(b"\n", b",") + b"]"):
        yield _from_record(record)


def tree_entries(repo: Repository, tree: Iterable[str]) -> List[Entry]:
    return list(read_tree(repo, tree))
