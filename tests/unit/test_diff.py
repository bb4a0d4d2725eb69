"""The diff engine on encoded manifests: what makes an entry changed, and what does not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.diff import Changed, _differing_lines, diff_manifests, what_changed
from agent.store.manifest import Entry, encode_manifest

ROOT = Entry(".", "dir", 0o755, 0, 0, 1)


def manifest(*entries: Entry) -> bytes:
    return encode_manifest(sorted([ROOT, *entries], key=lambda e: e.path.replace("/", "\0")))


def test_timestamps_and_changes_beneath_a_directory_do_not_make_it_changed():
    old = manifest(Entry("conf", "dir", 0o755, 0, 0, 10), Entry("conf/a", "file", 0o644, 0, 0, 10, 1, (b"1" * 32,)))
    new = manifest(Entry("conf", "dir", 0o755, 0, 0, 99), Entry("conf/a", "file", 0o644, 0, 0, 99, 1, (b"1" * 32,)),
                   Entry("conf/b", "file", 0o644, 0, 0, 99))
    result = diff_manifests(old, new)
    assert (result.added, result.removed, result.changed) == (("conf/b",), (), ())
    assert result.counts() == {"added": 1, "removed": 0, "changed": 0}


def test_each_aspect_is_named_in_order():
    base = Entry("f", "file", 0o644, 1, 1, 5, 3, (b"a" * 32,))
    assert what_changed(base, base._replace(mtime_ns=6)) == ()
    assert what_changed(base, base._replace(chunks=(b"b" * 32,), mode=0o600, gid=2)) == ("content", "mode", "owner")
    assert what_changed(base, base._replace(size=4)) == ("content",)
    assert what_changed(base, base._replace(xattrs=(("user.x", b"1"),))) == ("xattrs",)
    link = Entry("l", "symlink", 0o777, 0, 0, 1, target="a")
    assert what_changed(link, link._replace(target="b")) == ("link target",)
    assert what_changed(base, Entry("f", "dir", 0o644, 1, 1, 5)) == ("type",)


def test_a_prefix_keeps_its_own_subtree_only_and_paths_come_in_manifest_order():
    old = manifest(Entry("a", "dir", 0o755, 0, 0, 1), Entry("a-b", "file", 0o644, 0, 0, 1),
                   Entry("a/x", "file", 0o644, 0, 0, 1))
    new = manifest(Entry("a", "dir", 0o700, 0, 0, 1), Entry("a/y", "file", 0o644, 0, 0, 1),
                   Entry("a/x", "file", 0o600, 0, 0, 1))
    result = diff_manifests(old, new, "a")
    assert result.added == ("a/y",) and result.removed == ()
    assert result.changed == (Changed("a", ("mode",)), Changed("a/x", ("mode",)))
    everything = diff_manifests(old, new)
    assert everything.removed == ("a-b",)
    assert everything.paths(3) == ["a", "a/x", "a/y"]  # '/' sorts before '-' in manifest order
    assert everything.to_json()["changed"][0] == {"path": "a", "what": ["mode"]}


_line = st.builds(lambda name, mode, size: Entry(name, "file", mode, 0, 0, 1, size),
                  st.text("ab/c\n\\\"", min_size=1, max_size=4), st.sampled_from([0o644, 0o600]), st.integers(0, 2))


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=12), st.lists(_line, max_size=12), st.lists(_line, max_size=12),
       st.lists(_line, max_size=12))
def test_skipping_the_shared_head_and_tail_gives_what_comparing_every_line_gives(head, old_middle, new_middle, tail):
    def unique(entries):  # a manifest names each path once
        return list({entry.path: entry for entry in entries}.values())

    old = encode_manifest(unique(head + old_middle + tail))
    new = encode_manifest(unique(head + new_middle + tail))
    def lines(data):
        return {line for line in data.split(b"\n") if line}

    old_part, new_part = _differing_lines(old, new)
    assert lines(old_part) - lines(new_part) == lines(old) - lines(new)
    assert lines(new_part) - lines(old_part) == lines(new) - lines(old)
    assert old_part in old and new_part in new


def _big(changes: dict = {}) -> bytes:  # noqa: B006 - read only
    """A manifest of 3000 files (~190 KB, several of the blocks the shared ends are compared in)."""
    entries = [Entry(f"app/lib/module-{number:05}.jar", "file", changes.get(number, 0o644), 0, 0, 1, number,
                     (number.to_bytes(32, "big"),)) for number in range(3000)]
    return encode_manifest([ROOT, Entry("app", "dir", 0o755, 0, 0, 1), Entry("app/lib", "dir", 0o755, 0, 0, 1),
                            *entries])


def test_one_change_anywhere_in_a_large_manifest_is_found_by_comparing_its_own_lines():
    old = _big()
    assert len(old) > 3 * (1 << 16)
    assert not diff_manifests(old, old) and _differing_lines(old, old) == (b"", b"")
    for number in (0, 1, 1000, 1456, 2047, 2998, 2999):
        new = _big({number: 0o600})
        path = f"app/lib/module-{number:05}.jar"
        result = diff_manifests(old, new)
        assert result and result.changed == (Changed(path, ("mode",)),) and not result.added and not result.removed
        assert result.to_json() == {"added": [], "removed": [], "changed": [{"path": path, "what": ["mode"]}]}
        old_part, new_part = _differing_lines(old, new)
        assert old_part.count(b"\n") <= 2 and new_part.count(b"\n") <= 2 and path.encode() in old_part
    longer = old + encode_manifest([Entry("zz", "file", 0o644, 0, 0, 1)])
    assert diff_manifests(old, longer).to_json() == {"added": ["zz"], "removed": [], "changed": []}
    assert diff_manifests(longer, old).to_json() == {"added": [], "removed": ["zz"], "changed": []}
    assert bool(diff_manifests(longer, old)) and bool(diff_manifests(old, longer))
