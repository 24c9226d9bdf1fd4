"""The master key that encrypts software-stored keys at rest.

Kept in a 0600 file, or sealed to the TPM so that the key files are useless off this device.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Protocol

from ...fsutil import atomic_write

__all__ = ["MASTER_KEY_LENGTH", "FileMasterKey", "MasterKeySource"]

MASTER_KEY_LENGTH = 32


class MasterKeySource(Protocol):
    description: str

    def load_or_create(self) -> bytes: ...


class FileMasterKey:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"

    def load_or_create(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = secrets.token_bytes(MASTER_KEY_LENGTH)
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, data)
            return data
        if len(data) != MASTER_KEY_LENGTH:
            raise ValueError(
                f"master key file {self.path} holds {len(data)} bytes, expected {MASTER_KEY_LENGTH}; "
                "it is damaged or not a master key"
            )
        return data
