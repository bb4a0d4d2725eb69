"""The repository: packs of deduplicated blobs, an index, snapshot documents, on a storage backend.

Operations that use it (verify: agent.checker, prune: agent.pruner, restore: agent.restorer) live
above it and use only `Repository`'s methods.
"""

from agent.durable import LockTimeout
from agent.store.index import KIND_DATA, KIND_TREE
from agent.store.repository import (
    BlobWriter,
    DamagedBlobError,
    DamagedSnapshot,
    KeyUnusable,
    Repository,
    RepositoryError,
    Snapshot,
    SnapshotUnreadable,
)

__all__ = [
    "KIND_DATA", "KIND_TREE", "BlobWriter", "DamagedBlobError", "DamagedSnapshot", "KeyUnusable", "LockTimeout",
    "Repository",
    "RepositoryError", "Snapshot", "SnapshotUnreadable",
]
