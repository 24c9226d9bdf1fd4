"""Module identities through the identity service's socket, for `edgeward serve edged` (the runtime in a process
of its own, as aziot-edged talks to aziot-identityd)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..http.client import UnixClient, quote_segment
from ..http.errors import HttpError
from .identities import ModuleIdentity

__all__ = ["IdentityServiceModules"]

API_VERSION = "2020-09-01"


def _identity(body: Any) -> ModuleIdentity:
    spec = body["spec"]
    return ModuleIdentity(spec["moduleId"], spec["genId"], spec["deviceId"], spec["hubName"])


class IdentityServiceModules:
    def __init__(self, socket_path: str | Path) -> None:
        self.http = UnixClient(socket_path, API_VERSION)

    async def ensure(self, module_id: str, managed_by: str | None = None) -> ModuleIdentity:
        _, raw = await self.http.request("POST", "/identities/modules", {"type": "aziot", "moduleId": module_id})
        return _identity(json.loads(raw))

    async def get(self, module_id: str) -> ModuleIdentity | None:
        try:
            _, raw = await self.http.request("GET", f"/identities/modules/{quote_segment(module_id)}?type=aziot")
        except HttpError as e:
            if e.status == 404:
                return None
            raise
        return _identity(json.loads(raw))

    async def list(self) -> list[ModuleIdentity]:
        _, raw = await self.http.request("GET", "/identities/modules?type=aziot")
        return [_identity(i) for i in json.loads(raw)["identities"]]

    async def delete(self, module_id: str) -> None:
        await self.http.request("DELETE", f"/identities/modules/{quote_segment(module_id)}?type=aziot")

    async def close(self) -> None:
        await self.http.close()
