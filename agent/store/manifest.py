"""The manifest format: a snapshot's file list, one JSON object per line, in `manifest_order`. This module
alone knows it (encode, decode, the chunk-id scan verify needs); agent.store.tree stores and loads a
manifest as repository blobs.

A line (keys in this order; `json.dumps(record, separators=(",", ":"))` of the same record gives the same
bytes, so manifests written by any version share their tree blobs):

    {"path": P, "type": T, "mode": M, "uid": U, "gid": G, "mtime_ns": N, ...by type..., ...optional...}

- `path`: relative to the job's path, '/'-separated, "." for the job's path itself; a name that is not
  UTF-8 keeps its bytes as surrogate escapes (\\udcXX in the JSON), which round-trip through os.fsencode.
- `type`: "file", "dir" or "symlink". `mode`: the permission bits (st_mode & 0o7777). `uid`, `gid`: numeric
  owner. `mtime_ns`: modification time, nanoseconds since the epoch.
- file: `"size": bytes, "chunks": [hex SHA-256 ids of the content's blobs, in order]`; the content is
  their concatenation (a file read while it grew holds what was read: `size` is always the chunks' total).
- symlink: `"target": the link's text` (same escaping as paths).
- `"hardlink": P0` (optional, files only): this file is the same inode as the entry at path P0, which is
  the first of its names in manifest order and precedes it in the manifest. Every name still carries its
  own `size` and `chunks` (a reader that ignores `hardlink` restores a copy); a restorer links the later
  names to P0 so that one inode has every name again. Absent when the inode has one name in the snapshot.
- `"xattrs": {NAME: base64 value, ...}` (optional, any type; names sorted): the extended attributes as
  `llistxattr`/`lgetxattr` return them: `user.*`, `security.*` (SELinux labels: `security.selinux`),
  `trusted.*` when readable, POSIX ACLs as `system.posix_acl_access` / `system.posix_acl_default` in the
  kernel's binary xattr form (what `setfacl` writes back with `lsetxattr`). Names use the same escaping as
  paths; values are standard base64 with padding. Absent when the entry has none.

Manifests written before `hardlink` and `xattrs` existed simply lack them and decode with their defaults.
"""

from __future__ import annotations

import base64
import json
import re
from json.encoder import encode_basestring_ascii as _quote  # the C encoder json.dumps uses
from typing import Iterable, Iterator, NamedTuple, Set, Tuple

_HEX_ID = 64  # a chunk id (SHA-256) in hex

Xattrs = Tuple[Tuple[str, bytes], ...]  # (name, value) pairs sorted by name


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
    hardlink: str = ""  # path of the first name of the same inode, for a file's later names
    xattrs: Xattrs = ()


def encode_line(path: str, kind: str, mode: int, uid: int, gid: int, mtime_ns: int, size: int = 0,
                chunks: bytes = b"", target: str = "", hardlink: str = "", xattrs: Xattrs = ()) -> str:
    """One manifest line (with its newline), without building a dict per entry: the manifest of a
    100k-file tree is rebuilt on every backup that changes anything. `chunks` is the raw chunk ids
    joined (32 bytes each)."""
    line = f'{{"path":{_quote(path)},"type":"{kind}","mode":{mode},"uid":{uid},"gid":{gid},"mtime_ns":{mtime_ns}'
    if kind == "file":
        hexed = chunks.hex()
        if len(hexed) == _HEX_ID:
            line = f'{line},"size":{size},"chunks":["{hexed}"]'
        elif not hexed:
            line = f'{line},"size":{size},"chunks":[]'
        else:
            ids = '","'.join([hexed[i:i + _HEX_ID] for i in range(0, len(hexed), _HEX_ID)])
            line = f'{line},"size":{size},"chunks":["{ids}"]'
        if hardlink:
            line = f'{line},"hardlink":{_quote(hardlink)}'
    elif kind == "symlink":
        line = f'{line},"target":{_quote(target)}'
    if xattrs:
        line = f"{line},{encode_xattrs(xattrs)}"
    return line + "}\n"


def encode_xattrs(xattrs: Xattrs) -> str:
    """The `"xattrs":{...}` member of a line; `xattrs` sorted by name."""
    members = ",".join(f"{_quote(name)}:\"{base64.b64encode(value).decode('ascii')}\"" for name, value in xattrs)
    return f'"xattrs":{{{members}}}'


def encode_entry(entry: Entry) -> bytes:
    return encode_line(entry.path, entry.type, entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size,
                       b"".join(entry.chunks), entry.target, entry.hardlink, entry.xattrs).encode("ascii")


def encode_manifest(entries: Iterable[Entry]) -> bytes:
    """Entries already in manifest order."""
    return b"".join(encode_entry(entry) for entry in entries)


def manifest_order(path: str) -> str:
    """Sort key of the manifest: by path components, the root first. '/' mapped below every character
    a name can hold (names never contain NUL) orders whole paths exactly as their component lists."""
    return "" if path == "." else path.replace("/", "\0")


def decode_entry(line: bytes) -> Entry:
    """One line; raises ValueError (json.JSONDecodeError) or KeyError for a damaged one."""
    return _from_record(json.loads(line))


def decode_manifest(data: bytes) -> Iterator[Entry]:
    """Every entry of a manifest's bytes, in their order; raises ValueError or KeyError if damaged."""
    data = data.rstrip(b"\n")
    if not data:
        return
    # one JSON array parsed in C instead of a parse call per line (encoded lines never hold a raw newline)
    for record in json.loads(b"[" + data.replace(b"\n", b",") + b"]"):
        yield _from_record(record)


def _from_record(record: dict) -> Entry:
    xattrs = record.get("xattrs")
    return Entry(record["path"], record["type"], int(record["mode"]), int(record["uid"]),
                 int(record["gid"]), int(record["mtime_ns"]), int(record.get("size", 0)),
                 tuple(bytes.fromhex(chunk) for chunk in record.get("chunks", ())),
                 record.get("target", ""), record.get("hardlink", ""),
                 tuple(sorted((name, base64.b64decode(value)) for name, value in xattrs.items())) if xattrs else ())


# `"chunks":[` can only be a key followed by its array (a path, target or xattr holding those characters is
# JSON-escaped, and `xattrs` values are strings), and the array holds only quoted hex ids.
_CHUNK_LISTS = re.compile(rb'"chunks":\[([^\]]*)\]')


def chunk_ids(data: bytes) -> Set[bytes]:
    """The distinct raw chunk ids a manifest's bytes reference, without parsing its records: all the ids'
    hex digits are joined and converted in one call (13 snapshots x 100k files made a record-by-record
    parse most of `verify`'s time). Raises ValueError if the digits are damaged."""
    digits = b"".join(_CHUNK_LISTS.findall(data)).replace(b'"', b"").replace(b",", b"")
    raw = bytes.fromhex(digits.decode("ascii"))
    return {raw[offset:offset + 32] for offset in range(0, len(raw), 32)}
