"""Snapshot documents and the repository's config: the small JSON objects of a repository.

A snapshot document names what one run stored (job, time, the blobs of its file list); it is saved last,
named by the SHA-256 of its bytes. A document that cannot be read (empty or cut short by a power loss on a
filesystem without data journaling, or one the storage does not serve: an object store's error after the
client's retries) is reported by name as unreadable and left out; every other snapshot stays usable.
`JOB:latest` is chosen so that a clock that was wrong once cannot pin it (see `latest`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Tuple

from agent.backend.base import CONFIG_NAME, Backend, BackendError, Handle, Kind, NotFound
from agent.crypt.settings import ENCRYPTED_FORMAT
from agent.store.chunker import STREAM_CHUNKER, ChunkerParams
from agent.text import in_words

FORMAT_VERSION = 1
# A snapshot time further ahead of this host's clock than this was made by a clock that was wrong: it is
# not taken for JOB:latest (otherwise it would stay latest until real time caught up, years perhaps).
FUTURE_MARGIN_S = 15 * 60


class RepositoryError(Exception):
    """Something about the repository is missing or unusable; the message names the object."""


@dataclass(frozen=True)
class Snapshot:
    """A manifest: what one run stored. `tree` lists the blobs of its entry stream (see snapshot/tree.py)."""

    job: str
    type: str
    host: str
    time: str
    trigger: str
    tree: Tuple[str, ...]
    files: int
    bytes: int
    fingerprint: str
    source: Tuple[str, ...] = ()
    partial: bool = False
    # a change-triggered snapshot: {"added", "removed", "changed"} entries since the job's previous one
    changes: Optional[Dict[str, int]] = None
    id: str = field(default="", compare=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("id")
        if self.changes is None:
            data.pop("changes")  # documents without it keep the bytes (and so the ids) they always had
        data["tree"] = list(self.tree)
        data["source"] = list(self.source)
        return data

    @classmethod
    def from_json(cls, snapshot_id: str, data: dict) -> Snapshot:
        return cls(job=data["job"], type=data["type"], host=data["host"], time=data["time"],
                   trigger=data["trigger"], tree=tuple(data["tree"]), files=int(data["files"]),
                   bytes=int(data["bytes"]), fingerprint=data["fingerprint"],
                   source=tuple(data.get("source", ())), partial=bool(data.get("partial", False)),
                   changes=data.get("changes"), id=snapshot_id)


class SnapshotUnreadable(RepositoryError):
    """A listed snapshot document that cannot be read: damaged, or (`unserved`) not given by the storage
    (an object store's error after the client's retries, a local read error): then what it holds is
    unknown, not known to be damaged. The message names the document by its storage name."""

    def __init__(self, message: str, unserved: bool = False) -> None:
        super().__init__(message)
        self.unserved = unserved


@dataclass(frozen=True)
class DamagedSnapshot:
    """A snapshot document that cannot be read: its id, storage name and why. `unserved`: the storage did
    not give its bytes (see SnapshotUnreadable), so it may be any job's and may still be needed: nothing
    may be deleted on a view of the repository without it (prune refuses)."""

    id: str
    name: str
    reason: str
    unserved: bool = False


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class SnapshotStore:
    """The snapshot documents of one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def save(self, snapshot: Snapshot) -> Snapshot:
        data = json.dumps(snapshot.to_json(), sort_keys=True, indent=1).encode()
        snapshot_id = hashlib.sha256(data).hexdigest()
        self.backend.save(Handle(Kind.SNAPSHOT, snapshot_id), [data])
        return Snapshot.from_json(snapshot_id, snapshot.to_json())

    def exists(self, snapshot_id: str) -> bool:
        """Whether the snapshot is there and readable. The backend is asked, never only a local cache
        (agent.backend.cache): a copy kept there outlives a prune that deleted the snapshot, and a files
        cache trusted on its word would reuse blobs that prune deleted with it."""
        try:
            self.backend.stat(Handle(Kind.SNAPSHOT, snapshot_id))
            self.load(snapshot_id)
            return True
        except (RepositoryError, BackendError):
            return False

    def load(self, snapshot_id: str) -> Snapshot:
        handle = Handle(Kind.SNAPSHOT, snapshot_id)
        try:
            data = self.backend.load(handle)
        except NotFound:
            raise RepositoryError(f"no snapshot {snapshot_id!r}") from None
        except ValueError as exc:  # a sealed document that does not authenticate (agent.crypt)
            raise SnapshotUnreadable(f"snapshot {snapshot_id} is damaged: {exc}") from None
        except (BackendError, OSError) as exc:  # not served: an HTTP 500 or a dropped connection, EIO
            raise SnapshotUnreadable(f"snapshot {snapshot_id} cannot be read: {in_words(exc)}", unserved=True) \
                from None
        try:
            snapshot = Snapshot.from_json(snapshot_id, json.loads(data))
            _epoch(snapshot.time)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = "empty" if not data else f"unreadable: {in_words(exc)}"
            raise SnapshotUnreadable(f"snapshot {snapshot_id} is damaged: "
                                     f"{self.backend.describe(handle)} is {reason}") from None
        # a document is named by the SHA-256 of its content (save): a changed byte that leaves it readable
        # (a digit of its size, a letter of a blob id) is damage too
        if hashlib.sha256(data).hexdigest() != snapshot_id:
            raise SnapshotUnreadable(f"snapshot {snapshot_id} is damaged: {self.backend.describe(handle)}: "
                                     "content does not match its name")
        return snapshot

    def list(self, job: Optional[str], host: Optional[str] = None) -> Tuple[List[Snapshot], List[DamagedSnapshot]]:
        """(readable snapshots of `job` (None: all) made by `host` (None: any) oldest first, damaged
        documents). Several hosts may share a repository and name their jobs alike."""
        good, damaged = [], []
        for info in self.backend.list(Kind.SNAPSHOT):
            try:
                snapshot = self.load(info.name)
            except RepositoryError as exc:
                damaged.append(DamagedSnapshot(info.name, self.backend.describe(Handle(Kind.SNAPSHOT, info.name)),
                                               str(exc), getattr(exc, "unserved", False)))
                continue
            if (job is None or snapshot.job == job) and (host is None or snapshot.host == host):
                good.append(snapshot)
        good.sort(key=lambda snap: (snap.time, snap.id))
        return good, damaged

    def delete(self, snapshot_id: str) -> None:
        self.backend.remove(Handle(Kind.SNAPSHOT, snapshot_id))

    def history(self, job: str, host: Optional[str] = None) -> List[Snapshot]:
        """The job's snapshots (made by `host`; None: any), oldest first; those dated more than
        FUTURE_MARGIN_S ahead of this host's clock first of all. A snapshot made while the clock was months
        ahead thus stops being the last (`latest`) as soon as one is made with the right time."""
        return _clock_order(self.list(job, host)[0])

    def histories(self, host: Optional[str]) -> Tuple[Dict[str, List[Snapshot]], List[DamagedSnapshot]]:
        """({job: its `history`} for the snapshots made by `host` (None: any), damaged documents), from one
        listing: a command that needs every job's history reads each document once."""
        good, damaged = self.list(None, host)
        by_job: Dict[str, List[Snapshot]] = {}
        for snap in good:
            by_job.setdefault(snap.job, []).append(snap)
        return {job: _clock_order(snaps) for job, snaps in by_job.items()}, damaged

    def latest(self, job: str) -> Snapshot:
        """The last of `history`; raises RepositoryError if the job has no snapshot."""
        found = self.history(job)
        if not found:
            raise RepositoryError(f"no snapshot of job {job!r}")
        return found[-1]

    def find(self, ref: str) -> Snapshot:
        """An id, a unique id prefix, or JOB:latest."""
        if ref.endswith(":latest"):
            return self.latest(ref[: -len(":latest")])
        matches = [info.name for info in self.backend.list(Kind.SNAPSHOT) if ref and info.name.startswith(ref)]
        if not matches:
            raise RepositoryError(f"no snapshot {ref!r}")
        if len(matches) > 1:
            raise RepositoryError(f"snapshot prefix {ref!r} is ambiguous ({len(matches)} snapshots match)")
        return self.load(matches[0])



