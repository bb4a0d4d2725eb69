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

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        name = os.path.basename(self.argv[0]) if self.argv else "command"
        if self.timed_out:
            status = "timed out and was killed"
        elif self.returncode is not None and self.returncode < 0:
            status = f"was killed by signal {signal.Signals(-self.returncode).name}"
        else:
            status = f"exited with status {self.returncode}"
        tail = self.output.strip()
        return f"{name} {status}" + (f": {tail[-2000:]}" if tail else "")


class _Tail(threading.Thread):
    """Drains a pipe (so the child never blocks on it) and keeps its last bytes."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="subprocess-output", daemon=True)
        self.pipe = pipe
        self.data = bytearray()

    def run(self) -> None:
        read = getattr(self.pipe, "read1", self.pipe.read)
        for block in iter(lambda: read(65536), b""):
            self.data += block
            if len(self.data) > 2 * _KEEP:
                del self.data[:-_KEEP]

    def text(self, secrets: Iterable[str]) -> str:
        return mask(bytes(self.data[-_KEEP:]).decode("utf-8", "replace"), secrets)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the tool and whatever it started
    except OSError:
        proc.kill()


def run_hook(argv: Sequence[str], timeout: float, secrets: Iterable[str] = (),
             stop: Optional[threading.Event] = None) -> Finished:
    """Run a before/after command to completion (or its timeout), output kept for the report."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return Finished(tuple(argv), 127, f"cannot start: {exc.strerror}")
    tail = _Tail(proc.stdout)  # type: ignore[arg-type]
    tail.start()
    timed_out = _wait(proc, timeout, stop)
    tail.join(5)
    return Finished(tuple(argv), None if timed_out else proc.returncode, tail.text(secrets), timed_out)


def _wait(proc: subprocess.Popen, timeout: float, stop: Optional[threading.Event]) -> bool:
    """Wait for `proc`; kill it on timeout or stop. Returns whether it had to be killed."""
    deadline = time.monotonic() + timeout
    event = stop or threading.Event()
    while proc.poll() is None:
        if time.monotonic() > deadline or event.is_set():
            _kill(proc)
            proc.wait()
            return True
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
    return False


class StreamingCommand:
    """A command whose stdout is read by the caller while it runs (a database dump).

    Use as a context manager; read `stdout`; then `finish()` gives how it ended. Its stdout is never
    written to disk by us, so memory stays bounded by what the caller buffers.
    """

    def __init__(self, argv: Sequence[str], timeout: float, secrets: Iterable[str] = (),
                 stop: Optional[threading.Event] = None, stdin: Optional[int] = None) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        self.secrets = list(secrets)
        self.stop = stop
        self._timer: Optional[threading.Timer] = None
        self._timed_out = False
        self.proc = subprocess.Popen(list(argv), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        self._stderr = _Tail(self.proc.stderr)  # type: ignore[arg-type]
        self._stderr.start()
        self._watch = threading.Thread(target=self._enforce, name="subprocess-deadline", daemon=True)
        self._done = threading.Event()
        self._finished: Optional[Finished] = None
        self._watch.start()

    def _enforce(self) -> None:
        deadline = time.monotonic() + self.timeout
        stop = self.stop or threading.Event()
        while not self._done.wait(0.1):
            if time.monotonic() > deadline or stop.is_set():
                self._timed_out = True
                _kill(self.proc)
                return

    def finish(self) -> Finished:
        if self._finished is None:
            self.proc.wait()
            self._done.set()
            self._watch.join()
            self._stderr.join(5)
            self._finished = Finished(self.argv, None if self._timed_out else self.proc.returncode,
                                      self._stderr.text(self.secrets), self._timed_out)
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
    """Run a command with `chunks` written to its stdin (loading a dump into a database)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    tail = _Tail(proc.stdout)  # type: ignore[arg-type]
    tail.start()
    deadline = time.monotonic() + timeout
    broken = False
    try:
        for chunk in chunks:
            if time.monotonic() > deadline:
                break
            proc.stdin.write(chunk)  # type: ignore[union-attr]
    except BrokenPipeError:
        broken = True  # the client gave up; its output says why
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
    timed_out = _wait(proc, max(deadline - time.monotonic(), 1.0), None)
    tail.join(5)
    code = None if timed_out else proc.returncode
    if broken and code == 0:
        code = 1
    return Finished(tuple(argv), code, tail.text(secrets), timed_out)


def which(names: List[str]) -> Optional[str]:
    import shutil

    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None
