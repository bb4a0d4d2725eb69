"""What an object store's reads of pack data keep and fetch ahead: a restore reads a pack's blobs one
after another, and one GET of a run of them costs a round trip where a GET per blob costs thousands.
RecentPacks keeps a few whole packs for reads outside any plan; ReadAhead fetches, ahead of the reads,
the parts of packs a restore has said it will read, in that order.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from agent.backend.base import Span


class RecentPacks:
    """Whole packs kept for a moment: a restore reads a pack's blobs one after another, and one GET of the
    pack (16 MiB at most) costs a round trip where a GET per blob costs thousands. Under a read-ahead
    (`ahead`) the packs it names are fetched whole ahead of their reads and every other read is a range.
    Outside one, a pack is fetched whole from its second read on (a backup reading one file list from a
    pack fetches only that range); at most KEPT packs are held, so memory stays bounded."""

    KEPT = 4
    SEEN = 256

    def __init__(self) -> None:
        self._whole: OrderedDict[str, bytes] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._ahead: Optional[ReadAhead] = None

    @contextlib.contextmanager
    def ahead(self, spans: Sequence[Span], fetch: Callable[[Span], bytes]) -> Iterator[None]:
        """Fetch the parts `spans` of packs, in this order (a pack may come again after others), a few at
        once, ahead of the reads that need them (see ReadAhead); the fetches still running when the context
        ends are waited for, the rest dropped. Meanwhile every other read is a range of its own: with no
        spans, a caller says it reads a few bytes of each pack (a pack's blob list)."""
        ahead = ReadAhead(spans, fetch)
        with self._lock:
            outer, self._ahead = self._ahead, ahead
        try:
            yield
        finally:
            with self._lock:
                self._ahead = outer
            ahead.close()

    def read(self, name: str, length: int, offset: int, whole: Callable[[], bytes],
             ranged: Callable[[], bytes]) -> bytes:
        with self._lock:
            ahead = self._ahead
        # the read-ahead's answer first: it holds the part of the pack the run being read needs
        if ahead is not None:
            found = ahead.take(name, length, offset)
            if found is not None:
                return found
        with self._lock:
            data = self._whole.get(name)
            if data is not None:
                self._whole.move_to_end(name)
            again = name in self._seen
            self._seen[name] = None
            self._seen.move_to_end(name)
            while len(self._seen) > self.SEEN:
                self._seen.popitem(last=False)
        # under a read-ahead the caller named the packs it reads blob after blob: any other is read once
        if data is None and (not again or ahead is not None):
            return ranged()
        if data is None:
            data = whole()
            self._keep(name, data)
        return data[offset:] if length < 0 else data[offset:offset + length]

    def _keep(self, name: str, data: bytes) -> None:
        with self._lock:
            self._whole[name] = data
            while len(self._whole) > self.KEPT:
                self._whole.popitem(last=False)

    def forget(self, name: str) -> None:
        with self._lock:
            self._whole.pop(name, None)
            self._seen.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._whole.clear()
            self._seen.clear()


class ReadAhead:
    """Parts of packs fetched in the order a restore will read them, by WORKERS threads.

    The plan is a sequence of runs (one pack read for one blob after another, the span of bytes they
    cover; the same pack may come again after others: a file whose blobs lie in several packs, the same
    jar in six services). Which fetch serves which run is decided up front with Belady's rule (L. A.
    Belady, "A study of replacement algorithms for a virtual-storage computer", IBM Systems Journal 5(2),
    1966): what was fetched of a pack is kept for its later runs while at most KEPT packs are kept, the one
    needed again last giving way first; the plan being known, this fetches as few packs as KEPT allows,
    each fetch covering the spans of the runs it serves. Fetches start in plan order, at most WINDOW ahead
    of the newest one read, so memory stays bounded: KEPT + WINDOW + 1 parts of packs of 16 MiB at most.

    Reads follow the plan, some of its reads left out (a hard link's second name, the rest of a damaged
    file): a read is served by the first run of its pack at or after the current one, and the runs passed
    over are dropped (their fetches too, unless a later run needs them). A read outside what its fetch
    covers is left to the caller (None)."""

    KEPT = 4
    WINDOW = 4
    WORKERS = 4

    def __init__(self, spans: Sequence[Span], fetch: Callable[[Span], bytes]) -> None:
        runs: List[Span] = []
        for span in spans:
            if runs and runs[-1].handle == span.handle:
                runs[-1] = joined(runs[-1], span)
            else:
                runs.append(span)
        order = [run.handle.name for run in runs]
        self._runs: Dict[str, List[int]] = {}  # pack -> its runs' positions in the plan, ascending
        for at, name in enumerate(order):
            self._runs.setdefault(name, []).append(at)
        self._serves, packs, self._last = belady(order, self.KEPT)
        self._fetches: List[Optional[Span]] = [None] * len(packs)  # what each fetch gets: its runs' spans
        for at, number in enumerate(self._serves):
            covered = self._fetches[number]
            self._fetches[number] = runs[at] if covered is None else joined(covered, runs[at])
        self._current = 0  # the run being read
        self._newest = 0  # the newest fetch a run read so far needed: WINDOW fetches after it may run
        self._next = 0  # the next fetch to start
        self._fetch = fetch
        self._pending: Dict[int, Future] = {}  # fetch number -> its future, until its last run is passed
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="s3-read-ahead") if order else None
        self._fill()

    def _fill(self) -> None:
        with self._lock:
            while self._pool is not None and self._next < len(self._fetches) and \
                    self._next <= self._newest + self.WINDOW:
                self._start(self._next)
                self._next += 1

    def _start(self, number: int) -> None:
        assert self._pool is not None
        self._pending[number] = self._pool.submit(self._fetch, self._fetches[number])

    def take(self, name: str, length: int, offset: int) -> Optional[bytes]:
        """The bytes [offset, offset + length) of the pack (length -1: to its end) for a read of it, waiting
        for its fetch; None if no run of it is left in the plan or its fetch does not cover them. Raises
        what the fetch raised."""
        with self._lock:
            runs = self._runs.get(name, ())
            found = bisect.bisect_left(runs, self._current)
            if self._pool is None or found == len(runs):
                return None
            at = runs[found]
            wanted = self._serves[at]
            if at != self._current:
                self._current = at
                for number in [number for number in self._pending if self._last[number] < at]:
                    self._pending.pop(number).cancel()  # all its runs passed over
            self._newest = max(self._newest, wanted)
            if wanted >= self._next:  # a jump past the window: fetch from here on
                self._next = wanted
            elif wanted not in self._pending:  # passed over by a jump, needed again now
                self._start(wanted)
        self._fill()
        with self._lock:
            future = self._pending.get(wanted)
        span = self._fetches[wanted]
        assert span is not None
        if future is None or offset < span.offset or (span.end >= 0 and (length < 0 or offset + length > span.end)):
            return None  # closed meanwhile, or outside what was planned
        data = future.result()
        start = offset - span.offset
        return data[start:] if length < 0 else data[start:start + length]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def joined(one: Span, other: Span) -> Span:
    """The span of one object covering both (end -1: to its end)."""
    end = -1 if one.end < 0 or other.end < 0 else max(one.end, other.end)
    return Span(one.handle, min(one.offset, other.offset), end)


def belady(order: Sequence[str], kept: int) -> Tuple[List[int], List[str], List[int]]:
    """For runs of reads of the packs `order`, with at most `kept` packs kept between runs: the fetch
    serving each run, each fetch's pack and the last run it serves. Fetches are numbered in the order of
    the runs that need them first."""
    never = len(order)
    upcoming = [never] * len(order)  # the next run of the same pack
    seen: Dict[str, int] = {}
    for at in range(len(order) - 1, -1, -1):
        upcoming[at] = seen.get(order[at], never)
        seen[order[at]] = at
    held: Dict[str, Tuple[int, int]] = {}  # pack -> (its fetch, its next run)
    serves: List[int] = []
    packs: List[str] = []
    last: List[int] = []
    for at, name in enumerate(order):
        if name in held:
            number = held.pop(name)[0]
        else:
            number = len(packs)
            packs.append(name)
            last.append(at)
        serves.append(number)
        last[number] = at
        if upcoming[at] < never:
            held[name] = (number, upcoming[at])
            if len(held) > kept:  # the one needed again last gives way (this one, maybe)
                del held[max(held, key=lambda pack: held[pack][1])]
    return serves, packs, last
