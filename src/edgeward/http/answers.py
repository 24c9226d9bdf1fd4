"""Reading a remote peer's answer (a cloud service, an EST server) whole but bounded."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

__all__ = ["read_capped"]


async def read_capped(resp: aiohttp.ClientResponse, cap: int, too_big: Callable[[], Exception]) -> bytes:
    """A peer's whole answer, however it is chunked (``content.read(n)`` returns only what is buffered so far), or
    ``too_big()`` raised as soon as it passes ``cap`` (a declared length past it is refused before reading); the
    caller's timeout bounds an answer that never ends."""
    if resp.content_length is not None and resp.content_length > cap:
        raise too_big()
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > cap:
            raise too_big()
    return bytes(body)
