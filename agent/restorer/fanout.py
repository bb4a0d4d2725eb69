"""Writer processes for a large restore. Creating 100k files is mostly the kernel's work, done on the
calling thread; the interpreter's lock keeps threads from overlapping it (two threads were slower than one,
README "Off-host repository"). A restore that writes many files forks writer processes once its
directories exist, each writing a contiguous part of the storage order with its own read-ahead (so the
parts read different packs); what a part did comes back pickled, its progress through shared counters
while it runs. A writer dies with its restore (PR_SET_PDEATHSIG): a killed restore does not go on writing.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

from agent.progress import Progress

# files to write below which a restore stays in one process: a fork and a pool cost ~20 ms, and the
# parts would be too short to overlap
FAN_OUT_FILES = 4000
MAX_WRITERS = 4
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_RELAY_EVERY = 0.2  # seconds between two reports of the writers' progress to the caller's Progress
_GRACE = 5.0  # seconds an interrupted writer has to remove the file it was writing before it is killed

Item = TypeVar("Item")


class Halt:
    """A flag every part of a restore sees at once, whichever process it runs in: set by a part that must
    stop (a full disk, the storage gone), so that the others stop too instead of meeting it one by one."""

    def __init__(self, cell: Any) -> None:
        self._cell = cell  # a one-element view of memory shared by the processes

    def set(self) -> None:
        self._cell[0] = 1

    def is_set(self) -> bool:
        return bool(self._cell[0])


Work = Callable[[int, Optional[Progress], Halt], Any]

# what the forked writers run and count into: set just before they are forked, as verify's workers do
_WORK: Optional[Work] = None
_SHARED: Any = None  # the shared counters: [halt, files and bytes of part 0, of part 1, ...]
_PARENT = 0  # the restore's pid


def writers_for(files: int) -> int:
    """How many processes should write a restore of `files` files: 1 below FAN_OUT_FILES, else one per
    core this process may use, at most MAX_WRITERS."""
    if files < FAN_OUT_FILES:
        return 1
    return max(1, min(MAX_WRITERS, len(os.sched_getaffinity(0))))


def split(items: Sequence[Item], parts: int, weight: Callable[[Item], float]) -> List[Sequence[Item]]:
    """`items` cut into at most `parts` contiguous, non-empty slices of about equal total `weight`."""
    weights = list(itertools.accumulate(weight(item) for item in items))
    total = weights[-1] if weights else 0.0
    slices: List[Sequence[Item]] = []
    start = 0
    for part in range(1, parts + 1):
        end = len(items) if part == parts else next(
            (i + 1 for i in range(start, len(items)) if weights[i] >= total * part / parts), len(items))
        if end > start:
            slices.append(items[start:end])
        start = end
    return slices


def in_processes(parts: int, work: Work, progress: Optional[Progress]) -> List[Union[Any, PartFailed]]:
    """`work(0, progress, halt)` in this process and `work(k, ...)` for k in 1..parts-1 in forked processes,
    all at once (a part whose process cannot be started runs here after part 0); returns each part's result
    (pickled back from its process), or PartFailed when the part raised or its process died. `halt` is
    shared by all parts. `work` must not use threads this process started before (a forked process has none
    of them) and the caller must not hold locks the parts need. An exception of this process's own part
    (KeyboardInterrupt) is raised once the writer processes have ended."""
    global _WORK, _SHARED, _PARENT
    context = multiprocessing.get_context("fork")
    # anonymous shared memory, inherited by the forked writers: no /dev/shm needed
    memory = mmap.mmap(-1, 8 * (1 + 2 * parts))
    shared = memoryview(memory).cast("q")
    halt = Halt(shared[0:1])
    for stream in (sys.stdout, sys.stderr):  # a forked process flushes its copy of their buffers at exit
        stream.flush()
    writers: List[Tuple[int, Any, Any]] = []  # (part, process, the reading end of its pipe)
    here: List[int] = []  # parts whose process could not be started
    _WORK, _SHARED, _PARENT = work, shared, os.getpid()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(shared, parts, progress, stop), name="restore-progress",
                             daemon=True)
    interrupted = True
    try:
        with warnings.catch_warnings():
            # forked with threads alive: the parts touch none of their locks (see the S3 backend's at-fork reset)
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
            for part in range(1, parts):
                try:
                    reading, writing = context.Pipe(duplex=False)
                    process = context.Process(target=_writer, args=(part, writing),
                                              name=f"restore-writer-{part}", daemon=True)
                    try:
                        process.start()
                    finally:
                        writing.close()
                except OSError:  # no process to be had (EAGAIN, ENOMEM): this one writes that part too
                    here.append(part)
                    continue
                writers.append((part, process, reading))
        if progress is not None:
            relay.start()
        done = {0: _here(work, 0, progress, halt)}
        for part in here:
            done[part] = _here(work, part, progress, halt)
        for part, process, reading in writers:
            done[part] = _outcome(process, reading)
        interrupted = False
        return [done[part] for part in range(parts)]
    finally:
        _WORK, _SHARED = None, None
        # this process's own part was interrupted (KeyboardInterrupt): theirs end with it, each first told as
        # it was (its file being written is removed, not left cut short), then killed if it does not end
        running = [process for _, process, _ in writers if interrupted and process.exitcode is None]
        for process in running:
            _interrupt(process.pid)
        for _, process, reading in writers:
            process.join(_GRACE if process in running else None)
            if process.exitcode is None:
                process.kill()
                process.join()
            reading.close()
        stop.set()
        if relay.is_alive():
            relay.join()


def _here(work: Work, part: int, progress: Optional[Progress], halt: Halt) -> Union[Any, PartFailed]:
    try:
        return work(part, progress, halt)
    except Exception as exc:
        return PartFailed(_why(exc))


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class PartFailed(NamedTuple):
    """A part that did not end normally: what ended it (its exception, or the signal its process died of)."""

    why: str


def _outcome(process: Any, reading: Any) -> Union[Any, PartFailed]:
    try:
        kind, value = reading.recv()
    except EOFError:  # it died without a word
        process.join()
        code = process.exitcode
        died = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return PartFailed(f"its writer process ended ({died})")
    return value if kind == "done" else PartFailed(value)


def _interrupt(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:  # it ended meanwhile
        pass


def _writer(part: int, writing: Any) -> None:
    """A writer process: it is killed when the restore that forked it ends, writes its part and sends back
    ("done", what the part returned) or ("failed", why). Interrupted (SIGINT, as the restore is), it ends
    its part as the restore would (the file being written removed) and says so; interrupted again while
    answering, it ends without a word (never a traceback: the restore names the part as ended)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != _PARENT:  # the restore died before the line above
            os._exit(1)
        assert _WORK is not None and _SHARED is not None
        try:
            answer: Tuple[str, Any] = ("done", _WORK(part, _Counted(_SHARED, part), Halt(_SHARED[0:1])))
        except BaseException as exc:  # KeyboardInterrupt too: the parent is told why
            answer = ("failed", _why(exc))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the answer goes out whole
        writing.send(answer)
        writing.close()
    except BaseException:
        os._exit(1)


class _Counted:
    """The Progress of a writer process: its counts go into its slots of the shared counters."""

    def __init__(self, shared: Any, part: int) -> None:
        self._counters, self._at = shared, 1 + 2 * part

    def expect(self, files: Optional[int], bytes: Optional[int]) -> None:
        pass

    def advance(self, files: int = 0, bytes: int = 0) -> None:
        self._counters[self._at] += files  # one writer per slot: no lock needed
        self._counters[self._at + 1] += bytes


def _relay(shared: Any, parts: int, progress: Progress, stop: threading.Event) -> None:
    """Pass the writer processes' counts (parts 1 on) on to `progress` until `stop`, then the last of them."""
    told = [0] * (1 + 2 * parts)
    while True:
        stopping = stop.wait(_RELAY_EVERY)
        now = list(shared)
        files = sum(now[i] - told[i] for i in range(3, 1 + 2 * parts, 2))
        size = sum(now[i] - told[i] for i in range(4, 1 + 2 * parts, 2))
        if files or size:
            progress.advance(files=files, bytes=size)
        told = now
        if stopping:
            return
