"""What the identity service remembers across restarts: the provisioning result (with a fingerprint of the
configuration that produced it), the module identities it created, so it can start while the cloud is down, and
which hub identities it made for host-process principals, so it can delete them once they are configured no more.

Unlike aziot, a backup made under another provisioning configuration (scope, registration id, endpoint, hub, device
id, credentials) is never used: it would name a device the new configuration does not own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..fsutil import atomic_write, private_dir
from ..sqlite import Store

__all__ = ["DeviceIdentity", "DeviceStore", "HostModule", "HostModules", "ModuleCache", "ModuleRecord", "fingerprint"]


@dataclass(frozen=True)
class DeviceIdentity:
    hub: str
    device_id: str
    auth: Literal["sas", "x509", "tpm"]  # tpm: SAS tokens signed with the TPM's DPS authentication key
    key_id: str | None = None  # SAS: the device key (or derived base) in the keys service
    derivation: str | None = None  # SAS with a DPS group key: the registration id the device key derives from
    cert_id: str | None = None  # X.509: identity cert id in the certs service, or a file:// URI
    pk_id: str | None = None  # X.509: identity key id in the keys service, or a URI
    gateway_host: str | None = None
    source: Literal["manual", "dps"] = "manual"


@dataclass(frozen=True)
class ModuleRecord:
    module_id: str
    type: Literal["aziot", "local"]
    generation_id: str
    managed_by: str | None = None


@dataclass(frozen=True)
class HostModule:
    """A hub module identity this service created (or took back) for a host-process ``[[principal]]``."""

    hub: str
    device_id: str
    module_id: str
    generation_id: str = ""  # "" while creating it: the hub has not answered yet


def fingerprint(value: object) -> str:
    """A stable digest of a provisioning configuration (secrets included only as their hash)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


class DeviceStore:
    def __init__(self, homedir: Path) -> None:
        self.path = private_dir(homedir) / "device.json"

    def load(self, expected_fingerprint: str) -> DeviceIdentity | None:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # damaged: provision again rather than trust it
        if doc.get("fingerprint") != expected_fingerprint:
            return None
        try:
            return DeviceIdentity(**doc["device"])
        except (TypeError, KeyError):
            return None

    def save(self, device: DeviceIdentity, config_fingerprint: str) -> None:
        atomic_write(self.path, json.dumps({"fingerprint": config_fingerprint, "device": asdict(device)}).encode())

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ModuleCache:
    """Module identities known locally (SQLite, WAL): the offline copy of what the hub holds."""

    def __init__(self, homedir: Path) -> None:
        self._store = Store(
            private_dir(homedir) / "modules.db",
            "CREATE TABLE IF NOT EXISTS modules (module_id TEXT NOT NULL, type TEXT NOT NULL, "
            "generation_id TEXT NOT NULL, managed_by TEXT, device TEXT NOT NULL, "
            "PRIMARY KEY (device, type, module_id))")

    def put(self, device: str, record: ModuleRecord) -> None:
        with self._store.write() as db:
            db.execute("INSERT OR REPLACE INTO modules VALUES (?, ?, ?, ?, ?)",
                       (record.module_id, record.type, record.generation_id, record.managed_by, device))

    def get(self, device: str, type_: str, module_id: str) -> ModuleRecord | None:
        with self._store.read() as db:
            row = db.execute("SELECT module_id, type, generation_id, managed_by FROM modules "
                             "WHERE device=? AND type=? AND module_id=?", (device, type_, module_id)).fetchone()
        return ModuleRecord(*row) if row else None

    def list_all(self, device: str, type_: str) -> list[ModuleRecord]:
        with self._store.read() as db:
            rows = db.execute("SELECT module_id, type, generation_id, managed_by FROM modules WHERE device=? "
                              "AND type=? ORDER BY module_id", (device, type_)).fetchall()
        return [ModuleRecord(*r) for r in rows]

    def delete(self, device: str, type_: str, module_id: str) -> None:
        with self._store.write() as db:
            db.execute("DELETE FROM modules WHERE device=? AND type=? AND module_id=?", (device, type_, module_id))

    def replace_all(self, device: str, type_: str, records: list[ModuleRecord]) -> None:
        with self._store.write() as db:
            db.execute("DELETE FROM modules WHERE device=? AND type=?", (device, type_))
            db.executemany("INSERT INTO modules VALUES (?, ?, ?, ?, ?)",
                           [(r.module_id, r.type, r.generation_id, r.managed_by, device) for r in records])

    def close(self) -> None:
        self._store.close()


class HostModules:
    """The hub identities made for host principals (SQLite, WAL). A row is written before the hub is asked to create
    the identity and removed only once the hub no longer holds it, so neither a crash nor an outage between the two
    loses track of an identity that must be deleted when its principal goes away."""

    def __init__(self, homedir: Path) -> None:
        self._store = Store(
            private_dir(homedir) / "host-modules.db",
            "CREATE TABLE IF NOT EXISTS host_modules (hub TEXT NOT NULL, device TEXT NOT NULL, "
            "module_id TEXT NOT NULL, generation_id TEXT NOT NULL, PRIMARY KEY (hub, device, module_id))")

    def record(self, module: HostModule) -> None:
        with self._store.write() as db:
            db.execute("INSERT OR REPLACE INTO host_modules VALUES (?, ?, ?, ?)",
                       (module.hub, module.device_id, module.module_id, module.generation_id))

    def forget(self, module: HostModule) -> None:
        with self._store.write() as db:
            db.execute("DELETE FROM host_modules WHERE hub=? AND device=? AND module_id=?",
                       (module.hub, module.device_id, module.module_id))

    def all(self) -> list[HostModule]:
        with self._store.read() as db:
            rows = db.execute("SELECT hub, device, module_id, generation_id FROM host_modules "
                              "ORDER BY hub, device, module_id").fetchall()
        return [HostModule(*r) for r in rows]

    def close(self) -> None:
        self._store.close()
