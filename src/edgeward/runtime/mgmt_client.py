"""A client of the management API, for the CLI (which calls it as root) and for tests."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ..http.client import UnixClient, error_message, quote_segment
from ..http.errors import HttpError
from .engine import LogChunk

__all__ = ["ManagementClient", "unframe"]

API_VERSION = "2022-08-03"


def unframe(buffer: bytearray) -> list[LogChunk]:
    """Take every complete Docker log frame off the front of `buffer`."""
    out: list[LogChunk] = []
    while len(buffer) >= 8:
        stream, size = struct.unpack(">BxxxI", buffer[:8])
        if len(buffer) < 8 + size:
            break
        out.append(LogChunk(2 if stream == 2 else 1, bytes(buffer[8:8 + size])))
        del buffer[:8 + size]
    return out


class ManagementClient:
    def __init__(self, socket_path: str | Path, api_version: str = API_VERSION) -> None:
        self.http = UnixClient(socket_path, api_version)

    async def close(self) -> None:
        await self.http.close()

    async def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        _, raw = await self.http.request(method, path, body)
        return json.loads(raw) if raw else None

    async def list_modules(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/modules"))["modules"])

    async def create_module(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return dict(await self._json("POST", "/modules", spec))

    async def get_module(self, name: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/modules/{quote_segment(name)}"))

    async def update_module(self, name: str, spec: Mapping[str, Any], start: bool = False) -> dict[str, Any]:
        _, raw = await self.http.request("PUT", f"/modules/{quote_segment(name)}?start={str(start).lower()}", spec)
        return dict(json.loads(raw))

    async def delete_module(self, name: str) -> None:
        await self.http.request("DELETE", f"/modules/{quote_segment(name)}")

    async def action(self, name: str, action: str) -> None:
        await self.http.request("POST", f"/modules/{quote_segment(name)}/{action}")

    async def system_info(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/systeminfo"))

    async def identities(self) -> list[dict[str, Any]]:
        return list((await self._json("GET", "/identities"))["identities"])

    async def logs(self, name: str, *, follow: bool = False, tail: int | None = None, since: str | None = None,
                   until: str | None = None, timestamps: bool = False) -> AsyncIterator[LogChunk]:
        params = {"api-version": self.http.api_version, "follow": str(follow).lower(),
                  "timestamps": str(timestamps).lower(), "tail": "all" if tail is None else str(tail)}
        if since:
            params["since"] = since
        if until:
            params["until"] = until
        session = self.http._session_for_loop()
        async with session.get(f"/modules/{quote_segment(name)}/logs", params=params) as resp:
            if resp.status >= 400:
                raise HttpError(error_message(await resp.read(), resp.reason), status=resp.status)
            buffer = bytearray()
            async for data in resp.content.iter_any():
                buffer.extend(data)
                for chunk in unframe(buffer):
                    yield chunk
