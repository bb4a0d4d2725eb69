"""A snapshot's tree in the repository: its manifest (agent.store.manifest) stored as content-defined
tree blobs, so that a snapshot of a tree where little changed shares nearly all of its tree blobs with
the previous one."""

from __future__ import annotations

from typing import Iterable, Iterator, Set, Tuple

from agent.store.index import KIND_TREE
from agent.store.manifest import Entry, chunk_ids, decode_manifest, encode_manifest
from agent.store.repository import BlobWriter, Repository


def write_tree(writer: BlobWriter, entries: Iterable[Entry]) -> Tuple[str, ...]:
    """Store entries (in manifest order); returns the tree's blob ids in hex."""
    return write_encoded(writer, encode_manifest(entries))


def write_encoded(writer: BlobWriter, data: bytes) -> Tuple[str, ...]:
    """Store an encoded manifest; returns the tree's blob ids in hex."""
    blob_ids = []
    for piece in writer.repo.chunker.split(data):
        blob_id, _ = writer.save(piece, KIND_TREE)
        blob_ids.append(blob_id.hex())
    return tuple(blob_ids)


def read_encoded(repo: Repository, tree: Iterable[str]) -> bytes:
    blob_ids = [bytes.fromhex(blob_id) for blob_id in tree]
    with repo.read_ahead(blob_ids):
        return b"".join(repo.read_blob(blob_id) for blob_id in blob_ids)


def read_tree(repo: Repository, tree: Iterable[str]) -> Iterator[Entry]:
    return decode_manifest(read_encoded(repo, tree))


def referenced_chunks(repo: Repository, tree: Iterable[str]) -> Set[bytes]:
    """The raw chunk ids a tree's files reference (see manifest.chunk_ids)."""
    return chunk_ids(read_encoded(repo, tree))
