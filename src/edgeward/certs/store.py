"""Certificates on disk: one PEM file per id, written atomically, named so that any id is a safe file name."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..fsutil import atomic_write, private_dir, remove_durably

__all__ = ["CertStore"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class CertStore:
    def __init__(self, homedir: Path) -> None:
        self.dir = private_dir(homedir / "certs")
        for stale in self.dir.glob(".*.tmp"):  # torn writes of a crash; never read as certificates
            stale.unlink(missing_ok=True)

    def path(self, cert_id: str) -> Path:
        # A readable prefix for humans, a hash for uniqueness and safety ("..", "/", NUL, case folding).
        prefix = _SAFE.sub("_", cert_id)[:40].lstrip(".") or "cert"
        return self.dir / f"{prefix}-{hashlib.sha256(cert_id.encode()).hexdigest()[:32]}.pem"

    def get(self, cert_id: str) -> bytes | None:
        try:
            return self.path(cert_id).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, cert_id: str, pem: bytes) -> None:
        atomic_write(self.path(cert_id), pem, mode=0o644)

    def delete(self, cert_id: str) -> bool:
        return remove_durably(self.path(cert_id))
