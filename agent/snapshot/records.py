"""What a tree backup knows about each entry of the tree while it runs, and what it makes of it at the
end: the snapshot fingerprint and the manifest's bytes.

Two kinds of entries: a `Record` for every directory, symlink and file that was examined (read, or taken
from the previous snapshot), and a number in the files cache for every file whose stat matched it
("kept": everything about it is read from the cache, and only if a snapshot or a new cache is written).
An int per kept file rather than a record: building a tuple per unchanged file cost the walk of a
100k-file tree about a third of its time.
"""

from __future__ import annotations

import stat
from itertools import chain
from typing import Dict, List, NamedTuple, Set, Tuple

import xxhash

from agent.snapshot.cache import FilesCache
from agent.store.manifest import Xattrs, encode_line, encode_xattrs, manifest_order

_MASK128 = (1 << 128) - 1


class Record(NamedTuple):
    """One examined entry. `extra`: a file's chunk ids joined (32 bytes each), a symlink's target in
    bytes, empty for a directory. `key`: the stat key to trust next time (cache.UNTRUSTED if the file
    may still change within its timestamp tick, empty for others). `digest`: seeded xxh3-128 of a file's
    content."""

    kind: str  # "file", "dir" or "symlink"
    mode: int  # st_mode, type bits included
    uid: int
    gid: int
    mtime_ns: int
    size: int
    extra: bytes
    piece: bytes  # this entry's share of the snapshot fingerprint
    key: bytes = b""
    digest: bytes = b""
    xattrs: Xattrs = ()


def fingerprint_piece(seed: int, rel: str, kind: str, mode: int, uid: int, gid: int, size: int, extra: bytes,
                      xattrs: Xattrs) -> bytes:
    """An entry's share of the snapshot fingerprint: everything but timestamps, so a file rewritten with the
    same content (configuration management) does not make a new snapshot. An entry without xattrs hashes
    exactly as before they were recorded, so an upgrade alone makes no new snapshot."""
    head = f"{rel}\0{kind}\0{stat.S_IMODE(mode)}\0{uid}\0{gid}\0{size if kind == 'file' else 0}\0"
    data = head.encode("utf-8", "surrogateescape") + extra
    if xattrs:
        data += b"\0" + encode_xattrs(xattrs).encode("ascii")
    return xxhash.xxh3_128_digest(data, seed)


class TreeRecords:
    """The entries of the snapshot being made, keyed by path relative to the job's path."""

    def __init__(self, cache: FilesCache, seed: int) -> None:
        self.cache = cache
        self.seed = seed
        self.records: Dict[str, Record] = {}
        self.kept: Dict[str, int] = {}
        # (st_dev, st_ino) -> names, for files with more than one link: made into `hardlink` fields
        self.links: Dict[Tuple[int, int], List[str]] = {}
        self.pruned: Set[str] = set()  # excluded directories, recorded empty
        self.dirty = False  # whether the files cache must be rewritten

    def add(self, rel: str, kind: str, st, extra: bytes = b"", key: bytes = b"", digest: bytes = b"",
            xattrs: Xattrs = (), size: int = -1) -> None:
        """Record `rel` from a stat result (or anything with its st_* fields); `size` overrides st_size
        (a file stored as read while it changed)."""
        size = st.st_size if size < 0 else size
        piece = fingerprint_piece(self.seed, rel, kind, st.st_mode, st.st_uid, st.st_gid, size, extra, xattrs)
        self.records[rel] = Record(kind, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, size, extra, piece,
                                   key, digest, xattrs)

    def link(self, st, rel: str) -> None:
        self.links.setdefault((st.st_dev, st.st_ino), []).append(rel)

    def forget(self, rel: str) -> None:
        """Drop `rel` and everything below it."""
        prefix = rel + "/"
        for table in (self.records, self.kept):
            for key in [key for key in table if key == rel or key.startswith(prefix)]:
                del table[key]
                self.dirty = True
        self.pruned = {key for key in self.pruned if key != rel and not key.startswith(prefix)}

    def others(self) -> Set[str]:
        """Directories and symlinks that were included (entered, for directories): the walk's shortcut
        past the exclusion rules next time."""
        return {rel for rel, record in self.records.items() if record.kind != "file" and rel != "."} - self.pruned

    def hardlinks(self) -> Dict[str, str]:
        """path -> the first of its inode's names in manifest order, for every later name."""
        present = self.records.keys() | self.kept.keys()
        result: Dict[str, str] = {}
        for names in self.links.values():
            names = sorted({name for name in names if name in present}, key=manifest_order)
            for name in names[1:]:
                result[name] = names[0]
        return result

    def fingerprint(self, kept_pieces: int, hardlinks: Dict[str, str]) -> str:
        """Order-independent, so an incremental run and a full walk of the same tree agree."""
        total = kept_pieces
        for record in self.records.values():
            total += int.from_bytes(record.piece, "little")
        for name, first in hardlinks.items():
            link = f"{name}\0hardlink\0{first}".encode("utf-8", "surrogateescape")
            total += int.from_bytes(xxhash.xxh3_128_digest(link, self.seed), "little")
        return f"{total & _MASK128:032x}-{len(self.records) + len(self.kept)}"

    def manifest(self, hardlinks: Dict[str, str]) -> bytes:
        """The manifest's lines in path order."""
        records, kept, cache = self.records, self.kept, self.cache
        cached_chunks, cached_stat, cached_xattrs = cache.chunks, cache.stat_of, cache.xattrs
        any_xattrs = len(cache.xattr_sets) > 1  # most trees have none: no lookup per kept file then
        lines = []
        for rel in sorted(chain(records, kept), key=manifest_order):
            number = kept.get(rel)
            if number is not None:
                size, mtime_ns, mode, uid, gid = cached_stat(number)
                lines.append(encode_line(rel, "file", mode & 0o7777, uid, gid, mtime_ns, size, cached_chunks(number),
                                         hardlink=hardlinks.get(rel, "") if hardlinks else "",
                                         xattrs=cached_xattrs(number) if any_xattrs else ()))
                continue
            record = records[rel]
            if record.kind == "file":
                lines.append(encode_line(rel, "file", record.mode & 0o7777, record.uid, record.gid, record.mtime_ns,
                                         record.size, record.extra, hardlink=hardlinks.get(rel, ""),
                                         xattrs=record.xattrs))
            else:
                target = record.extra.decode("utf-8", "surrogateescape") if record.kind == "symlink" else ""
                lines.append(encode_line(rel, record.kind, record.mode & 0o7777, record.uid, record.gid,
                                         record.mtime_ns, target=target, xattrs=record.xattrs))
        return "".join(lines).encode("ascii")
