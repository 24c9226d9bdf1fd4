"""One debug line per request: which service, what was asked (method and route), what it got (status), how long it
took, and who asked (the caller as the access guard knows it).

The route is the matched route template (``/keypair/{keyId}``), never the path with its ids, and never the query
string or a body: key handles, SAS data and key bytes travel in bodies, and a template cannot carry them. Only a
request that matched no route shows its path (percent-encoded, cut short, without the query), which is what an
operator needs to see why a client got a 404.

The middleware is installed only when debug logging is on when the app is built (`build_app`), so a daemon at the
default level pays nothing per request; `edgeward system set-log-level` restarts the services anyway. Refusals are
not this module's: they are one INFO line each from the refusal recorder (`access.refusals`), rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import PurePath

from aiohttp import web

from .peercred import caller_of

__all__ = ["CALLER", "SERVICE", "enabled", "request_log"]

log = logging.getLogger("edgeward.requests")

SERVICE = web.AppKey("edgeward.http.service", str)
"""The service's name in the access table (keyd, certd, identityd, tpmd, mgmt, workload), set by the guard."""

CALLER: web.RequestKey[Callable[[], str]] = web.RequestKey("edgeward.http.caller")
"""Says who the caller is, in words, when asked: set by the guard once it classified the caller (a callable, so a
request costs no string formatting unless it is logged)."""

_MAX_PATH = 200


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def _service(request: web.Request) -> str:
    name = request.app.get(SERVICE)
    if name is not None:
        return name
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return PurePath(sockname).name if isinstance(sockname, str) and sockname else "-"


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    return f"(no route) {request.rel_url.raw_path[:_MAX_PATH]!r}"


def _caller(request: web.Request) -> str:
    describe: Callable[[], str] | None = request.get(CALLER)
    if describe is not None:
        return describe()
    try:  # refused before the guard ran (no route, the per-caller limit): the kernel's word only
        who = caller_of(request)
    except OSError:
        return "unknown (the connection is gone)"
    return f"pid {who.pid} uid {who.uid} (not classified)"


@web.middleware
async def request_log(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    start = time.perf_counter()
    status: int | str = "error"
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = "cancelled (the client went away)"
        raise
    finally:
        log.debug("%s %s %s -> %s in %.1f ms; caller %s", _service(request), request.method, _route(request),
                  status, (time.perf_counter() - start) * 1000, _caller(request))
