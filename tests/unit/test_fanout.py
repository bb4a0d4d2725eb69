"""The restore's writer processes (agent/restorer/fanout.py): real forks, real pipes, real signals."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import List, Optional, Tuple

import pytest

from agent.restorer import fanout


class _Told:
    """A Progress that keeps what it was told (from the relay's thread)."""

    def __init__(self) -> None:
        self.files = self.bytes = 0

    def expect(self, files: Optional[int], bytes: Optional[int]) -> None:
        pass

    def advance(self, files: int = 0, bytes: int = 0) -> None:
        self.files += files
        self.bytes += bytes


@pytest.fixture(autouse=True)
def no_writer_left():
    yield
    assert multiprocessing.active_children() == []


def test_split_cuts_contiguous_non_empty_parts_of_about_equal_weight():
    items = list(range(100))
    parts = fanout.split(items, 4, lambda item: 1.0)
    assert [list(part) for part in parts] == [items[0:25], items[25:50], items[50:75], items[75:100]]
    heavy = fanout.split(items, 2, lambda item: 99.0 if item == 0 else 1.0)  # the first item weighs half
    assert [len(part) for part in heavy] == [1, 99]
    assert [list(part) for part in fanout.split([1, 2], 4, lambda item: 1.0)] == [[1], [2]]
    assert fanout.split([], 3, lambda item: 1.0) == []


def test_writers_only_for_many_files_and_never_more_than_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert fanout.writers_for(fanout.FAN_OUT_FILES - 1) == 1
    assert fanout.writers_for(fanout.FAN_OUT_FILES) == min(fanout.MAX_WRITERS, cores)


def test_each_part_runs_in_a_process_of_its_own_and_its_result_comes_back_in_order():
    told = _Told()

    def work(part: int, progress, halt) -> Tuple[int, int]:
        for _ in range(part + 1):
            progress.advance(files=1, bytes=10)
        return part, os.getpid()

    done = fanout.in_processes(3, work, told)
    assert [part for part, _ in done] == [0, 1, 2]
    pids = [pid for _, pid in done]
    assert pids[0] == os.getpid() and len(set(pids)) == 3
    assert (told.files, told.bytes) == (6, 60)  # the writers' counts relayed, this process's own told directly


def test_a_part_that_raises_or_whose_process_dies_is_named_and_the_others_come_back():
    def work(part: int, progress, halt) -> str:
        if part == 1:
            raise OSError(28, "No space left on device")
        if part == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return f"part {part}"

    done = fanout.in_processes(4, work, None)
    assert done[0] == "part 0" and done[3] == "part 3"
    assert done[1] == fanout.PartFailed("OSError: [Errno 28] No space left on device")
    assert fanout.in_processes(2, lambda part, progress, halt: (_ for _ in ()).throw(KeyboardInterrupt) if part
                               else "part 0", None) == ["part 0", fanout.PartFailed("interrupted")]
    assert done[2] == fanout.PartFailed("its writer process ended (killed by signal 9)")


def test_an_interrupted_restore_interrupts_its_writers_which_clean_up_before_it_raises(tmp_path):
    """A writer told of the interrupt ends as the restore does (what it was writing removed); one that does
    not end in time is killed. Nothing is left running."""
    started = multiprocessing.get_context("fork").Queue()

    def work(part: int, progress, halt) -> None:
        if part == 0:
            writers = [started.get(timeout=10) for _ in range(3)]
            started.put(writers)
            raise KeyboardInterrupt
        being_written = tmp_path / f"part-{part}"
        being_written.write_text("half")
        if part == 3:  # deaf to the interrupt: killed after the grace time
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        started.put(os.getpid())
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            being_written.unlink()
            raise

    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fanout.in_processes(4, work, None)
    assert time.monotonic() - began < 30  # not waiting for the writers' minute
    writers: List[int] = started.get(timeout=5)
    for pid in writers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part-3"]  # the killed one's is left


def test_writers_die_with_a_restore_killed_by_sigkill(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, time
        from agent.restorer import fanout
        def work(part, progress, halt):
            with open({str(pids)!r}, "a") as handle:
                handle.write(f"{{os.getpid()}}\\n")
            time.sleep(120)
        fanout.in_processes(3, work, None)
    """)
    restore = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 3):
            time.sleep(0.05)
        written = [int(pid) for pid in pids.read_text().split()]
        writers = [pid for pid in written if pid != restore.pid]
        assert len(writers) == 2
    finally:
        restore.kill()
        restore.wait()
    deadline = time.monotonic() + 10
    alive = writers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    assert alive == []


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie whose parent died is reaped by init: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_part_that_halts_stops_the_others_wherever_they_run():
    def work(part: int, progress, halt) -> str:
        if part == 2:
            halt.set()
            return "halted the others"
        deadline = time.monotonic() + 30
        while not halt.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"part {part} saw the halt" if halt.is_set() else f"part {part} never saw it"

    assert fanout.in_processes(4, work, None) == ["part 0 saw the halt", "part 1 saw the halt",
                                                  "halted the others", "part 3 saw the halt"]


def test_a_part_whose_process_cannot_be_started_is_written_here(monkeypatch):
    """fork(2) failing (EAGAIN at a process limit, ENOMEM) cannot be had on demand: the start is refused."""
    def refused(self) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", refused)
    told = _Told()

    def work(part: int, progress, halt) -> Tuple[int, int]:
        progress.advance(files=1)
        return part, os.getpid()

    assert fanout.in_processes(3, work, told) == [(0, os.getpid()), (1, os.getpid()), (2, os.getpid())]
    assert told.files == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_writers_need_no_shared_memory_filesystem(tmp_path):
    """Shared state lives in anonymous shared memory: a read-only /dev/shm (a hardened host) changes nothing."""
    script = textwrap.dedent("""
        import os
        from agent.restorer import fanout
        print(fanout.in_processes(2, lambda part, progress, halt: part, None))
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro,size=4k tmpfs /dev/shm && exec "$@"',
                             "sh", sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "[0, 1]"), result.stderr
