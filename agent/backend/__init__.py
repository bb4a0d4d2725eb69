"""Storage backends: where a repository's objects live (see base.py for the interface).

`open_backend(location)` picks one from the configured `repository` string: an absolute path is the
local directory backend (object storage, `s3:...`, comes with issue 12).
"""

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
)
from agent.backend.local import LocalBackend


def open_backend(location: str) -> Backend:
    """The backend for a configured repository location."""
    return LocalBackend(location)


__all__ = ["CONFIG_NAME", "Backend", "BackendError", "FileInfo", "Handle", "Kind", "LocalBackend",
           "LockTimeout", "NotFound", "RepositoryLock", "open_backend"]
