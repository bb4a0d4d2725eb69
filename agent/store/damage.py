"""Damage records: which stored copies of blobs `verify --read-data` found damaged.

A record is a small JSON document, `{"damaged": [{"blob": HEX, "pack": HEX}, ...]}`, saved as an object
of kind DAMAGE named by its SHA-256 (written once, like every object). The index leaves the copies they
name out of every lookup (index.py), so the next backup that reads the content stores it again; prune
drops the damaged copies from the index it writes and then removes the records.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, List, Tuple


def encode_damage(pairs: Iterable[Tuple[bytes, bytes]]) -> Tuple[str, bytes]:
    """(name, content) of a record for (blob id, pack id) pairs."""
    body = [{"blob": blob.hex(), "pack": pack.hex()} for blob, pack in sorted(set(pairs))]
    data = json.dumps({"damaged": body}, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest(), data


def decode_damage(data: bytes) -> List[Tuple[bytes, bytes]]:
    """The (blob id, pack id) pairs of a record; raises ValueError for a malformed one."""
    try:
        return [(bytes.fromhex(item["blob"]), bytes.fromhex(item["pack"])) for item in json.loads(data)["damaged"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a damage record ({exc})") from None
