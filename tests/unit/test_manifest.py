"""The manifest encoding: one line per entry, byte-identical to the json.dumps form that earlier versions
wrote (unchanged parts of a tree keep deduplicating against old snapshots), and decoded back exactly."""

from __future__ import annotations

import base64
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.store.manifest import (
    Entry,
    chunk_ids,
    decode_entry,
    decode_manifest,
    encode_entry,
    encode_manifest,
    manifest_order,
)

# names as the walk produces them: any characters but '/' and NUL, undecodable bytes as surrogates
_name = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                max_size=12) | st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\0" not in b) \
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
_path = st.lists(_name, min_size=1, max_size=4).map("/".join) | st.just(".")
_ids = st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple)
_int = st.integers(min_value=0, max_value=2**63 - 1)


_xattrs = st.dictionaries(st.sampled_from(["user.a", "user.\u00e9\"chunks\":[", "security.selinux",
                                            "system.posix_acl_access", "user.\udcff"]) | _name,
                          st.binary(max_size=40), max_size=3).map(lambda found: tuple(sorted(found.items())))


@st.composite
def entries(draw) -> Entry:
    kind = draw(st.sampled_from(["file", "dir", "symlink"]))
    path, mode, uid, gid, mtime = draw(_path), draw(st.integers(0, 0o7777)), draw(_int), draw(_int), draw(_int)
    xattrs = draw(_xattrs)
    if kind == "file":
        hardlink = draw(st.just("") | _path)
        return Entry(path, kind, mode, uid, gid, mtime, draw(_int), draw(_ids), hardlink=hardlink, xattrs=xattrs)
    if kind == "symlink":
        return Entry(path, kind, mode, uid, gid, mtime, target=draw(st.lists(_name, min_size=1).map("/".join)),
                     xattrs=xattrs)
    return Entry(path, kind, mode, uid, gid, mtime, xattrs=xattrs)


def _reference(entry: Entry) -> bytes:
    record = {"path": entry.path, "type": entry.type, "mode": entry.mode, "uid": entry.uid, "gid": entry.gid,
              "mtime_ns": entry.mtime_ns}
    if entry.type == "file":
        record["size"] = entry.size
        record["chunks"] = [chunk.hex() for chunk in entry.chunks]
        if entry.hardlink:
            record["hardlink"] = entry.hardlink
    elif entry.type == "symlink":
        record["target"] = entry.target
    if entry.xattrs:
        record["xattrs"] = {name: base64.b64encode(value).decode() for name, value in entry.xattrs}
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


@settings(max_examples=400, deadline=None)
@given(entries())
def test_line_is_the_json_form_and_round_trips(entry: Entry) -> None:
    line = encode_entry(entry)
    assert line == _reference(entry)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_entry(line) == entry


# a small alphabet with characters on both sides of '/' so that shared prefixes are common
_close_path = st.lists(st.text("a.-_0~\udc80", min_size=1, max_size=3), min_size=1, max_size=3).map("/".join)


@settings(max_examples=300, deadline=None)
@example(["a/b", "a.b", "a", "a-b/c", "."])
@given(st.lists(_close_path | _path, max_size=30, unique=True))
def test_manifest_order_is_component_order(paths) -> None:
    by_components = sorted(paths, key=lambda path: [] if path == "." else path.split("/"))
    assert sorted(paths, key=manifest_order) == by_components


@settings(max_examples=200, deadline=None)
@given(st.lists(entries(), max_size=20))
def test_manifest_round_trips_and_its_chunk_ids_are_found_without_parsing(listed) -> None:
    data = encode_manifest(listed)
    assert list(decode_manifest(data)) == listed
    assert chunk_ids(data) == {chunk for entry in listed for chunk in entry.chunks}


def test_lines_written_before_hardlink_and_xattrs_existed_still_read() -> None:
    old = (b'{"path":".","type":"dir","mode":493,"uid":0,"gid":0,"mtime_ns":1}\n'
           b'{"path":"a","type":"file","mode":420,"uid":1,"gid":2,"mtime_ns":3,"size":0,"chunks":[]}\n'
           b'{"path":"l","type":"symlink","mode":511,"uid":1,"gid":2,"mtime_ns":3,"target":"a"}\n')
    assert list(decode_manifest(old)) == [Entry(".", "dir", 0o755, 0, 0, 1), Entry("a", "file", 0o644, 1, 2, 3),
                                          Entry("l", "symlink", 0o777, 1, 2, 3, target="a")]
    assert [entry.xattrs for entry in decode_manifest(old)] == [(), (), ()]
    assert encode_manifest(decode_manifest(old)) == old
