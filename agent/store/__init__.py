"""The repository: packs of deduplicated blobs, an index, snapshot manifests, lock, prune and verify."""

from agent.durable import LockTimeout
from agent.store.index import KIND_DATA, KIND_TREE
from agent.store.repository import (
    BlobWriter,
    DamagedBlobError,
    Repository,
    RepositoryError,
    Snapshot,
)

__all__ = [
    "KIND_DATA", "KIND_TREE", "BlobWriter", "DamagedBlobError", "LockTimeout", "Repository",
    "RepositoryError", "Snapshot",
]
