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
from typing import Any, Dict, Iterable, List, Optional, Sequence

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


class DataKeyMissing(AuthenticationError):
    """A pack's data key object cannot be loaded: its blobs cannot be opened, though they may be intact."""


class IdentityRequired(BackendError):
    """Reading file contents or dumps of an encrypted repository needs an identity."""


def _plain(data: Buffer) -> bytes | memoryview:
    return bytes(data) if isinstance(data, bytearray) else data


def _seal(aead: AESGCM, data: Buffer, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + aead.encrypt(nonce, _plain(data), aad)


def _open(aead: AESGCM, data: Buffer, aad: bytes) -> bytes:
    view = memoryview(data)
    return aead.decrypt(view[:_NONCE], view[_NONCE:], aad)


class _KeySaves:
    """Wrapped data keys being saved, each on a thread of its own: a backup seals blobs while the key's
    object is written and made durable (an fsync or a PUT per pack), and a pack waits only for the keys
    its blobs name, just before it is saved itself (`wait`), so no pack ever names a key not stored."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._saving: Dict[bytes, threading.Thread] = {}
        self._failed: Dict[bytes, BaseException] = {}  # kept: every pack naming such a key must fail
        self._lock = threading.Lock()

    def start(self, ref: bytes, wrapped: bytes) -> None:
        # a daemon: a process that stops mid-save leaves at most a temp file, and no pack naming the key
        thread = threading.Thread(target=self._save, args=(ref, wrapped), name="data-key-save", daemon=True)
        with self._lock:  # saves nobody waited for (their pack was never saved) are let go here
            self._saving = {name: old for name, old in self._saving.items() if old.is_alive()}
            self._saving[ref] = thread
            thread.start()  # under the lock: another start must not take it, not yet alive, for finished

    def _save(self, ref: bytes, wrapped: bytes) -> None:
        try:
            self._backend.save(Handle(Kind.PACK_KEYS, ref.hex()), [wrapped])
        except BaseException as exc:  # raised where a pack waits for this key
            with self._lock:
                self._failed[ref] = exc

    def wait(self, refs: Iterable[bytes]) -> None:
        """Return once the keys named `refs` are stored; raise the error of one whose save failed. Keys
        not being saved by this process (a blob prune copies names an older key) are not waited for."""
        for ref in refs:
            with self._lock:
                thread = self._saving.get(ref)
            if thread is not None:
                thread.join()
                with self._lock:
                    self._saving.pop(ref, None)
            failed = self._failed.get(ref)
            if failed is not None:
                raise failed


class DataKey:
    """One pack's data key, made when the first blob is sealed with it (a run that stores nothing makes
    none): wrapped for the recipients, its object saved in the background (`_KeySaves`)."""

    def __init__(self, saves: _KeySaves, recipients: Sequence[Any]) -> None:
        if not recipients:
            raise BackendError("this repository is encrypted and no recipients are configured "
                               "([encryption] recipients): nothing can be written")
        self._saves = saves
        self._recipients = recipients
        self._aead: Optional[AESGCM] = None
        self.ref = b""  # the SHA-256 of the wrapped key: its object's name, at the head of every blob
        self._lock = threading.Lock()

    def seal(self, blob_id: bytes, stored: Buffer) -> bytes:
        """`stored` sealed: the key's name, a nonce, the ciphertext and its tag. Thread-safe."""
        aead = self._aead if self._aead is not None else self._begin()
        nonce = os.urandom(_NONCE)
        return b"".join((self.ref, nonce, aead.encrypt(nonce, _plain(stored), blob_id)))

    def _begin(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                key = AESGCM.generate_key(256)
                wrapped = wrap(key, self._recipients)
                self.ref = hashlib.sha256(wrapped).digest()
                self._saves.start(self.ref, wrapped)
                self._aead = AESGCM(key)  # last: a thread that sees it sees `ref` too
            return self._aead


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
        self._key_saves = _KeySaves(backend)

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
        return DataKey(self._key_saves, self.recipients)

    def wait_keys_saved(self, refs: Iterable[bytes]) -> None:
        """Before a pack is saved: the data keys its blobs name (`refs`) are stored; raises the error
        (disk full, a failed request) of a key whose save failed."""
        self._key_saves.wait(refs)

    def seal_tree(self, blob_id: bytes, stored: Buffer) -> bytes:
        return _seal(self._meta, stored, blob_id)

    def seal_meta(self, data: Buffer, aad: bytes) -> bytes:
        return _seal(self._meta, data, aad)

    def open_meta(self, data: Buffer, aad: bytes, where: str) -> bytes:
        try:
            return _open(self._meta, data, aad)
        except (InvalidTag, ValueError):
            raise AuthenticationError(f"{where}: authentication failed (tampered or damaged)") from None

    def open_blob(self, blob_id: bytes, stored: Buffer, tree: bool, pack: Handle) -> bytes:
        """The compressed bytes of a blob stored in `pack`. Raises AuthenticationError naming the pack,
        IdentityRequired for a data blob without an identity, WrongIdentity for a wrong one.

        Called once per blob a restore reads: the pack is named only when something fails."""
        view = memoryview(stored)
        if tree:
            aead = self._meta
        else:
            ref = bytes(view[:_REF])
            view = view[_REF:]
            found = self._data_keys.get(ref)
            aead = found if found is not None else self._unwrapped(ref, pack)
        try:
            return aead.decrypt(view[:_NONCE], view[_NONCE:], blob_id)
        except (InvalidTag, ValueError):
            raise AuthenticationError(f"{self.backend.describe(pack)}: authentication failed for blob "
                                      f"{blob_id.hex()} (tampered or damaged)") from None

    def _unwrapped(self, ref: bytes, pack: Handle) -> AESGCM:
        """The data key named `ref`, unwrapped with the identity once per process and kept in memory only
        (never on disk: a node without the identity must not find one)."""
        if not self.identities:
            raise IdentityRequired("file contents and dumps of an encrypted repository can only be read with an "
                                   "identity: give --identity FILE or set [encryption] identity_file")
        handle = Handle(Kind.PACK_KEYS, ref.hex())
        try:
            wrapped = self.backend.load(handle)
        except BackendError:
            raise DataKeyMissing(f"{self.backend.describe(pack)}: its data key "
                                 f"{self.backend.describe(handle)} is missing") from None
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
