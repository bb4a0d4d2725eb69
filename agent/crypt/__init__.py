"""Encrypted repositories whose contents the nodes cannot read back (README, "Encryption").

keys: identities, recipients and the node key; seal: how each kind of object is encrypted and
authenticated; bootstrap: creating and opening an encrypted repository's config. This package imports
no cipher library until an encrypted repository is used.
"""

from agent.crypt.settings import ENCRYPTED_FORMAT, EncryptionSettings

__all__ = ["ENCRYPTED_FORMAT", "EncryptionSettings"]
