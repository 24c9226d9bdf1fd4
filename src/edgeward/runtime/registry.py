"""Module registrations: what the runtime created, kept in SQLite so attestation survives restarts.

A registration is the runtime's own record of a module — the engine object it made, the image content id measured
at creation and the identity generation id — and it is what attestation compares a caller against. It is written
before the runtime reports a module as created and never trusted from the engine's side alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..fsutil import private_dir
from ..sqlite import Store

__all__ = ["Registration", "Registry"]

_COLUMNS = ("name", "engine", "engine_id", "image", "image_id", "generation_id", "state", "system", "config",
            "created_at", "updated_at")
_SELECT = ("SELECT name, engine, engine_id, image, image_id, generation_id, state, system, config, created_at, "
           "updated_at FROM registrations")


@dataclass(frozen=True)
class Registration:
    name: str
    engine: str  # engine kind: "docker" or "process"
    engine_id: str  # container id or process-module id
    image: str
    image_id: str  # content id measured when the runtime created the module
    generation_id: str
    state: str = "created"  # desired state: "running" or "stopped" (what the watchdog restores), or "created"
    system: bool = False  # the edge agent: not removable through the management API
    config: Mapping[str, Any] = field(default_factory=dict)  # the module spec as the management API received it
    created_at: float = 0.0
    updated_at: float = 0.0


class Registry:
    """SQLite (WAL, synchronous=FULL): a registration is on disk before the API answers."""

    def __init__(self, home: Path) -> None:
        self._store = Store(
            private_dir(home) / "registrations.db",
            "CREATE TABLE IF NOT EXISTS registrations (name TEXT PRIMARY KEY, engine TEXT NOT NULL, "
            "engine_id TEXT NOT NULL, image TEXT NOT NULL, image_id TEXT NOT NULL, generation_id TEXT NOT NULL, "
            "state TEXT NOT NULL, system INTEGER NOT NULL, config TEXT NOT NULL, created_at REAL NOT NULL, "
            "updated_at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS by_engine_id ON registrations (engine_id)")
        # Bumped on every change: attestations cached per connection are re-checked once it moves, so a connection
        # a module's process opened does not keep the module's identity after the module is stopped or removed.
        self.version = 0

    @staticmethod
    def _row(row: tuple[Any, ...] | None) -> Registration | None:
        if row is None:
            return None
        values = dict(zip(_COLUMNS, row, strict=True))
        values["system"] = bool(values["system"])
        values["config"] = json.loads(values["config"])
        return Registration(**values)

    def put(self, reg: Registration) -> Registration:
        now = time.time()
        reg = replace(reg, created_at=reg.created_at or now, updated_at=now)
        self.version += 1
        with self._store.write() as db:
            db.execute("INSERT OR REPLACE INTO registrations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (reg.name, reg.engine, reg.engine_id, reg.image, reg.image_id, reg.generation_id, reg.state,
                        int(reg.system), json.dumps(reg.config, sort_keys=True), reg.created_at, reg.updated_at))
        return reg

    def set_state(self, name: str, state: str) -> None:
        self.version += 1
        with self._store.write() as db:
            db.execute("UPDATE registrations SET state=?, updated_at=? WHERE name=?", (state, time.time(), name))

    def get(self, name: str) -> Registration | None:
        with self._store.read() as db:
            row = db.execute(_SELECT + " WHERE name=?", (name,)).fetchone()
        return self._row(row)

    def named_like(self, name: str) -> Registration | None:
        """A registration whose name equals `name` ignoring case: host names are compared that way, so two such
        modules would hold each other's name in server certificates and in DNS."""
        with self._store.read() as db:
            row = db.execute(_SELECT + " WHERE name = ? COLLATE NOCASE ORDER BY name = ? DESC LIMIT 1",
                             (name, name)).fetchone()
        return self._row(row)

    def by_engine_id(self, engine_id: str) -> Registration | None:
        with self._store.read() as db:
            row = db.execute(_SELECT + " WHERE engine_id=?", (engine_id,)).fetchone()
        return self._row(row)

    def all(self) -> list[Registration]:
        with self._store.read() as db:
            rows = db.execute(_SELECT + " ORDER BY name").fetchall()
        return [r for r in map(self._row, rows) if r is not None]

    def delete(self, name: str) -> None:
        self.version += 1
        with self._store.write() as db:
            db.execute("DELETE FROM registrations WHERE name=?", (name,))

    def close(self) -> None:
        self._store.close()
