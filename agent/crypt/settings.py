"""The `[encryption]` table of agent.toml as a value (validated by agent.config.loader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

# config.json's format of an encrypted repository: a version that knows only format 1 refuses it
# instead of writing plain data into it
ENCRYPTED_FORMAT = 2


@dataclass(frozen=True)
class EncryptionSettings:
    """`recipients`: age X25519 recipients (`age1…`) new data is encrypted to; `identity_file`: an age
    identity file (only where restores run); `node_key_file`: the node's write-side secret (created on
    the first backup into a new encrypted repository); `disabled`: an explicit opt-out."""

    recipients: Tuple[str, ...] = ()
    identity_file: Optional[str] = None
    node_key_file: Optional[str] = None
    disabled: bool = False

    @property
    def enabled(self) -> bool:
        """Whether a new repository is created encrypted."""
        return bool(self.recipients) and not self.disabled
