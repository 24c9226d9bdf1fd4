"""Certificates on disk: one PEM file per id, written atomically and durably (in bursts: ``groupcommit``), named so
that any id is a safe file name."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from ..fsutil import private_dir
from ..groupcommit import GroupCommit

__all__ = ["CertStore"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
PATHS_REMEMBERED = 1024


class CertStore:
    def __init__(self, homedir: Path) -> None:
        self.dir = private_dir(homedir / "certs")
        for stale in self.dir.glob(".*.tmp"):  # torn writes of a crash; never read as certificates
            stale.unlink(missing_ok=True)
        self._commits = GroupCommit()
        self._paths: dict[str, Path] = {}  # every request names its cert; the name is worked out once

    def path(self, cert_id: str) -> Path:
        found = self._paths.get(cert_id)
        if found is None:
            if len(self._paths) >= PATHS_REMEMBERED:
                self._paths.clear()
            # A readable prefix for humans, a hash for uniqueness and safety ("..", "/", NUL, case folding).
            prefix = _SAFE.sub("_", cert_id)[:40].lstrip(".") or "cert"
            digest = hashlib.sha256(cert_id.encode()).hexdigest()[:32]
            found = self._paths[cert_id] = self.dir / f"{prefix}-{digest}.pem"
        return found

    def get(self, cert_id: str) -> bytes | None:
        """What is stored, including a change staged but not yet on disk."""
        path = self.path(cert_id)
        staged, data = self._commits.staged(path)
        if staged:
            return data
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def staged(self, cert_id: str) -> bool:
        """Whether a change to ``cert_id`` is not yet known to be on disk."""
        return self._commits.staged(self.path(cert_id))[0]

    def stage(self, cert_id: str, pem: bytes) -> asyncio.Future[None]:
        """Store ``pem`` as ``cert_id``: visible to :meth:`get` now, on disk when the future completes."""
        return self._commits.stage(self.path(cert_id), pem, mode=0o644)

    async def put(self, cert_id: str, pem: bytes) -> None:
        await self.stage(cert_id, pem)

    async def delete(self, cert_id: str) -> bool:
        """Remove ``cert_id`` durably; False if nothing was stored."""
        existed = self.get(cert_id) is not None
        await self._commits.stage(self.path(cert_id), None)
        return existed
