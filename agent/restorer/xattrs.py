"""Extended attributes on restore: compare what an entry in the target holds with what the manifest
recorded, and set them (`user.*`, POSIX ACLs as `system.posix_acl_*`, SELinux labels as `security.*`,
`trusted.*`) as far as this process may; what it may not set is a warning naming the file.

Names are reached without following symlinks and without a path from the target's top (which may be
longer than PATH_MAX): through the parent's descriptor as /proc/self/fd/N/NAME with follow_symlinks=False,
or through the entry's own descriptor when one is open.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Union

from agent.store.manifest import Xattrs

# Extra attributes in the target count as a difference only in these namespaces: they are what the
# owner sets. An SELinux label the local policy put on a file (security.*) or a trusted.* attribute that
# the snapshot does not name is the system's, not a change.
_OWNED = ("user.", "system.posix_acl_")

Where = Union[int, str]  # an open descriptor, or a /proc/self/fd/N/NAME path


def reach(parent: int, name: str) -> str:
    """A path that reaches `name` in directory `parent` in one component, whatever the depth."""
    return f"/proc/self/fd/{parent}/{name}"


def _nofollow(where: Where) -> Dict[str, bool]:
    # a descriptor is the entry itself; os.*xattr refuses follow_symlinks together with one
    return {} if isinstance(where, int) else {"follow_symlinks": False}


def current(where: Where) -> Dict[str, bytes]:
    """The entry's attributes now; raises OSError."""
    found = {}
    for name in os.listxattr(where, **_nofollow(where)):
        try:
            found[name] = os.getxattr(where, name, **_nofollow(where))
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EACCES, errno.EPERM):
                raise
    return found


def xattrs_differ(where: Where, recorded: Xattrs, symlink: bool = False) -> bool:
    """Whether the entry's attributes differ from `recorded`: a value that differs, an owned one (see
    _OWNED) that is missing or extra. A recorded attribute of the system's namespaces that the entry
    lacks is no difference (it could not be set here: the restore warned), nor is a user.* one on a
    symlink (Linux refuses those). An entry whose attributes cannot be read differs."""
    try:
        now = current(where)
    except OSError as exc:
        return not (exc.errno == errno.ENOTSUP and not recorded)
    wanted = dict(recorded)
    for name, value in wanted.items():
        if name in now:
            if now[name] != value:
                return True
        elif name.startswith(_OWNED) and not (symlink and name.startswith("user.")):
            return True
    return any(name.startswith(_OWNED) and name not in wanted for name in now)


def apply_xattrs(where: Where, recorded: Xattrs, path: str, warnings: List[str], clear: bool = False) -> None:
    """Set `recorded` on the entry; with `clear` (an entry that existed before), remove owned attributes
    the snapshot does not hold. Each one that cannot be set or removed is a warning naming `path`."""
    if clear:
        try:
            extra = [name for name in os.listxattr(where, **_nofollow(where))
                     if name.startswith(_OWNED) and name not in dict(recorded)]
        except OSError:
            extra = []
        for name in extra:
            try:
                os.removexattr(where, name, **_nofollow(where))
            except OSError as exc:
                warnings.append(f"{path}: extended attribute {name} not removed: {exc.strerror or exc}")
    for name, value in recorded:
        try:
            os.setxattr(where, name, value, **_nofollow(where))
        except OSError as exc:
            warnings.append(f"{path}: extended attribute {name} not restored: {exc.strerror or exc}")
