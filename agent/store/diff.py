"""What changed between two manifests (agent.store.manifest) of a job: entries added, removed and changed,
and for a changed entry what about it changed. The one diff engine: `backup-agent diff` and the change
counts of a change-triggered backup (its report and its snapshot document) both come from here.

An entry is changed when its type, content (size or chunk ids), permission bits, owner (uid, gid), link
target or extended attributes differ. A timestamp alone does not make it changed, and neither does
anything beneath a directory (a directory's own entry changes only with its own metadata), as in
restic's `diff`.

Manifest lines are a deterministic encoding of their entry, so equal lines are equal entries: the two
manifests are compared as sets of lines and only the lines that differ are decoded. Before that, the
bytes both manifests begin and end with are skipped with a few memcmp calls (a deployment usually
touches a few neighbouring paths): a change-triggered backup of a 16k-entry tree where one file changed
compares a handful of lines, not 33k, and decodes two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from agent.store.manifest import Entry, decode_entry, manifest_order

# the order in which `what` lists the aspects of a changed entry
ASPECTS = ("type", "content", "mode", "owner", "link target", "xattrs")


class Changed(NamedTuple):
    """A path present in both manifests and `what` about it differs (names from ASPECTS, in that order)."""

    path: str
    what: Tuple[str, ...]


@dataclass(frozen=True)
class ManifestDiff:
    """Paths relative to the job's path, each tuple in manifest order."""

    added: Tuple[str, ...] = ()
    removed: Tuple[str, ...] = ()
    changed: Tuple[Changed, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> Dict[str, list]:
        """`{"added": [path, ...], "removed": [...], "changed": [{"path", "what": [...]}]}`."""
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": [{"path": item.path, "what": list(item.what)} for item in self.changed]}

    def counts(self) -> Dict[str, int]:
        """`{"added": N, "removed": N, "changed": N}`: what a snapshot document keeps."""
        return {"added": len(self.added), "removed": len(self.removed), "changed": len(self.changed)}

    def paths(self, limit: int) -> List[str]:
        """The first `limit` paths that were added, removed or changed, in manifest order."""
        every = [*self.added, *self.removed, *(item.path for item in self.changed)]
        return sorted(every, key=manifest_order)[:limit]


def what_changed(old: Entry, new: Entry) -> Tuple[str, ...]:
    """The aspects (ASPECTS) in which two entries of one path differ; empty if only timestamps do."""
    if old.type != new.type:
        return ("type",)
    found = []
    if old.type == "file" and (old.size, old.chunks) != (new.size, new.chunks):
        found.append("content")
    if old.mode != new.mode:
        found.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        found.append("owner")
    if old.type == "symlink" and old.target != new.target:
        found.append("link target")
    if old.xattrs != new.xattrs:
        found.append("xattrs")
    return tuple(found)


def under(path: str, prefix: Optional[str]) -> bool:
    """Whether manifest path `path` is `prefix` or beneath it (prefix None or "." holds everything)."""
    if prefix is None or prefix == ".":
        return True
    return path == prefix or path.startswith(prefix + "/")


def diff_manifests(old: bytes, new: bytes, prefix: Optional[str] = None) -> ManifestDiff:
    """Compare two encoded manifests, only entries at or beneath `prefix` (a manifest path) if given.
    Raises ValueError or KeyError for a damaged line."""
    old, new = _differing_lines(old, new)
    old_lines, new_lines = set(old.split(b"\n")), set(new.split(b"\n"))
    gone = _decoded(old_lines - new_lines, prefix)
    came = _decoded(new_lines - old_lines, prefix)
    changed = []
    for path in came.keys() & gone.keys():
        what = what_changed(gone[path], came[path])
        if what:
            changed.append(Changed(path, what))
    return ManifestDiff(added=_ordered(came.keys() - gone.keys()), removed=_ordered(gone.keys() - came.keys()),
                        changed=tuple(sorted(changed, key=lambda item: manifest_order(item.path))))


_BLOCK = 1 << 16  # bytes compared per call while skipping what the manifests share


def _differing_lines(old: bytes, new: bytes) -> Tuple[bytes, bytes]:
    """The whole lines of `old` and `new` between the bytes both begin with and the bytes both end with.
    Every line left out is in both manifests, so leaving it out changes no set difference of lines."""
    start = _common_run(old, new)
    start = old.rfind(b"\n", 0, start) + 1  # back to the start of the line the first difference is in
    shared = _common_run(old, new, from_end=True, floor=start)
    if shared:
        # forward to just past the first newline of the common tail: whole lines on both sides (the same
        # offset in both, as the tails are equal)
        newline = old.find(b"\n", len(old) - shared)
        shared = len(old) - newline - 1 if newline >= 0 else 0
    return old[start:len(old) - shared], new[start:len(new) - shared]


def _common_run(a: bytes, b: bytes, from_end: bool = False, floor: int = 0) -> int:
    """Length of the bytes `a` and `b` begin with (`from_end`: end with), not reaching below offset
    `floor` in either: block by block, then halving the block that differs."""
    limit, view, done, step = min(len(a), len(b)) - floor, memoryview(b), 0, _BLOCK
    while done < limit:
        size = min(step, limit - done)
        if from_end:
            same = a.endswith(view[len(b) - done - size:len(b) - done], 0, len(a) - done)
        else:
            same = a.startswith(view[done:done + size], done)
        if same:
            done += size
        elif size == 1:
            break
        else:
            step = size // 2
    return done


def _decoded(lines: Iterable[bytes], prefix: Optional[str]) -> Dict[str, Entry]:
    entries = (decode_entry(line) for line in lines if line)
    return {entry.path: entry for entry in entries if under(entry.path, prefix)}


def _ordered(paths: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted(paths, key=manifest_order))
