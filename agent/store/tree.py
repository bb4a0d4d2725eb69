"""A snapshot's tree: one JSON line per entry, stored as content-defined blobs so that a snapshot of a
tree where little changed shares nearly all of its tree blobs with the previous one.

Paths are relative to the job's path, '/'-separated; names that are not UTF-8 keep their bytes as
surrogate escapes (\\udcXX in the JSON), which round-trip exactly through os.fsencode.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _quote  # the C encoder json.dumps uses
from typing import Iterable, Iterator, List, NamedTuple, Tuple

from agent.store.index import KIND_TREE
from agent.store.repository import BlobWriter, Repository

_HEX_ID = 64  # a chunk id (SHA-256) in hex


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


def encode_line(path: str, kind: str, mode: int, uid: int, gid: int, mtime_ns: int, size: int = 0,
                chunks: bytes = b"", target: str = "") -> str:
    """One manifest line, byte for byte what json.dumps(record, separators=(",", ":")) writes (so
    manifests written before and after share their tree blobs), without building a dict per entry: the
    manifest of a 100k-file tree is rebuilt on every backup that changes anything. `chunks` is the raw
    chunk ids joined."""
    head = f'{{"path":{_quote(path)},"type":"{kind}","mode":{mode},"uid":{uid},"gid":{gid},"mtime_ns":{mtime_ns}'
    if kind == "file":
        hexed = chunks.hex()
        if len(hexed) == _HEX_ID:
            return f'{head},"size":{size},"chunks":["{hexed}"]}}\n'
        if not hexed:
            return f'{head},"size":{size},"chunks":[]}}\n'
        ids = '","'.join([hexed[i:i + _HEX_ID] for i in range(0, len(hexed), _HEX_ID)])
        return f'{head},"size":{size},"chunks":["{ids}"]}}\n'
    if kind == "symlink":
        return f'{head},"target":{_quote(target)}}}\n'
    return head + "}\n"


def manifest_order(path: str) -> str:
    """Sort key of the manifest: by path components, the root first. '/' mapped below every character
    a name can hold (names never contain NUL) orders whole paths exactly as their component lists."""
    return "" if path == "." else path.replace("/", "\0")


def encode_entry(entry: Entry) -> bytes:
    return encode_line(entry.path, entry.type, entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size,
                       b"".join(entry.chunks), entry.target).encode("ascii")


def encode_tree(entries: Iterable[Entry]) -> bytes:
    return b"".join(encode_entry(entry) for entry in entries)


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
