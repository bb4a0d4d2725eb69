"""The files cache's arithmetic: totals over any subset of files, whichever way they are computed, and a
save/load round trip that keeps them."""

from __future__ import annotations

import os
import random

from agent.snapshot.cache import STAT_KEY, UNTRUSTED, FilesCache


def _cache(tmp_path, count: int) -> FilesCache:
    rng = random.Random(count)
    cache = FilesCache(str(tmp_path / "job.files"))
    files = []
    for number in range(count):
        # untrusted records (racy files) count no size: they are never kept
        key = UNTRUSTED if number % 7 == 0 else STAT_KEY.pack(rng.randrange(1 << 40), 1, 2, number + 1)
        xattrs = ((("user.n", bytes([number % 3])),) if number % 3 else ())
        files.append((f"f{number}", key, os.urandom(16), os.urandom(32), os.urandom(16), b"\0" * 12, xattrs))
    cache.replace(files, set())
    return cache


def _brute(cache: FilesCache, numbers) -> tuple:
    size = sum(int.from_bytes(cache.key(n)[:8], "little", signed=True) for n in numbers)
    piece = sum(int.from_bytes(cache.piece(n), "little") for n in numbers)
    return size, piece


def test_totals_of_any_subset(tmp_path):
    cache = _cache(tmp_path, 300)
    rng = random.Random(1)
    everything = list(range(300))
    subsets = [everything, [], everything[:10], everything[5:], rng.sample(everything, 149),
               rng.sample(everything, 151), rng.sample(everything, 299)]
    for numbers in subsets:
        assert cache.totals(numbers) == _brute(cache, numbers)


def test_totals_survive_save_and_load_and_are_reset_by_replace(tmp_path):
    cache = _cache(tmp_path, 50)
    cache.save()
    loaded = FilesCache.load(cache.path)
    assert loaded.sums == _brute(cache, range(50))
    assert loaded.totals(range(3, 50)) == _brute(cache, range(3, 50))
    fresh = _cache(tmp_path, 20)
    loaded.replace([(name, fresh.key(n), fresh.digest(n), fresh.chunks(n), fresh.piece(n), fresh.owner(n),
                     fresh.xattrs(n))
                    for n, name in enumerate(sorted(fresh.index, key=fresh.index.__getitem__))], set())
    assert loaded.totals(range(20)) == _brute(fresh, range(20))


def _entries(cache: FilesCache) -> list:
    names = sorted(cache.index, key=cache.index.__getitem__)
    return [(name, cache.key(n), cache.digest(n), cache.chunks(n), cache.piece(n), cache.owner(n),
             cache.xattrs(n)) for n, name in enumerate(names)]


def test_patch_in_place_equals_a_rebuild_and_refuses_a_new_chunk_count(tmp_path):
    cache = _cache(tmp_path, 40)
    cache.totals(range(40))  # sums known before the patch: they are updated, not recomputed
    wanted = _entries(cache)
    updates = {}
    for number in (0, 17, 39):
        update = (STAT_KEY.pack(number, 5, 6, 7), os.urandom(16), os.urandom(32), os.urandom(16), b"\1" * 12,
                  (("user.new", b"v"),))
        updates[number] = update
        wanted[number] = (wanted[number][0], *update)
    assert cache.patch(updates)
    rebuilt = FilesCache(str(tmp_path / "other.files"))
    rebuilt.replace(wanted, set())
    # the same files (xattr sets may be numbered in another order)
    assert _entries(cache) == _entries(rebuilt) == wanted
    assert (cache.chunks_blob, list(cache.chunk_ends)) == (rebuilt.chunks_blob, list(rebuilt.chunk_ends))
    assert cache.sums == rebuilt.totals(range(40))
    before = _entries(cache)
    assert not cache.patch({3: (STAT_KEY.pack(1, 2, 3, 4), os.urandom(16), os.urandom(64), os.urandom(16),
                                b"\0" * 12, ())})
    assert _entries(cache) == before
    cache.save()
    assert _entries(FilesCache.load(cache.path)) == before  # xattrs too
