"""Collector tokens: one per host (it may post that host's reports only) plus optional reader tokens
(for a collector whose pages and API require one). The file holds only SHA-256 hashes:

    [hosts."node-1"]
    sha256 = "…"
    created = "2026-11-27T10:00:00Z"

    [readers."grafana"]
    sha256 = "…"

    [drills."central"]                 # may post reports whose trigger is "drill", for any host
    sha256 = "…"

Tokens are 256-bit random strings, so a plain hash is enough (nothing to brute-force). The file is
re-read when it changes: rotating a token needs no restart.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import tomli_w

from agent.durable import atomic_write
from agent.report.model import utc_now

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

TOKEN_PREFIX = "bat_"


class TokenFileError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # "host", "reader" or "drill"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{path}: {exc}") from None


def create_token(path: str, name: str, reader: bool = False, drill: bool = False) -> str:
    """Create (or rotate) the token of `name` (a host's; a reader's; a drill host's, which posts drill
    reports of any host); only its hash is stored. Returns the token."""
    data = _read(path)
    section = "readers" if reader else "drills" if drill else "hosts"
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    data.setdefault(section, {})[name] = {"sha256": digest(token), "created": utc_now()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.abspath(path), tomli_w.dumps(data).encode())
    return token


class TokenStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._by_hash: Dict[str, Principal] = {}
        self.reload()

    def reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: Optional[Tuple[int, int, int]] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        data = _read(self.path)
        by_hash: Dict[str, Principal] = {}
        for section, role in (("hosts", "host"), ("readers", "reader"), ("drills", "drill")):
            for name, entry in (data.get(section) or {}).items():
                if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                    by_hash[entry["sha256"]] = Principal(name, role)
        with self._lock:
            self._by_hash, self._stamp = by_hash, stamp

    def _fresh(self) -> None:
        try:
            self.reload()
        except TokenFileError:
            pass  # a half-edited file: keep the tokens we know

    def lookup(self, token: str) -> Optional[Principal]:
        self._fresh()
        return self._by_hash.get(digest(token))

    def hosts(self) -> Tuple[str, ...]:
        self._fresh()
        return tuple(sorted(p.name for p in self._by_hash.values() if p.role == "host"))
