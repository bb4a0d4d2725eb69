"""The keys of an encrypted repository (README, "Encryption"): operators' age X25519 identities and
recipients, and the node key, the write-side secret every node of a repository holds.

An identity (`AGE-SECRET-KEY-1…`, the age-keygen file format) is kept off the nodes; its recipient
(`age1…`) is what nodes encrypt to. The node key holds three random secrets: the id key (blob ids are
HMAC-SHA256 under it), the metadata key (AES-256-GCM for index files, snapshot documents, file lists
and pack trailers) and the chunker seed (FastCDC's gear table). It never holds anything that decrypts
file contents or dumps: those are under per-pack data keys wrapped for the recipients only.

Secrets never appear in messages: errors name the file, never its content.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Sequence

import pyrage

from agent.durable import fsync_dir, make_private_dirs

_NODE_KEY_FORMAT = "backup-agent node key 1"
_SECRET_PREFIX = "AGE-SECRET-KEY-1"


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not what it should be; the message names the file only."""


class WrongIdentity(KeyFileError):
    """No identity given can unwrap an object (it was not written for any of their recipients)."""


@dataclass(frozen=True)
class NodeKey:
    """The node's secrets: `id_key` and `meta_key` are 32 random bytes each, `chunker_seed` 62 bits."""

    id_key: bytes
    meta_key: bytes
    chunker_seed: int

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32), secrets.randbits(62))

    @property
    def key_id(self) -> str:
        """A public name of this key (the repository's config records it): HMAC, so it reveals nothing."""
        return hmac.new(self.meta_key, b"backup-agent key id", hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:  # never the secrets, whatever prints it
        return f"NodeKey(key_id={self.key_id})"

    def encode(self) -> bytes:
        return json.dumps({"format": _NODE_KEY_FORMAT, "id_key": base64.b64encode(self.id_key).decode(),
                           "meta_key": base64.b64encode(self.meta_key).decode(),
                           "chunker_seed": self.chunker_seed}, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes, where: str) -> NodeKey:
        """Raises KeyFileError naming `where` (never quoting the content)."""
        try:
            doc = json.loads(data)
            if doc.get("format") != _NODE_KEY_FORMAT:
                raise ValueError
            key = cls(base64.b64decode(doc["id_key"], validate=True), base64.b64decode(doc["meta_key"], validate=True),
                      int(doc["chunker_seed"]))
            if len(key.id_key) != 32 or len(key.meta_key) != 32 or not 0 <= key.chunker_seed < 2 ** 62:
                raise ValueError
            return key
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyFileError(f"{where}: not a backup-agent node key (damaged, or another kind of file)") from None


def _write_new_secret(path: str, data: bytes, what: str) -> None:
    """Create `path` with mode 0600 holding `data`, durably; refuses to replace an existing file."""
    make_private_dirs(os.path.dirname(os.path.abspath(path)) or ".")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite {what}") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create {what} ({exc.strerror})") from None
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def load_node_key(path: str) -> NodeKey:
    """Raises FileNotFoundError if there is none, KeyFileError if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the node key ({exc.strerror})") from None
    return NodeKey.decode(data, path)


def save_node_key(path: str, key: NodeKey) -> None:
    _write_new_secret(path, key.encode(), "a node key")


def parse_recipient(text: str) -> pyrage.x25519.Recipient:
    """Raises ValueError for anything but an age X25519 recipient (`age1…`)."""
    try:
        return pyrage.x25519.Recipient.from_str(text.strip())
    except Exception:  # pyrage.RecipientError and its kin
        raise ValueError(f"{text!r} is not an age X25519 recipient (age1…)") from None


def generate_identity(path: str) -> str:
    """Write a new identity (age-keygen's file format, mode 0600; an existing file is refused with
    KeyFileError); returns its recipient."""
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    _write_new_secret(path, text.encode(), "an identity")
    return recipient


def load_identities(path: str) -> List[pyrage.x25519.Identity]:
    """The identities of an age identity file (`#` comments allowed). Raises KeyFileError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such identity file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not text"
        raise KeyFileError(f"{path}: cannot read the identity ({why})") from None
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(_SECRET_PREFIX):
            raise KeyFileError(f"{path}:{number}: not an age X25519 identity (AGE-SECRET-KEY-1…)")
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except Exception:  # pyrage.IdentityError: the line itself is never quoted
            raise KeyFileError(f"{path}:{number}: not a valid age X25519 identity") from None
    if not found:
        raise KeyFileError(f"{path}: holds no identity (AGE-SECRET-KEY-1…)")
    return found


def wrap(data: bytes, recipients: Sequence[pyrage.x25519.Recipient]) -> bytes:
    """`data` encrypted with age to every recipient (any one identity of theirs unwraps it)."""
    return pyrage.encrypt(data, list(recipients))


def unwrap(data: bytes, identities: Sequence[pyrage.x25519.Identity], what: str, identity_file: str) -> bytes:
    """Raises WrongIdentity naming `what` (the object) and the identity file."""
    try:
        return pyrage.decrypt(data, list(identities))
    except pyrage.DecryptError:
        raise WrongIdentity(f"{what}: the identity in {identity_file} cannot decrypt it (not one of the "
                            f"recipients it was written for, or the object is damaged)") from None
