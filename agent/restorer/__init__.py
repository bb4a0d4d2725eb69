"""Restore: the operation that writes a snapshot (or some of its paths) back into a directory.

It sits above the repository and reads through its interface only (`Repository.read_blob`, the file
list); how the repository stores its objects is not its business.
"""

from agent.restorer.restore import (
    OVERWRITE_MODES,
    PathError,
    Restored,
    RestoreRequest,
    RestoreResult,
    TargetError,
    restore_snapshot,
    restore_snapshots,
    safe_parts,
)

__all__ = ["OVERWRITE_MODES", "PathError", "RestoreRequest", "RestoreResult", "Restored", "TargetError",
           "restore_snapshot", "restore_snapshots", "safe_parts"]
