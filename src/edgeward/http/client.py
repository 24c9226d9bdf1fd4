"""An async HTTP client over a Unix socket, speaking the shared conventions (api-version, error shape)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

from .errors import HttpError
from .wirefields import JsonBody

__all__ = ["UnixClient", "error_message", "quote_segment"]

T = TypeVar("T")


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (ids may contain '/', '?', '#')."""
    return quote(value, safe="")


class UnixClient:
    """One connection pool to one service socket; raise :class:`HttpError` carrying the server's message."""

    def __init__(self, socket_path: str | Path, api_version: str, limit: int = 100) -> None:
        self.socket_path = str(socket_path)
        self.api_version = api_version
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.socket_path, limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector, base_url="http://localhost")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> UnixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: JsonBody | Mapping[str, Any] | None = None,
        api_version: str | None = None,
    ) -> tuple[int, bytes]:
        params = {"api-version": api_version or self.api_version}
        data: bytes | None = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode() if isinstance(body, Mapping) else body.to_json()
            headers["Content-Type"] = "application/json"
        async with self._session_for_loop().request(
            method, path, params=params, data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise HttpError(error_message(raw, resp.reason), status=resp.status)
            return resp.status, raw

    async def call(
        self,
        method: str,
        path: str,
        parse: Callable[[bytes], T],
        body: JsonBody | Mapping[str, Any] | None = None,
        api_version: str | None = None,
    ) -> T:
        """The answer's body through a wire type's ``parse`` (a ValueError when it does not fit)."""
        _, raw = await self.request(method, path, body, api_version)
        return parse(raw)


def error_message(raw: bytes, reason: str | None) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return reason or "error"
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return reason or "error"
