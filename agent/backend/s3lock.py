"""The repository lock on object storage: lock objects, as restic's (`internal/restic/lock.go`), adapted
so that the nodes never need to delete anything.

Objects under `locks/` (a bucket policy may let append-only keys write there and nowhere delete):
    s-ID, x-ID       a shared (backup, restore, verify) or exclusive (prune) lock: JSON naming its holder
    s-ID.rN          the holder's refresh N, written every REFRESH_S while it holds (or waits for) it
    s-ID.end         written on release: the lock is over

A lock is live unless it has ended or is stale: its newest object is older than STALE_S by the server's
clock (a holder killed or cut off; restic's 30 minutes), or its holder is a process of this machine
(same boot) that no longer exists. Clocks of nodes are never compared: ages come from the server's
LastModified and Date.

Taking it: write our lock object, then list. A shared lock steps back (writes .end, waits, tries again
with a new id) while a live exclusive one exists, and after a step back looks before it writes again (so
waiting behind a prune writes one object and its end, not a pair a look); an exclusive one waits, keeping
its object so that new backups wait behind it (prune is not starved by a stream of backups), until no live
shared lock and no older live exclusive lock remain. Strong read-after-write listing (S3 since 2020, MinIO, Ceph) means
that of two lockers who write and then list, at least one sees the other.

Prune (the exclusive holder, which has delete permission) removes the objects of ended and stale locks
(`remove_dead_locks`); before it takes the lock it checks that its keys may delete at all.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple

from agent.backend.base import BackendError, Buffer, LockTimeout, _print_wait

REFRESH_S = 5 * 60.0
STALE_S = 30 * 60.0
_POLL_S = (0.5, 5.0)  # first and longest pause between two looks while waiting
# an interrupted command waits this long for its lock's end to be written: against a server that does not
# answer, the client's retries would hold the operator's Ctrl-C for minutes; the lock goes stale by itself
_INTERRUPTED_RELEASE_S = 10.0


class Listed(NamedTuple):
    """A listed object with its modification time (server clock, seconds since the epoch)."""

    key: str
    size: int
    modified: float


class ObjectStore(Protocol):
    """What the lock needs of the S3 backend (agent.backend.s3.S3Backend): whole keys, not handles."""

    location: str

    def key_under(self, relative: str) -> str: ...

    def put(self, key: str, pieces: Sequence[Buffer], what: str) -> Dict[str, Any]: ...

    def get(self, key: str, what: str, length: int = -1, offset: int = 0) -> bytes: ...

    def delete(self, key: str, what: str) -> None: ...

    def list_keys(self, prefix: str) -> Tuple[List[Listed], float]: ...


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@dataclass
class _LockState:
    """What a listing says of one lock id."""

    base: str
    exclusive: bool
    first: float = 0.0     # when its lock object was written (server clock)
    newest: float = 0.0    # its newest object (a refresh)
    ended: bool = False
    keys: List[str] = field(default_factory=list)


def _states(listed: List[Listed], prefix: str) -> Dict[str, _LockState]:
    states: Dict[str, _LockState] = {}
    for item in listed:
        name = item.key[len(prefix):]
        base, _, suffix = name.partition(".")
        if base[:2] not in ("s-", "x-"):
            continue
        state = states.setdefault(base, _LockState(base, base.startswith("x-")))
        state.keys.append(item.key)
        state.newest = max(state.newest, item.modified)
        if not suffix:
            state.first = item.modified
        elif suffix == "end":
            state.ended = True
    return states


class S3Lock:
    """The repository lock of an S3Backend (same contract as the local flock one)."""

    def __init__(self, backend: ObjectStore, exclusive: bool, purpose: str) -> None:
        self.backend, self.exclusive, self.purpose = backend, exclusive, purpose
        self._prefix = backend.key_under("locks/")
        self._base: Optional[str] = None
        self._held = False
        self._refresher: Optional[threading.Thread] = None
        self._stop_refresh = threading.Event()
        self._holders: Dict[str, dict] = {}  # lock id -> its document, read once

    # --- taking and letting go ----------------------------------------------------------------------

    def acquire(self, timeout: Optional[float] = None, on_wait: Callable[[str], None] = _print_wait,
                stop: Optional[threading.Event] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.exclusive:
            self._check_delete_permission()
        told = False
        stepped_back = False
        pause = _POLL_S[0]
        try:
            while True:
                # a backup writes, then looks (a round trip fewer than looking first); once it had to step
                # back it looks before it writes again
                blocker = self._blocker() if stepped_back and not self.exclusive else None
                if blocker is None:
                    if self._base is None:
                        self._write_own()
                    blocker = self._blocker()
                    if blocker is None:
                        self._held = True
                        return
                    if not self.exclusive:  # step back: a waiting prune must see no live shared lock of ours
                        self._end_own()
                        stepped_back = True
                if not told:
                    on_wait(f"waiting for the repository lock held by {self._who(blocker)}")
                    told = True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LockTimeout(f"the repository lock is held by {self._who(blocker)}")
                wait = pause * random.uniform(0.8, 1.2) if left is None else min(left, pause)
                if (stop or threading.Event()).wait(wait):
                    raise LockTimeout("stopped while waiting for the repository lock")
                pause = min(pause * 1.5, _POLL_S[1])
        except BaseException:
            self._end_own()
            raise

    def release(self, within: Optional[float] = None) -> None:
        """Write the lock's end (and, exclusive, remove its objects). `within`: wait at most that many
        seconds for the storage, then leave the lock to go stale by itself, named in a warning."""
        if not self._held:
            return
        self._held = False
        if within is None:
            self._end_own()
            return
        ending = threading.Thread(target=self._end_own, name="repository-lock-release", daemon=True)
        ending.start()
        ending.join(within)
        if ending.is_alive():
            print(f"backup-agent: warning: releasing the repository lock: no answer within {within:g} s; it goes "
                  f"stale by itself in {STALE_S / 60:g} minutes", file=sys.stderr)

    def __enter__(self) -> S3Lock:
        if not self._held:
            self.acquire()
        return self

    def __exit__(self, kind: Optional[type], *exc: object) -> None:
        # the operator stopped the command: its lock's end is written if the storage answers soon
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.release(within=_INTERRUPTED_RELEASE_S if interrupted else None)

    # --- our own lock object --------------------------------------------------------------------------

    def _write_own(self) -> None:
        base = ("x-" if self.exclusive else "s-") + secrets.token_hex(12)
        document = {"host": os.uname().nodename, "boot": _boot_id(), "pid": os.getpid(), "purpose": self.purpose,
                    "exclusive": self.exclusive, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.backend.put(self._prefix + base, [json.dumps(document).encode()], self._what(base))
        self._base = base
        self._stop_refresh = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, args=(base, self._stop_refresh),
                                           name="repository-lock-refresh", daemon=True)
        self._refresher.start()

    def _refresh(self, base: str, stop: threading.Event) -> None:
        number = 0
        while not stop.wait(REFRESH_S):
            number += 1
            try:
                self.backend.put(f"{self._prefix}{base}.r{number}", [b""], self._what(base))
            except BackendError as exc:  # the next refresh tries again; stale only after STALE_S
                print(f"backup-agent: warning: refreshing the repository lock: {exc}", file=sys.stderr)

    def _end_own(self) -> None:
        base, self._base = self._base, None
        if base is None:
            return
        self._stop_refresh.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        try:
            self.backend.put(f"{self._prefix}{base}.end", [b""], self._what(base))
        except BackendError as exc:  # it goes stale by itself
            print(f"backup-agent: warning: releasing the repository lock: {exc}", file=sys.stderr)
            return
        if self.exclusive:  # prune may delete: leave nothing behind
            listed, _ = self.backend.list_keys(self._prefix + base)
            for item in listed:
                try:
                    self.backend.delete(item.key, self._what(base))
                except BackendError:
                    break  # the next prune removes it

    def _check_delete_permission(self) -> None:
        """Prune deletes; keys that may not are refused before anything is changed."""
        probe = f"{self._prefix}probe-{secrets.token_hex(12)}"
        self.backend.put(probe, [b""], self._what("probe"))
        self.backend.delete(probe, self._what("probe"))

    # --- others' locks ----------------------------------------------------------------------------------

    def _blocker(self) -> Optional[str]:
        """A live lock that keeps us out, or None."""
        listed, now = self.backend.list_keys(self._prefix if self.exclusive else self._prefix + "x-")
        states = _states(listed, self._prefix)
        own = states.get(self._base or "")
        for state in sorted(states.values(), key=lambda each: (each.first, each.base)):
            if state.base == self._base or not self._live(state, now):
                continue
            if not self.exclusive or not state.exclusive:
                return state.base
            # two exclusive lockers: the older one goes first
            if own is None or (state.first, state.base) < (own.first, own.base):
                return state.base
        return None

    def _live(self, state: _LockState, now: float) -> bool:
        if state.ended or (now and now - state.newest > STALE_S):
            return False
        holder = self._holder(state.base)
        if holder.get("boot") and holder.get("boot") == _boot_id() and holder.get("host") == os.uname().nodename:
            return _alive(int(holder.get("pid") or 0))
        return True

    def _holder(self, base: str) -> dict:
        if base not in self._holders:
            try:
                document = json.loads(self.backend.get(self._prefix + base, self._what(base)))
                self._holders[base] = document if isinstance(document, dict) else {}
            except (BackendError, ValueError):
                self._holders[base] = {}
        return self._holders[base]

    def _who(self, base: str) -> str:
        holder = self._holder(base)
        if not holder:
            return "another process"
        return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('purpose')}, since {holder.get('time')})"

    def _what(self, base: str) -> str:
        return f"{self.backend.location}/locks/{base}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_locks(backend: ObjectStore) -> int:
    """Delete the objects of locks that ended or went stale, and probes left behind; returns how many
    locks were removed. Only under the exclusive lock (it needs delete permission anyway)."""
    prefix = backend.key_under("locks/")
    listed, now = backend.list_keys(prefix)
    checker = S3Lock(backend, True, "prune")
    removed = 0
    for state in _states(listed, prefix).values():
        if checker._live(state, now):
            continue
        for key in state.keys:
            backend.delete(key, f"{backend.location}/locks/{state.base}")
        removed += 1
    for item in listed:
        if item.key[len(prefix):].startswith("probe-"):  # one a refused prune left (deleting twice is harmless)
            backend.delete(item.key, f"{backend.location}/locks/probe")
    return removed
