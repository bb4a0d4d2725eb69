"""Opening a repository under the `[encryption]` settings: which node key, which identities, and the
sealed backend the repository then works through. Errors are ValueErrors (KeyFileError, WrongIdentity,
AuthenticationError) whose messages name the file or object, never a secret."""

from __future__ import annotations

import json
from typing import Optional, Tuple

from agent.backend.base import CONFIG_NAME, Backend, Handle, Kind
from agent.crypt.bootstrap import check_config, encrypted_config, ensure_node_key_copy, has_node_key, node_key
from agent.crypt.keys import KeyFileError, load_identities, parse_recipient
from agent.crypt.seal import RepositoryCipher, SealedBackend
from agent.crypt.settings import EncryptionSettings

_NO_KEY = ("this repository is encrypted and this node has no node key ({file}): give it a copy of the "
           "node key of a node that backs up into it, or recover one with `backup-agent key recover-node "
           "--identity FILE --out {file}`")


def create_encrypted(backend: Backend, config: bytes, settings: EncryptionSettings) -> bytes:
    """A new repository's config made encrypted, with the node key (read, or made now in
    `node_key_file`) and its copy for the recipients saved first."""
    node = node_key(backend, settings.node_key_file, None, None, create=True)
    if node is None:
        raise KeyFileError("[encryption] node_key_file is not set: no node key can be made")
    ensure_node_key_copy(backend, node, settings.recipients, [parse_recipient(text) for text in settings.recipients])
    return json.dumps(encrypted_config(json.loads(config), node), indent=2).encode()


def attach(backend: Backend, config: dict, settings: Optional[EncryptionSettings],
           writing: bool) -> Tuple[Optional[RepositoryCipher], Backend]:
    """(cipher, backend to use) for an opened repository; (None, backend) for an unencrypted one."""
    settings = settings or EncryptionSettings()
    where = backend.describe(Handle(Kind.CONFIG, CONFIG_NAME))
    if "encryption" not in config:
        if has_node_key(settings.node_key_file):
            # a node that has a node key made or joined an encrypted repository: a plain config now
            # means it was replaced, and writing plain data into it would defeat the encryption
            raise KeyFileError(f"{where} describes an unencrypted repository, but this node holds a node key "
                               f"({settings.node_key_file}): refusing to use it (was config.json replaced?)")
        return None, backend  # a repository of the previous version: it keeps working unencrypted
    identities = None
    node = None
    if has_node_key(settings.node_key_file):
        node = node_key(backend, settings.node_key_file, None, None, create=False)
        source = str(settings.node_key_file)
    elif settings.identity_file and not writing:
        identities = load_identities(settings.identity_file)
        node = node_key(backend, None, identities, settings.identity_file, create=False)
        source = f"the node key recovered with {settings.identity_file}"
    if node is None:
        raise KeyFileError(_NO_KEY.format(file=settings.node_key_file or "[encryption] node_key_file"))
    check_config(config, node, where, source)
    recipients = [parse_recipient(text) for text in settings.recipients]
    if writing and recipients:
        ensure_node_key_copy(backend, node, settings.recipients, recipients)
    cipher = RepositoryCipher(backend, node, recipients, settings.identity_file, identities)
    return cipher, SealedBackend(backend, cipher)
