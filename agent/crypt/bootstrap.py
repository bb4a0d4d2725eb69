"""Creating and opening an encrypted repository: its config (readable, authenticated by a MAC under the
metadata key), the node key (from `node_key_file`, made on the first backup into a new repository, or
recovered in memory from the repository's KEYS objects by an identity's holder) and the copies of the
node key wrapped for the recipients.

Raises KeyFileError (a key file), WrongIdentity, or AuthenticationError (naming config.json).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any, List, Optional, Sequence

from agent.backend.base import Backend, Handle, Kind, NotFound
from agent.crypt.keys import KeyFileError, NodeKey, WrongIdentity, load_node_key, save_node_key, unwrap, wrap
from agent.crypt.seal import AuthenticationError
from agent.crypt.settings import ENCRYPTED_FORMAT


def _mac(node: NodeKey, doc: dict) -> str:
    body = {key: value for key, value in doc.items() if key != "mac"}
    return hmac.new(node.meta_key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def encrypted_config(doc: dict, node: NodeKey) -> dict:
    """A new repository's config document made an encrypted one's (chunker sizes stay the public
    defaults; the chunker's seed is the node key's)."""
    doc = dict(doc, format=ENCRYPTED_FORMAT, hash="hmac-sha256(id key, sha256)",
               encryption={"cipher": "aes-256-gcm", "wrap": "age-x25519", "key_id": node.key_id})
    doc["mac"] = _mac(node, doc)
    return doc


def check_config(doc: dict, node: NodeKey, where: str, key_source: str) -> None:
    """Raise KeyFileError if `node` is not this repository's key, AuthenticationError if the config was
    altered."""
    if doc.get("encryption", {}).get("key_id") != node.key_id:
        raise KeyFileError(f"{key_source} is not the node key of the repository {where} names "
                           "(a node key of another repository?)")
    if not hmac.compare_digest(str(doc.get("mac", "")), _mac(node, doc)):
        raise AuthenticationError(f"{where}: authentication failed (tampered or damaged)")


def _copy_name(node: NodeKey, recipients: Sequence[str]) -> str:
    """The KEYS object holding the node key for this set of recipients: keyed, so it tells nothing."""
    material = "\n".join(sorted(recipients)).encode()
    return hmac.new(node.meta_key, b"node key copy\n" + material, hashlib.sha256).hexdigest()


def ensure_node_key_copy(backend: Backend, node: NodeKey, recipients: Sequence[str],
                         parsed: Sequence[Any]) -> None:
    """Make sure the recipients can recover the node key: one KEYS object per set of recipients, written
    the first time a node opens the repository with that set (a stat otherwise)."""
    handle = Handle(Kind.KEYS, _copy_name(node, recipients))
    try:
        backend.stat(handle)
    except NotFound:
        wrapped = wrap(node.encode(), parsed)
        backend.save(handle, [wrapped, _copy_mac(node, wrapped)])


def _copy_mac(node: NodeKey, wrapped: bytes) -> bytes:
    """Appended to a node key copy: nodes (which cannot unwrap it) can still tell it is intact."""
    return hmac.new(node.meta_key, b"node key copy\n" + wrapped, hashlib.sha256).digest()


def check_key_objects(backend: Backend, node: NodeKey) -> List[str]:
    """Problems of the wrapped keys, checked with what a node holds: every data key's object must hash
    to its name (blobs name it), every node key copy must carry its MAC. Each names the object."""
    problems = []
    for info in backend.list(Kind.PACK_KEYS):
        handle = Handle(Kind.PACK_KEYS, info.name)
        if hashlib.sha256(backend.load(handle)).hexdigest() != info.name:
            problems.append(f"{backend.describe(handle)}: authentication failed (content does not match its name)")
    for info in backend.list(Kind.KEYS):
        handle = Handle(Kind.KEYS, info.name)
        data = backend.load(handle)
        if not hmac.compare_digest(data[-32:], _copy_mac(node, data[:-32])):
            problems.append(f"{backend.describe(handle)}: authentication failed (tampered or damaged)")
    return problems


def recover_node_key(backend: Backend, identities: List[Any], identity_file: str) -> NodeKey:
    """The node key, unwrapped from the repository with an identity; raises WrongIdentity."""
    for info in backend.list(Kind.KEYS):
        handle = Handle(Kind.KEYS, info.name)
        stored = backend.load(handle)
        try:
            data = unwrap(stored[:-32], identities, backend.describe(handle), identity_file)
        except WrongIdentity:
            continue
        node = NodeKey.decode(data, backend.describe(handle))
        if not hmac.compare_digest(stored[-32:], _copy_mac(node, stored[:-32])):
            raise AuthenticationError(f"{backend.describe(handle)}: authentication failed (tampered or damaged)")
        return node
    raise WrongIdentity(f"the identity in {identity_file} is not a recipient of this repository "
                        f"({backend.location}): no node key copy in it can be decrypted with it")


def node_key(backend: Backend, key_file: Optional[str], identities: Optional[List[Any]],
             identity_file: Optional[str], create: bool) -> Optional[NodeKey]:
    """The node key: from `key_file`; else recovered with the identity; else, for a repository being
    created, a new one saved to `key_file`. None: none of those is possible."""
    if key_file:
        try:
            return load_node_key(key_file)
        except FileNotFoundError:
            pass
    if identities and not create:
        return recover_node_key(backend, identities, str(identity_file))
    if create and key_file:
        node = NodeKey.generate()
        save_node_key(key_file, node)
        return node
    return None


def has_node_key(key_file: Optional[str]) -> bool:
    return bool(key_file) and os.path.exists(str(key_file))