def _clock_order(found: List[Snapshot]) -> List[Snapshot]:
    """`found` (oldest first) with those dated more than FUTURE_MARGIN_S ahead of this host's clock moved
    first (see SnapshotStore.history)."""
    horizon = time.time() + FUTURE_MARGIN_S
    return [snap for snap in found if _epoch(snap.time) > horizon] + \
        [snap for snap in found if _epoch(snap.time) <= horizon]

def new_config() -> Tuple[str, bytes]:
    """(name, content) of a new repository's config."""
    config = {"format": FORMAT_VERSION, "id": secrets.token_hex(16), "hash": "sha256",
              "compression": "zstd", "chunker": ChunkerParams().to_json(),
              "stream_chunker": STREAM_CHUNKER.to_json()}
    return CONFIG_NAME, json.dumps(config, indent=2).encode()


class ConfigMissing(RepositoryError):
    """The repository's config object does not exist."""


def load_config(backend: Backend) -> dict:
    """The repository's config, checked; raises RepositoryError naming the object."""
    handle = Handle(Kind.CONFIG, CONFIG_NAME)
    where = backend.describe(handle)
    try:
        config = json.loads(backend.load(handle))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        version = config.get("format")
        ChunkerParams(**config["chunker"])
        str(config["id"])
    except NotFound:
        raise ConfigMissing(f"{where}: missing (no repository here)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{where}: not a repository configuration ({in_words(exc)}); "
                              f"the file is damaged or was not written by backup-agent") from None
    if version == ENCRYPTED_FORMAT and isinstance(config.get("encryption"), dict):
        return config
    if "encryption" in config:  # an encrypted repository's config whose format field was changed
        raise RepositoryError(f"{where}: authentication failed (tampered or damaged: format {version!r} with "
                              "encryption settings)")
    if version != FORMAT_VERSION:
        raise RepositoryError(f"{backend.location}: repository format {version} is not supported by this "
                              f"version (it reads formats {FORMAT_VERSION} and {ENCRYPTED_FORMAT})")
    return config
