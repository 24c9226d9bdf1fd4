"""A deadline on every request body, so a caller trickling one cannot hold a handler (and the concurrency slot it
runs in) for longer than the deadline, whichever way the handler reads the body."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from .connections import CONNECTION_POLICY, ConnectionLimits
from .errors import HttpError

__all__ = ["RequestTimeout", "body_deadline", "body_timeout"]


class RequestTimeout(HttpError, TimeoutError):
    """The body did not arrive in time. The connection is closed after the answer: what is left of the body on the
    wire can no longer be told apart from a next request.

    A TimeoutError too, so aiohttp's drain of an unread body after the response treats it as the timeout it is
    (closes quietly) rather than as a handler crash."""

    status = 408
    close_connection = True


def body_timeout(app: web.Application) -> float:
    policy = app.get(CONNECTION_POLICY)
    return (policy.limits if policy is not None else ConnectionLimits()).body_timeout


@contextmanager
def body_deadline(request: web.Request) -> Iterator[None]:
    """Within the block, a body that has not fully arrived ``body_timeout`` seconds after entering it fails every
    read of it (the one waiting and any later one) with :class:`RequestTimeout`."""
    content = request.content
    if content.is_eof():  # no body, or all of it already here
        yield
        return
    timeout = body_timeout(request.app)

    def expire() -> None:
        if not content.is_eof():
            content.set_exception(RequestTimeout(f"the request body did not arrive within {timeout:g} s"))

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        yield
    finally:
        handle.cancel()
