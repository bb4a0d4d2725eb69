"""Storage backends: where a repository's objects live (see base.py for the interface).

`open_backend(location, s3, cache_dir)` picks one from the configured `repository` string: an absolute
path is the local directory backend; `s3:ENDPOINT/BUCKET[/PREFIX]` is object storage (s3.py, with the
`[s3]` settings), its immutable small objects cached under `cache_dir` (cache.py).
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from agent.backend.base import (
    CONFIG_NAME,
    Backend,
    BackendError,
    FileInfo,
    Handle,
    Kind,
    LockTimeout,
    NotFound,
    RepositoryLock,
    Span,
)
from agent.backend.cache import CachedBackend
from agent.backend.local import LocalBackend
from agent.backend.s3 import S3Backend, S3Options, is_s3


def open_backend(location: str, s3: Optional[S3Options] = None, cache_dir: Optional[str] = None) -> Backend:
    """The backend for a configured repository location. Raises BackendError for an `s3:` location
    without settings or with a malformed URL."""
    if not is_s3(location):
        return LocalBackend(location)
    if s3 is None:
        raise BackendError(f"{location}: an s3 repository needs the [s3] table of agent.toml")
    try:
        backend: Backend = S3Backend(location, s3)
    except ValueError as exc:
        raise BackendError(f"{location}: {exc}") from None
    if cache_dir:
        # one directory per repository: a configuration pointed elsewhere never sees another's objects
        digest = hashlib.sha256(backend.location.encode()).hexdigest()[:16]
        backend = CachedBackend(backend, os.path.join(cache_dir, digest))
    return backend


__all__ = ["CONFIG_NAME", "Backend", "BackendError", "FileInfo", "Handle", "Kind", "LocalBackend",
           "LockTimeout", "NotFound", "RepositoryLock", "Span", "open_backend"]
