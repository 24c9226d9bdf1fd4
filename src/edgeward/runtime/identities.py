"""Module identities as the runtime needs them, from the cloud (IoT Hub through the identity service) or, on a
device with no cloud identity, kept locally so modules still get stable generation ids and SAS keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..fsutil import private_dir
from ..http.errors import NotFound
from ..identity.service import MODULE_MASTER_KEY_ID, IdentityService
from ..keys.api import KeysApi
from ..sqlite import Store

__all__ = ["CloudModuleIdentities", "LocalModuleIdentities", "ModuleIdentities", "ModuleIdentity",
           "module_key_handle"]


@dataclass(frozen=True)
class ModuleIdentity:
    module_id: str
    generation_id: str
    device_id: str
    hub: str  # the IoT Hub host name, or the device's hostname when there is no cloud identity
    managed_by: str | None = None


class ModuleIdentities(Protocol):
    async def ensure(self, module_id: str, managed_by: str | None = None) -> ModuleIdentity:
        """The module's identity, created when missing (generation id kept when it exists)."""
        ...

    async def get(self, module_id: str) -> ModuleIdentity | None: ...

    async def list(self) -> list[ModuleIdentity]: ...

    async def delete(self, module_id: str) -> None: ...


async def module_key_handle(keys: KeysApi, module_id: str, generation_id: str, key_id: str = "primary") -> str:
    """A handle to the module's SAS key, derived exactly as the identity service derives the key it registers in
    the hub (HMAC of the master key over "<module>:<generation>:primary|secondary")."""
    if key_id not in ("primary", "secondary"):
        raise NotFound(f"module key {key_id!r} does not exist (expected primary or secondary)")
    master = await keys.create_key_if_not_exists(MODULE_MASTER_KEY_ID, "derive")
    return await keys.create_derived_key(master, f"{module_id}:{generation_id}:{key_id}".encode())


class CloudModuleIdentities:
    """Module identities registered in IoT Hub by the identity service."""

    def __init__(self, identity: IdentityService) -> None:
        self._identity = identity

    async def ensure(self, module_id: str, managed_by: str | None = None) -> ModuleIdentity:
        got = await self._identity.create_module(module_id, managed_by)
        assert got.gen_id is not None
        # the managedBy the hub keeps (an existing identity keeps its own), not the one asked for
        return ModuleIdentity(module_id, got.gen_id, got.device_id, got.hub, got.managed_by)

    async def get(self, module_id: str) -> ModuleIdentity | None:
        try:
            got = await self._identity.get_module(module_id)
        except NotFound:
            return None
        assert got.gen_id is not None
        return ModuleIdentity(module_id, got.gen_id, got.device_id, got.hub, got.managed_by)

    async def list(self) -> list[ModuleIdentity]:
        # managedBy must survive: the edge agent removes IotEdge-managed identities missing from its deployment,
        # so a host agent's identity reported as IotEdge would be deleted by the agent.
        return [ModuleIdentity(m.module_id or "", m.gen_id or "", m.device_id, m.hub, m.managed_by)
                for m in await self._identity.list_modules()]

    async def delete(self, module_id: str) -> None:
        await self._identity.delete_module(module_id)


class LocalModuleIdentities:
    """Identities of a device that has no cloud: generation ids minted here and kept in SQLite."""

    def __init__(self, home: Path, device_id: str) -> None:
        self.device_id = device_id
        self._store = Store(private_dir(home) / "local-identities.db",
                            "CREATE TABLE IF NOT EXISTS identities (module_id TEXT PRIMARY KEY, "
                            "generation_id TEXT NOT NULL, managed_by TEXT)")

    def _make(self, row: tuple[str, str, str | None]) -> ModuleIdentity:
        return ModuleIdentity(row[0], row[1], self.device_id, self.device_id, row[2])

    async def ensure(self, module_id: str, managed_by: str | None = None) -> ModuleIdentity:
        existing = await self.get(module_id)
        if existing is not None:
            return existing
        with self._store.write() as db:
            db.execute("INSERT OR IGNORE INTO identities VALUES (?, ?, ?)",
                       (module_id, uuid.uuid4().hex, managed_by))
        got = await self.get(module_id)
        assert got is not None
        return got

    async def get(self, module_id: str) -> ModuleIdentity | None:
        with self._store.read() as db:
            row = db.execute("SELECT module_id, generation_id, managed_by FROM identities WHERE module_id=?",
                             (module_id,)).fetchone()
        return self._make(row) if row else None

    async def list(self) -> list[ModuleIdentity]:
        with self._store.read() as db:
            rows = db.execute("SELECT module_id, generation_id, managed_by FROM identities ORDER BY module_id")
            return [self._make(r) for r in rows.fetchall()]

    async def delete(self, module_id: str) -> None:
        with self._store.write() as db:
            gone = db.execute("DELETE FROM identities WHERE module_id=?", (module_id,)).rowcount
        if not gone:
            raise NotFound(f"module identity {module_id!r} not found")

    def close(self) -> None:
        self._store.close()
