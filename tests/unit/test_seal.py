"""Sealed blobs and packs of encrypted repositories (agent.crypt.seal): a pack is saved only once the
data keys its blobs name are stored, a key that cannot be saved fails every pack naming it, a run that
seals nothing makes no key, and a blob that does not authenticate names its pack."""

from __future__ import annotations

import errno
import threading
from typing import List, Sequence

import pyrage
import pytest

from agent.backend import Handle, Kind
from agent.backend.base import Buffer, Wrapper
from agent.backend.faulty import Faults, FaultyBackend
from agent.backend.mem import MemBackend
from agent.crypt.keys import NodeKey
from agent.crypt.seal import AuthenticationError, RepositoryCipher
from agent.store.index import KIND_DATA
from agent.store.pack import PackWriter


class KeySavesWait(Wrapper):
    """Holds every save of a data key until `release` is set; records, for each pack saved, whether the
    data keys its blobs name were stored by then."""

    def __init__(self, inner: MemBackend) -> None:
        super().__init__(inner)
        self.release = threading.Event()
        self.keys_stored_before_pack: List[bool] = []
        self.named: List[str] = []

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        if handle.kind is Kind.PACK_KEYS:
            self.release.wait()
        if handle.kind is Kind.DATA:
            stored = {info.name for info in self.inner.list(Kind.PACK_KEYS)}
            self.keys_stored_before_pack.append(all(name in stored for name in self.named))
        self.inner.save(handle, pieces)


def _cipher(backend, identity=None, node=None) -> RepositoryCipher:
    identity = identity or pyrage.x25519.Identity.generate()
    return RepositoryCipher(backend, node or NodeKey.generate(), [identity.to_public()], "identity", [identity])


def _add(pack: PackWriter, cipher: RepositoryCipher, key, content: bytes) -> bytes:
    blob_id = cipher.blob_id(content)
    pack.add(blob_id, key.seal(blob_id, content), len(content), KIND_DATA << 4)
    return blob_id


def test_a_pack_is_saved_only_once_the_data_keys_its_blobs_name_are_stored():
    backend = KeySavesWait(MemBackend())
    cipher = _cipher(backend)
    key = cipher.data_key()
    pack = PackWriter(backend, cipher)
    _add(pack, cipher, key, b"catalina.properties\n" * 50)  # begins the key's save, held by the backend
    backend.named.append(key.ref.hex())
    finishing = threading.Thread(target=pack.finish)
    finishing.start()
    try:
        finishing.join(0.5)
        assert finishing.is_alive()  # the pack waits for its key
    finally:
        backend.release.set()
        finishing.join()
    assert backend.keys_stored_before_pack == [True]
    assert [info.name for info in backend.list(Kind.PACK_KEYS)] == [key.ref.hex()]


def test_a_data_key_that_cannot_be_saved_fails_every_pack_naming_it_and_no_such_pack_is_stored():
    backend = FaultyBackend(MemBackend(), Faults(fail_save=1, kinds=frozenset({Kind.PACK_KEYS})))
    cipher = _cipher(backend)
    key = cipher.data_key()
    for content in (b"first", b"second"):  # a prepared blob of the key may land in the next pack
        pack = PackWriter(backend, cipher)
        _add(pack, cipher, key, content)
        with pytest.raises(OSError) as raised:
            pack.finish()
        assert raised.value.errno == errno.ENOSPC
    assert backend.list(Kind.DATA) == [] and backend.list(Kind.PACK_KEYS) == []
    later = cipher.data_key()  # a later run's key saves and its pack is stored
    pack = PackWriter(backend, cipher)
    _add(pack, cipher, later, b"third")
    pack.finish()
    assert len(backend.list(Kind.DATA)) == 1
    assert [info.name for info in backend.list(Kind.PACK_KEYS)] == [later.ref.hex()]


def test_a_run_that_seals_nothing_makes_and_stores_no_data_key():
    backend = MemBackend()
    cipher = _cipher(backend)
    cipher.data_key()
    PackWriter(backend, cipher).finish()
    assert backend.list(Kind.PACK_KEYS) == []


def test_a_sealed_blob_that_does_not_authenticate_names_its_pack_and_a_lost_key_is_named_too():
    backend = MemBackend()
    identity, node = pyrage.x25519.Identity.generate(), NodeKey.generate()
    writer = _cipher(backend, identity, node)
    key = writer.data_key()
    content = b"<Context docBase='api'/>"
    blob_id = writer.blob_id(content)
    sealed = key.seal(blob_id, content)
    writer.wait_keys_saved([key.ref])
    pack = Handle(Kind.DATA, "ab" * 32)
    reader = _cipher(backend, identity, node)  # another process: it unwraps the key from the repository
    assert reader.open_blob(blob_id, sealed, False, pack) == content
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(AuthenticationError, match=f"{backend.describe(pack)}: authentication failed for blob"):
        reader.open_blob(blob_id, bytes(flipped), False, pack)
    backend.remove(Handle(Kind.PACK_KEYS, key.ref.hex()))
    with pytest.raises(AuthenticationError, match=f"{backend.describe(pack)}: its data key .* is missing"):
        _cipher(backend, identity, node).open_blob(blob_id, sealed, False, pack)
