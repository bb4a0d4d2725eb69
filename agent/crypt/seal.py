"""Encryption and authentication of a repository's objects (README, "Encryption"), with AES-256-GCM
from `cryptography` and age (pyrage) for wrapping data keys.

- Blob ids: HMAC-SHA256(id key, SHA-256(plaintext)): the storage holder cannot confirm a known file,
  and the content is hashed once at SHA-256's (hardware) speed.
- Tree blobs (file lists) and pack trailers: AES-256-GCM under the metadata key.
- Data blobs (file contents, dumps): AES-256-GCM under a random data key per pack, wrapped with age for
  the recipients and saved as its own object (kind PACK_KEYS, named by the SHA-256 of the wrapped key);
  every stored data blob begins with that name, so a blob copied into another pack by prune stays
  readable. The writer drops the data key with its pack; the node holds nothing that unwraps it.
- Index files, snapshot documents, damage records: sealed whole by `SealedBackend` under the metadata
  key, the object's kind and name as associated data (an object swapped for another fails too).

Any failure to authenticate is an AuthenticationError naming the object by its storage name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from typing import Any, Dict, List, Optional, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.backend.base import Backend, BackendError, Buffer, FileInfo, Handle, Kind, Wrapper
from agent.crypt.keys import NodeKey, load_identities, unwrap, wrap

_NONCE = 12
_TAG = 16
_REF = 32
# Objects SealedBackend encrypts whole; packs (blob by blob), the config (a MAC) and wrapped keys (age)
# are protected by their own means.
SEALED_KINDS = frozenset({Kind.INDEX, Kind.SNAPSHOT, Kind.DAMAGE})
BLOB_OVERHEAD = _NONCE + _TAG  # a tree blob; a data blob has the key's name (32 bytes) on top


class AuthenticationError(BackendError, ValueError):
    """An object does not authenticate (tampered, damaged, or written under another key). A ValueError
    too, so that every reader that takes an unreadable object for damage does so for this one."""


class IdentityRequired(BackendError):
    """Reading file contents or dumps of an encrypted repository needs an identity."""


def _seal(aead: AESGCM, data: Buffer, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + aead.encrypt(nonce, bytes(data) if isinstance(data, bytearray) else data, aad)


def _open(aead: AESGCM, data: Buffer, aad: bytes) -> bytes:
    view = memoryview(data)
    return aead.decrypt(view[:_NONCE], view[_NONCE:], aad)


class DataKey:
    """One pack's data key: made when the pack is begun, wrapped for the recipients and saved before the
    first blob sealed with it is (so no pack ever names a key that is not stored)."""

    def __init__(self, backend: Backend, recipients: Sequence[Any]) -> None:
        if not recipients:
            raise BackendError("this repository is encrypted and no recipients are configured "
                               "([encryption] recipients): nothing can be written")
        key = AESGCM.generate_key(256)
        self._aead = AESGCM(key)
        self._wrapped = wrap(key, recipients)
        self.ref = hashlib.sha256(self._wrapped).digest()
        self._backend = backend
        self._saved = False

    def seal(self, blob_id: bytes, stored: Buffer) -> bytes:
        if not self._saved:
            self._backend.save(Handle(Kind.PACK_KEYS, self.ref.hex()), [self._wrapped])
            self._saved = True
        return self.ref + _seal(self._aead, stored, blob_id)


class RepositoryCipher:
    """What an opened encrypted repository encrypts, decrypts and names blobs with. Thread-safe."""

    def __init__(self, backend: Backend, node: NodeKey, recipients: Sequence[Any] = (),
                 identity_file: Optional[str] = None, identities: Optional[List[Any]] = None) -> None:
        self.backend = backend  # the raw backend: wrapped keys are age objects, not sealed ones
        self.node = node
        self.recipients = tuple(recipients)
        self.identity_file = identity_file
        self._identities = identities
        self._meta = AESGCM(node.meta_key)
        self._data_keys: Dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()

    @property
    def identities(self) -> Optional[List[Any]]:
        """The identities of `identity_file`, read when first needed (a node that only backs up never
        reads it); raises KeyFileError for a missing or malformed file."""
        if self._identities is None and self.identity_file is not None:
            self._identities = load_identities(self.identity_file)
        return self._identities

    def blob_id(self, data: Buffer) -> bytes:
        return hmac.digest(self.node.id_key, hashlib.sha256(data).digest(), "sha256")

    def data_key(self) -> DataKey:
        return DataKey(self.backend, self.recipients)

    def seal_tree(self, blob_id: bytes, stored: Buffer) -> bytes:
        return _seal(self._meta, stored, blob_id)

    def seal_meta(self, data: Buffer, aad: bytes) -> bytes:
        return _seal(self._meta, data, aad)

    def open_meta(self, data: Buffer, aad: bytes, where: str) -> bytes:
        try:
            return _open(self._meta, data, aad)
        except (InvalidTag, ValueError):
            raise AuthenticationError(f"{where}: authentication failed (tampered or damaged)") from None

    def open_blob(self, blob_id: bytes, stored: Buffer, tree: bool, where: str) -> bytes:
        """The compressed bytes of a stored blob. Raises AuthenticationError naming `where` (the pack),
        IdentityRequired for a data blob without an identity, WrongIdentity for a wrong one."""
        if tree:
            return self.open_meta(stored, blob_id, where)
        view = memoryview(stored)
        aead = self._unwrapped(bytes(view[:_REF]), where)
        try:
            return _open(aead, view[_REF:], blob_id)
        except (InvalidTag, ValueError):
            raise AuthenticationError(f"{where}: authentication failed for blob {blob_id.hex()} "
                                      "(tampered or damaged)") from None

    def _unwrapped(self, ref: bytes, where: str) -> AESGCM:
        found = self._data_keys.get(ref)
        if found is not None:
            return found
        if not self.identities:
            raise IdentityRequired("file contents and dumps of an encrypted repository can only be read with an "
                                   "identity: give --identity FILE or set [encryption] identity_file")
        handle = Handle(Kind.PACK_KEYS, ref.hex())
        try:
            wrapped = self.backend.load(handle)
        except BackendError:
            raise AuthenticationError(f"{where}: its data key {self.backend.describe(handle)} is missing") from None
        key = unwrap(wrapped, self.identities, self.backend.describe(handle), str(self.identity_file))
        if len(key) != 32:
            raise AuthenticationError(f"{self.backend.describe(handle)}: not a data key")
        aead = AESGCM(key)
        with self._lock:
            self._data_keys[ref] = aead
        return aead


class SealedBackend(Wrapper):
    """A backend whose index files, snapshot documents and damage records are sealed under the metadata
    key (see the module docstring); every other call passes through to the wrapped backend unchanged."""

    def __init__(self, inner: Backend, cipher: RepositoryCipher) -> None:
        super().__init__(inner)
        self.cipher = cipher

    @staticmethod
    def _aad(handle: Handle) -> bytes:
        return f"{handle.kind.value}/{handle.name}".encode()

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        if handle.kind in SEALED_KINDS:
            pieces = [self.cipher.seal_meta(b"".join(pieces), self._aad(handle))]
        self.inner.save(handle, pieces)

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        if handle.kind not in SEALED_KINDS:
            return self.inner.load(handle, length, offset)
        data = self.cipher.open_meta(self.inner.load(handle), self._aad(handle), self.inner.describe(handle))
        return data[offset:] if length < 0 else data[offset:offset + length]

    def stat(self, handle: Handle) -> FileInfo:
        """Sizes are of the content, as saved and loaded (a sealed object holds BLOB_OVERHEAD more)."""
        info = self.inner.stat(handle)
        return info._replace(size=max(0, info.size - BLOB_OVERHEAD)) if handle.kind in SEALED_KINDS else info

    def list(self, kind: Kind) -> List[FileInfo]:
        found = self.inner.list(kind)
        if kind in SEALED_KINDS:
            return [info._replace(size=max(0, info.size - BLOB_OVERHEAD)) for info in found]
        return found
