"""The one place that starts subprocesses: hooks (before/after), dump tools whose stdout is streamed into
the repository, and clients fed from the repository. No shell is ever involved; every command has a
timeout; output kept for reports is bounded and passed through `mask` so that secrets never reach logs,
reports or exception text.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Iterable, List, Optional, Sequence

_KEEP = 16 * 1024  # bytes of stderr/output kept for messages


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Finished:
    argv: tuple
    returncode: Optional[int]   # None: killed after its timeout or by a stop request
    output: str                 # stderr (and stdout for hooks), tail only, masked
    timed_out: bool = False
    stopped: bool = False       # killed because the agent was stopping

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.stopped

    def describe(self) -> str:
        name = os.path.basename(self.argv[0]) if self.argv else "command"
        if self.timed_out:
            status = "timed out and was killed"
        elif self.stopped:
            status = "was killed: the agent is stopping"
        elif self.returncode is not None and self.returncode < 0:
            status = f"was killed by signal {signal.Signals(-self.returncode).name}"
        else:
            status = f"exited with status {self.returncode}"
        tail = self.output.strip()
        return f"{name} {status}" + (f": {tail[-2000:]}" if tail else "")


class _Tail(threading.Thread):
    """Drains a pipe (so the child never blocks on it) and keeps its last bytes; closes the pipe at its
    end (no one else reads it, so no error path can leave it open)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="subprocess-output", daemon=True)
        self.pipe = pipe
        self.data = bytearray()

    def run(self) -> None:
        read = getattr(self.pipe, "read1", self.pipe.read)
        try:
            for block in iter(lambda: read(65536), b""):
                self.data += block
                if len(self.data) > 2 * _KEEP:
                    del self.data[:-_KEEP]
        finally:
            self.pipe.close()

    def text(self, secrets: Iterable[str]) -> str:
        return mask(bytes(self.data[-_KEEP:]).decode("utf-8", "backslashreplace"), secrets)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and whatever it started
    except OSError:
        proc.kill()


class _Watchdog(threading.Thread):
    """Kills a child's process group at its deadline or when `stop` is set, whatever the caller is
    blocked on meanwhile (a read of its stdout, a write to its full stdin). `finish()` after the child
    exited; then `timed_out`/`stopped` say whether the watchdog killed it."""

    def __init__(self, proc: subprocess.Popen, timeout: float, stop: Optional[threading.Event]) -> None:
        super().__init__(name="subprocess-deadline", daemon=True)
        self.proc = proc
        self.deadline = time.monotonic() + timeout
        self.stop = stop or threading.Event()
        self.timed_out = False
        self.stopped = False
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.wait(min(0.1, max(self.deadline - time.monotonic(), 0.0))):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                self.stopped = self.stop.is_set()
                self.timed_out = not self.stopped
                _kill(self.proc)
                return

    def finish(self) -> None:
        self._done.set()
        self.join()


def _start(argv: Sequence[str], stdin: Optional[int], stderr: int) -> subprocess.Popen:
    # a session (and process group) of its own: a kill reaches whatever the tool started
    return subprocess.Popen(list(argv), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)


def run_hook(argv: Sequence[str], timeout: float, secrets: Iterable[str] = (),
             stop: Optional[threading.Event] = None) -> Finished:
    """Run a before/after command to completion (or its timeout), output kept for the report."""
    try:
        proc = _start(argv, None, subprocess.STDOUT)
    except OSError as exc:
        return Finished(tuple(argv), 127, f"cannot start: {exc.strerror}")
    tail = _Tail(proc.stdout)  # type: ignore[arg-type]
    tail.start()
    watchdog = _Watchdog(proc, timeout, stop)
    proc.wait()
    watchdog.finish()
    tail.join(5)
    return _finished(argv, proc, watchdog, tail.text(secrets))


def _finished(argv: Sequence[str], proc: subprocess.Popen, watchdog: _Watchdog, output: str,
              refused_input: bool = False) -> Finished:
    killed = watchdog.timed_out or watchdog.stopped
    code = None if killed else proc.returncode
    if refused_input and code == 0:
        code = 1  # it exited without reading all it was given: not a complete load
    return Finished(tuple(argv), code, output, watchdog.timed_out, watchdog.stopped)


class StreamingCommand:
    """A command whose stdout is read by the caller while it runs (a database dump).

    Use as a context manager; read `stdout`; then `finish()` gives how it ended. Its stdout is never
    written to disk by us, so memory stays bounded by what the caller buffers. Raises OSError if the
    command cannot be started.
    """

    def __init__(self, argv: Sequence[str], timeout: float, secrets: Iterable[str] = (),
                 stop: Optional[threading.Event] = None, stdin: Optional[int] = None) -> None:
        self.argv = tuple(argv)
        self.secrets = list(secrets)
        self.proc = _start(argv, stdin, subprocess.PIPE)
        self.stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        self._stderr = _Tail(self.proc.stderr)  # type: ignore[arg-type]
        self._stderr.start()
        self._watchdog = _Watchdog(self.proc, timeout, stop)
        self._finished: Optional[Finished] = None

    def finish(self) -> Finished:
        if self._finished is None:
            self.proc.wait()
            self._watchdog.finish()
            self._stderr.join(5)
            self._finished = _finished(self.argv, self.proc, self._watchdog, self._stderr.text(self.secrets))
        return self._finished

    def abort(self) -> None:
        if self.proc.poll() is None:
            _kill(self.proc)

    def __enter__(self) -> StreamingCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()
        self.finish()
        self.stdout.close()


def feed_command(argv: Sequence[str], chunks: Iterable[bytes], timeout: float,
                 secrets: Iterable[str] = ()) -> Finished:
    """Run a command with `chunks` written to its stdin (loading a dump into a database). A client that
    stops reading before the end fails; so does one that outlives `timeout`, even while a write to it
    is blocked. If `chunks` raises (a damaged object in the repository), the client is killed before it
    can act on a cut-off input, and the exception propagates."""
    proc = _start(argv, subprocess.PIPE, subprocess.STDOUT)
    tail = _Tail(proc.stdout)  # type: ignore[arg-type]
    tail.start()
    watchdog = _Watchdog(proc, timeout, None)
    refused = False
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)  # type: ignore[union-attr]
    except BrokenPipeError:
        refused = True  # the client gave up (or was killed at its deadline); its output says why
    except BaseException:
        _kill(proc)
        raise
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        proc.wait()
        watchdog.finish()
        tail.join(5)
    return _finished(argv, proc, watchdog, tail.text(secrets), refused)


def which(names: List[str]) -> Optional[str]:
    import shutil

    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None
