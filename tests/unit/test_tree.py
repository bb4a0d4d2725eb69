"""The manifest encoding: one line per entry, byte-identical to the json.dumps form that earlier versions
wrote (unchanged parts of a tree keep deduplicating against old snapshots), and decoded back exactly."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.store.tree import Entry, decode_entry, encode_entry, manifest_order

# names as the walk produces them: any characters but '/' and NUL, undecodable bytes as surrogates
_name = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                max_size=12) | st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\0" not in b) \
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
_path = st.lists(_name, min_size=1, max_size=4).map("/".join) | st.just(".")
_ids = st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple)
_int = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def entries(draw) -> Entry:
    kind = draw(st.sampled_from(["file", "dir", "symlink"]))
    path, mode, uid, gid, mtime = draw(_path), draw(st.integers(0, 0o7777)), draw(_int), draw(_int), draw(_int)
    if kind == "file":
        return Entry(path, kind, mode, uid, gid, mtime, draw(_int), draw(_ids))
    if kind == "symlink":
        return Entry(path, kind, mode, uid, gid, mtime, target=draw(st.lists(_name, min_size=1).map("/".join)))
    return Entry(path, kind, mode, uid, gid, mtime)


def _reference(entry: Entry) -> bytes:
    record = {"path": entry.path, "type": entry.type, "mode": entry.mode, "uid": entry.uid, "gid": entry.gid,
              "mtime_ns": entry.mtime_ns}
    if entry.type == "file":
        record["size"] = entry.size
        record["chunks"] = [chunk.hex() for chunk in entry.chunks]
    elif entry.type == "symlink":
        record["target"] = entry.target
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
