"""The index (agent.store.index): encoding, what other writers add, prune's replacement, damaged copies."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.backend import Handle, Kind
from agent.backend.mem import MemBackend
from agent.store.damage import decode_damage, encode_damage
from agent.store.index import BlobLocation, Index, decode_index, encode_index

PACK_A, PACK_B = b"A" * 32, b"B" * 32


def _loc(pack: bytes, offset: int = 0) -> BlobLocation:
    return BlobLocation(pack, offset, 10, 20, 1)


def test_encoding_round_trips_and_refuses_damage():
    entries = [(os.urandom(32), _loc(PACK_A, n * 10)) for n in range(5)] + [(os.urandom(32), _loc(PACK_B))]
    data = encode_index(entries)
    assert list(decode_index(data)) == entries
    with pytest.raises(ValueError, match="^truncated index file$"):
        list(decode_index(data[:-3]))
    with pytest.raises(ValueError, match="^not an index file$"):
        list(decode_index(b"garbage"))


def test_files_written_elsewhere_are_seen_on_refresh_and_replacement_starts_over():
    backend = MemBackend()
    mine, other = Index(backend), Index(backend)
    first, second = os.urandom(32), os.urandom(32)
    name = mine.write([(first, _loc(PACK_A))])
    assert first in other and len(other) == 1
    mine.write([(second, _loc(PACK_B))])
    assert second not in other  # not looked yet
    assert other.refresh() is False and second in other
    backend.remove(Handle(Kind.INDEX, name))  # prune replaced the index
    assert other.refresh() is True
    assert first not in other and other.get(second) == _loc(PACK_B)
    assert other.files == sorted(info.name for info in backend.list(Kind.INDEX))


def test_a_bad_index_file_is_named_and_the_rest_loaded():
    backend = MemBackend()
    backend.save(Handle(Kind.INDEX, "cd" * 32), [b"BAIX\x01\x00\x00\x00\x00" + b"x" * 7])
    good = os.urandom(32)
    Index(backend).write([(good, _loc(PACK_A))])
    index = Index(backend)
    assert good in index  # the other files still serve
    assert list(index.unreadable) == ["cd" * 32] and "cd" * 32 in index.unreadable["cd" * 32]


@pytest.mark.parametrize("lookups", [1, 40])  # answered by scanning, then by the dict
def test_damaged_copies_are_never_found_and_a_good_copy_is(lookups):
    backend = MemBackend()
    writer = Index(backend)
    damaged, healthy = os.urandom(32), os.urandom(32)
    others = [os.urandom(32) for _ in range(lookups)]
    writer.write([(damaged, _loc(PACK_A)), (healthy, _loc(PACK_A, 10))] + [(o, _loc(PACK_B)) for o in others])
    name, data = encode_damage([(damaged, PACK_A)])
    assert decode_damage(data) == [(damaged, PACK_A)]
    backend.save(Handle(Kind.DAMAGE, name), [data])
    assert Index(backend).damaged() == {damaged: frozenset({PACK_A})}  # loads what it needs by itself
    index = Index(backend)
    for other in others:
        assert other in index
    assert damaged not in index and index.get(damaged) is None and healthy in index
    assert index.unhealed() == {damaged} and index.damaged() == {damaged: frozenset({PACK_A})}
    assert damaged not in set(index.ids()) and dict(index.items()).get(damaged) is None
    writer.write([(damaged, _loc(PACK_B, 50))])  # a backup stored it again
    index.refresh()
    assert index.get(damaged) == _loc(PACK_B, 50) and index.unhealed() == frozenset()
    fresh = Index(backend)  # files loaded in either order: still the good copy
    assert fresh.get(damaged) == _loc(PACK_B, 50) and len(fresh) == len(others) + 2


def test_a_malformed_damage_record_is_skipped():
    backend = MemBackend()
    blob = os.urandom(32)
    Index(backend).write([(blob, _loc(PACK_A))])
    backend.save(Handle(Kind.DAMAGE, "ee" * 32), [b"{not json"])
    assert blob in Index(backend)
    with pytest.raises(ValueError):
        decode_damage(b'{"damaged": [{"blob": 1}]}')


def _with_damage(backend: MemBackend, blob: bytes, pack: bytes) -> None:
    name, data = encode_damage([(blob, pack)])
    backend.save(Handle(Kind.DAMAGE, name), [data])


@pytest.mark.parametrize("lookups", [1, 40])  # answered by scanning, then by the dict
def test_the_good_copy_is_the_last_good_row(lookups):
    blob, pack_c = os.urandom(32), b"C" * 32
    fillers = [(os.urandom(32), _loc(PACK_B)) for _ in range(lookups)]
    backend = MemBackend()
    Index(backend).write([(blob, _loc(PACK_A)), (blob, _loc(PACK_B, 7)), (blob, _loc(pack_c, 5))] + fillers)
    _with_damage(backend, blob, PACK_A)
    index = Index(backend)
    for filler, _ in fillers:
        assert filler in index
    assert index.get(blob) == _loc(pack_c, 5)
    first_row = MemBackend()  # the only good copy is the file's first row
    Index(first_row).write([(blob, _loc(PACK_B, 7)), (blob, _loc(PACK_A))] + fillers)
    _with_damage(first_row, blob, PACK_A)
    index = Index(first_row)
    for filler, _ in fillers:
        assert filler in index
    assert index.get(blob) == _loc(PACK_B, 7)


def test_a_good_copy_in_a_later_file_is_found_at_its_own_row():
    blob = os.urandom(32)
    damaged_file = [(blob, _loc(PACK_A)), (blob, _loc(PACK_B, 70))]
    while True:  # the file holding the copies must load second, so that its rows do not start at 0
        fillers = [(os.urandom(32), _loc(PACK_B)) for _ in range(3)]
        if hashlib.sha256(encode_index(fillers)).hexdigest() < hashlib.sha256(encode_index(damaged_file)).hexdigest():
            break
    backend = MemBackend()
    Index(backend).write(fillers)
    Index(backend).write(damaged_file)
    _with_damage(backend, blob, PACK_A)
    assert Index(backend).get(blob) == _loc(PACK_B, 70)
