"""Request bodies read against a deadline, so a caller trickling a body cannot hold a handler (and the concurrency
slot it runs in) for longer than the deadline."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .connections import CONNECTION_POLICY, ConnectionLimits
from .errors import HttpError

__all__ = ["RequestTimeout", "read_request_body"]


class RequestTimeout(HttpError):
    """The body did not arrive in time; the connection is closed after the answer, since what is left of the body
    on the wire can no longer be told apart from a next request."""

    status = 408
    close_connection = True


def body_timeout_of(app: web.Application) -> float:
    policy = app.get(CONNECTION_POLICY)
    return (policy.limits if policy is not None else ConnectionLimits()).body_timeout


async def read_request_body(request: web.Request) -> bytes:
    """The whole body (aiohttp keeps it, so a second read is free), or a 408 once the deadline passes."""
    timeout = body_timeout_of(request.app)
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
