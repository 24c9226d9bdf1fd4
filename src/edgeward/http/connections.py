"""How many connections each caller (and everyone together) may hold open, and how long a connection may take to
deliver its request.

Counting connections per caller key (see :mod:`.callers`), with a cap for the whole process, keeps one caller's
thousands of idle or stalled sockets from using up the file descriptors every other caller needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config.problems import ConfigError
from .callers import CallerKey, by_socket_and_uid, describe_caller, peer_of

__all__ = [
    "CONNECTION_POLICY",
    "ConnectionGuard",
    "ConnectionLimits",
    "ConnectionPolicy",
    "GuardedRunner",
    "process_guard",
]

log = logging.getLogger(__name__)

def _positive(env: Mapping[str, str], name: str, default: Any, kind: type[int] | type[float],
              problems: list[str]) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        problems.append(f"{name}={raw!r}: expected a {'whole ' if kind is int else ''}number greater than zero")
        return default
    return value


def _fd_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 8192
    return max(64, min(8192, soft * 3 // 4))  # a quarter of the descriptors stay for files, engines, backends


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and connection caps of every Edgeward HTTP listener.

    ``header_timeout``: seconds a connection may take to deliver a request line and headers, counted from connect
    or from the previous response (so it also bounds idle keep-alive connections). ``body_timeout``: seconds a
    handler waits for a request body. ``per_caller`` open connections per caller key; ``total`` for the process.
    """

    header_timeout: float = 20.0
    body_timeout: float = 10.0
    per_caller: int = 2048
    total: int = 8192

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> ConnectionLimits:
        """Defaults, overridden by ``EDGEWARD_HTTP_*`` variables (set in the service unit); a bad value stops the
        daemon at start rather than silently leaving a limit off."""
        env = os.environ if env is None else env
        problems: list[str] = []
        total = _positive(env, "EDGEWARD_HTTP_MAX_CONNECTIONS", _fd_budget(), int, problems)
        limits = cls(
            header_timeout=_positive(env, "EDGEWARD_HTTP_HEADER_TIMEOUT", cls.header_timeout, float, problems),
            body_timeout=_positive(env, "EDGEWARD_HTTP_BODY_TIMEOUT", cls.body_timeout, float, problems),
            per_caller=_positive(env, "EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER", max(1, min(2048, total // 4)), int,
                                 problems),
            total=total,
        )
        if problems:
            raise ConfigError(problems, "the environment")
        return limits


@dataclass
class ConnectionGuard:
    """Open connections per caller key and in total; one per process, shared by every listener, because the file
    descriptors it protects are the process's."""

    total: int
    open: dict[Hashable, int] = field(default_factory=dict)
    count: int = 0
    _last_log: dict[Hashable, float] = field(default_factory=dict)

    def admit(self, key: Hashable, per_caller: int) -> tuple[int, str] | None:
        """None if the connection may stay, else the (status, message) it is closed with."""
        if self.count >= self.total:
            refusal = (503, f"the service holds its limit of {self.total} open connections; retry later")
        elif self.open.get(key, 0) >= per_caller:
            refusal = (429, f"too many open connections from this caller (limit {per_caller}); close idle "
                            "connections and retry")
        else:
            self.open[key] = self.open.get(key, 0) + 1
            self.count += 1
            return None
        self._log_refusal(key, refusal[1])
        return refusal

    def release(self, key: Hashable) -> None:
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)
        self.count -= 1

    def _log_refusal(self, key: Hashable, message: str) -> None:
        # One line per caller per 10 s: a flood must not turn into a flood of log lines.
        now = time.monotonic()
        if now - self._last_log.get(key, -10.0) >= 10.0:
            self._last_log[key] = now
            if len(self._last_log) > 4096:
                self._last_log = {k: t for k, t in self._last_log.items() if now - t < 10.0}
            log.warning("connection refused for %s: %s", describe_caller(key), message)


_process_guard: ConnectionGuard | None = None


@dataclass(frozen=True)
class ConnectionPolicy:
    """What an app's listeners enforce: deadlines and caps, the caller key, and the guard counting connections
    (None: the process's)."""

    limits: ConnectionLimits
    key: CallerKey = by_socket_and_uid
    guard: ConnectionGuard | None = None


CONNECTION_POLICY = web.AppKey("edgeward.connection_policy", ConnectionPolicy)


def process_guard() -> ConnectionGuard:
    """The process's guard, sized by ``EDGEWARD_HTTP_MAX_CONNECTIONS`` when first needed."""
    global _process_guard
    if _process_guard is None:
        _process_guard = ConnectionGuard(ConnectionLimits.from_environ().total)
    return _process_guard


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    reason = {429: "Too Many Requests", 503: "Service Unavailable"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


_NOT_ADMITTED: Hashable = object()


class _GuardedServer(web.Server):
    """aiohttp's connection manager, admitting each connection against the guard before a byte of it is read."""

    def __init__(self, inner: web.Server, guard: ConnectionGuard, key: CallerKey, per_caller: int) -> None:
        super().__init__(inner.request_handler, request_factory=inner.request_factory,
                         handler_cancellation=inner.handler_cancellation, **inner._kwargs)
        self._guard, self._key, self._per_caller = guard, key, per_caller
        self._admitted: dict[object, Hashable] = {}

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        refusal: tuple[int, str] | None
        try:
            key = self._key(peer_of(transport))
        except Exception:  # a caller that cannot be told apart is not admitted
            log.exception("cannot tell who is calling on %s", transport.get_extra_info("sockname"))
            key, refusal = _NOT_ADMITTED, (503, "the service cannot identify this caller")
        else:
            refusal = self._guard.admit(key, self._per_caller)
        if refusal is None:
            self._admitted[handler] = key
            return
        # Answered and closed at once, unread: an over-limit caller gets a clear refusal and holds no descriptor.
        transport.write(_refusal(*refusal))
        transport.close()

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        key = self._admitted.pop(handler, _NOT_ADMITTED)
        if key is not _NOT_ADMITTED:
            self._guard.release(key)
        super().connection_lost(handler, exc)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose every site (those added later, like the workload sockets, included) admits connections
    through the process's connection guard, under the app's caller key and limits."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app, access_log=None, handle_signals=False)

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        policy = self.app.get(CONNECTION_POLICY) or ConnectionPolicy(ConnectionLimits.from_environ())
        return _GuardedServer(inner, policy.guard or process_guard(), policy.key, policy.limits.per_caller)
