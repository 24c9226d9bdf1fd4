"""An aiohttp application over Unix sockets with the conventions every Edgeward service shares.

Middlewares, outermost first: the request log (only when debug logging is on, :mod:`.requestlog`), error shape,
per-caller concurrency limit. The api-version check is per route because
each route declares its own range, as aziot's do. Below the app, every connection is admitted against per-caller and
process-wide connection caps, must deliver its request headers within a deadline, and its body within another
(:mod:`.connections`, :mod:`.timeouts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..repeat_log import RepeatLog
from .activation import activated_sockets
from .apiversion import ApiVersions, check_api_version
from .body import reply_object
from .callers import CallerKey, caller_key_of
from .connections import CONNECTION_POLICY, ConnectionGuard, ConnectionLimits, ConnectionPolicy, GuardedRunner
from .errors import HttpError, TooManyRequests
from .internal_errors import InternalErrorLog, route_of
from .limits import UidLimiter
from .requestlog import enabled as request_log_enabled
from .requestlog import request_log
from .timeouts import RequestTimeout, body_deadline, body_timeout

__all__ = [
    "DEFAULT_MAX_BODY",
    "Handler",
    "Listener",
    "RouteTable",
    "UnsafeSocketPath",
    "bind_unix",
    "build_app",
    "error_response",
    "make_runner",
    "start_server",
]

log = logging.getLogger(__name__)
_INTERNAL_ERRORS = InternalErrorLog(log)
# A full or read-only state directory fails every writing request alike, and any caller can repeat one at will:
# the first line per route an interval, the rest counted (a line per request would push the refusals logged next
# out of journald's rate limit).
_STATE_ERRORS = RepeatLog(log, "state directory full or read-only", level=logging.ERROR)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MAX_BODY = 1024 * 1024

_LIMITER_KEY = web.AppKey("edgeward.limiter", UidLimiter)


def error_response(status: int, message: str) -> web.Response:
    return reply_object({"message": message}, status)


class RouteTable:
    """Routes with their api-version range, registered by decorators in each service's ``routes.py``."""

    def __init__(self, known_versions: Iterable[str]) -> None:
        self.known_versions = tuple(sorted(known_versions))
        self._routes: list[tuple[str, str, ApiVersions, Handler]] = []

    def route(self, method: str, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        versions = ApiVersions(
            frozenset(v for v in self.known_versions if v >= since and (until is None or v <= until))
        )

        def register(handler: Handler) -> Handler:
            async def checked(request: web.Request) -> web.StreamResponse:
                check_api_version(request.query.getall("api-version", []), versions)
                return await handler(request)

            checked.__name__ = handler.__name__
            checked.__doc__ = handler.__doc__
            self._routes.append((method, path, versions, checked))
            return handler

        return register

    def get(self, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        return self.route("GET", path, since, until)

    def post(self, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        return self.route("POST", path, since, until)

    def put(self, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, since, until)

    def delete(self, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, since, until)

    def declared(self) -> list[tuple[str, str, frozenset[str]]]:
        """(method, path, versions) of every route: what the OpenAPI check compares against."""
        return [(m, p, v.accepted) for m, p, v, _ in self._routes]

    def install(self, app: web.Application) -> None:
        for method, path, _, handler in self._routes:
            app.router.add_route(method, path, handler)


def _route_key(request: web.Request, what: str) -> str:
    return f"{what} {request.method} {route_of(request)}"


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as e:
        response = error_response(e.status, e.message)
        if getattr(e, "close_connection", False):
            response.force_close()
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: "no such route", 405: f"method {request.method} not allowed on this route"}.get(
            e.status, e.reason
        )
        return error_response(e.status, message)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _STATE_ERRORS.log(_route_key(request, "no space"), "no space left for %s %s: %s", request.method,
                              request.path, e)
            return error_response(507, "no space left on the device for Edgeward's state; free space and retry")
        if e.errno == errno.EROFS:
            _STATE_ERRORS.log(_route_key(request, "read-only"), "read-only state for %s %s: %s", request.method,
                              request.path, e)
            return error_response(503, "Edgeward's state directory is read-only; remount it read-write")
        _INTERNAL_ERRORS.log(request, e)
        return error_response(500, "internal error; see the service log")
    except Exception as e:
        _INTERNAL_ERRORS.log(request, e)
        return error_response(500, "internal error; see the service log")


# A body larger than this, or of no declared length (chunked), is a large one: a caller's large requests are
# handled one at a time (CallerLimiter.enter_large). The bodies of ordinary requests (a sign, a CSR, a module spec)
# are a few KB.
LARGE_BODY = 64 * 1024


def _large_body(request: web.Request) -> bool:
    length = request.content_length
    return length > LARGE_BODY if length is not None else request.body_exists


async def _enter_large(limiter: UidLimiter, key: Hashable, request: web.Request) -> None:
    """Wait for the caller's large-request slot, at most the body deadline: the body stays on the wire meanwhile
    (reading 1 MB bodies costs the loop as much as handling them), and a caller whose earlier large bodies trickle
    in waits on itself only, and only as long as it may take to send one."""
    timeout = body_timeout(request.app)
    try:
        async with asyncio.timeout(timeout):
            await limiter.enter_large(key)
    except TimeoutError:
        raise RequestTimeout(f"the request waited {timeout:g} s behind this caller's earlier large requests; "
                             f"send large bodies one after the other") from None


@web.middleware
async def _caller_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limiter = request.app[_LIMITER_KEY]
    key = caller_key_of(request, request.app[CONNECTION_POLICY].key)
    try:
        await limiter.enter(key)
    except TooManyRequests:
        # Take the body off the wire before refusing, so the caller reads a clean 429 on a connection it can
        # reuse, instead of a reset in the middle of writing its request; a body that does not come in time
        # is cut at the deadline, and its connection closed after the 429.
        with body_deadline(request), contextlib.suppress(Exception):
            await request.read()
        raise
    try:
        if _large_body(request):
            # One deadline for the wait for its turn and the body's arrival (none if the body is all here).
            with body_deadline(request):
                await _enter_large(limiter, key, request)
                try:
                    return await handler(request)
                finally:
                    limiter.leave_large(key)
        if request.content.is_eof():  # the whole body is here (most requests): no deadline to arm
            return await handler(request)
        # The slot is held at most as long as the body takes to arrive, plus the handler's own work.
        with body_deadline(request):
            return await handler(request)
    finally:
        limiter.leave(key)


def build_app(
    routes: RouteTable,
    max_body: int = DEFAULT_MAX_BODY,
    limiter: UidLimiter | None = None,
    *,
    caller_key: CallerKey | None = None,
    connection_limits: ConnectionLimits | None = None,
    connection_guard: ConnectionGuard | None = None,
) -> web.Application:
    """The app of one service.

    ``caller_key`` says who a caller is, for the request and connection limits (default: the limiter's, by default
    the socket and the peer's uid); ``connection_limits`` default to :meth:`ConnectionLimits.from_environ`;
    ``connection_guard`` defaults to the process's. Serve it with :func:`start_server` or :func:`make_runner`,
    which enforce the connection limits.
    """
    limiter = limiter or UidLimiter()
    limits = (connection_limits or ConnectionLimits.from_environ()).capped(limiter.max_connections)
    # Decided once, here: at the default level a request pays nothing for a log line nobody will see.
    logged = [request_log] if request_log_enabled() else []
    app = web.Application(
        client_max_size=max_body,
        middlewares=[*logged, _error_middleware, _caller_limit_middleware],
        # aiohttp closes a connection that has not delivered a complete request line and headers this long after
        # it connected or got its previous response: the header deadline, and the bound on idle keep-alive.
        # What remains of a body nobody read is drained for at most lingering_time, then the connection closes.
        # Header lines are capped in number and length well below aiohttp's defaults (128 of 8 KB: a megabyte a
        # connection, held while it dawdles); their sum by the connection handler (ConnectionLimits.max_head).
        handler_args={"keepalive_timeout": limits.header_timeout,
                      "lingering_time": min(limits.body_timeout, 2.0),
                      "max_line_size": limits.max_field_size,
                      "max_field_size": limits.max_field_size,
                      "max_headers": limits.max_header_fields},
    )
    app[_LIMITER_KEY] = limiter
    key = caller_key or limiter.caller_key
    app[CONNECTION_POLICY] = ConnectionPolicy(limits, key, connection_guard)
    routes.install(app)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner every Edgeward listener is served by: its sites admit connections against the connection caps."""
    return GuardedRunner(app)


@dataclass(frozen=True)
class Listener:
    """Where a service listens: a socket path, or a name among the sockets systemd passed us."""

    path: Path
    mode: int = 0o660
    activation_name: str | None = None


class UnsafeSocketPath(RuntimeError):
    """A socket's path holds something that is not the socket Edgeward binds (planted, or swapped in): refused,
    never replaced or followed."""


def bind_unix(path: Path, mode: int, backlog: int = 1024) -> socket.socket:
    """A listening socket at ``path`` with ``mode``; a stale socket there is replaced, anything else refused.

    The mode is set through the socket's own inode, never by path: whoever can write the directory could otherwise
    put a symlink there between the bind and the chmod and have this process (root) chmod its target.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
        else:
            raise UnsafeSocketPath(f"{path} exists and is not a socket; refusing to replace it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a restrictive umask so the socket is never briefly reachable with wider permissions.
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        _chmod_socket(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _chmod_socket(path: Path, mode: int) -> None:
    """chmod the socket at ``path`` without following a symlink: opened as the entry itself (O_PATH|O_NOFOLLOW),
    checked to be a socket of this process's uid, and changed through /proc/self/fd (fchmod refuses O_PATH
    descriptors). Anything else there now was swapped in after the bind: refused, left as it is."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise UnsafeSocketPath(f"{path} is not the socket just bound there (replaced after the bind?); "
                                   f"refusing to change its mode")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


async def start_server(app: web.Application, listeners: Iterable[Listener]) -> web.AppRunner:
    """Start serving ``app`` on every listener; the caller owns the returned runner and must clean it up."""
    runner = make_runner(app)
    await runner.setup()
    passed = activated_sockets()
    for listener in listeners:
        sock = passed.get(listener.activation_name or "") if listener.activation_name else None
        if sock is None:
            sock = bind_unix(listener.path, listener.mode)
        site = web.SockSite(runner, sock)
        await site.start()
        log.info("listening on %s", listener.path)
    return runner
