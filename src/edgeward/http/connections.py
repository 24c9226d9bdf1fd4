"""How many connections each caller (and everyone together) may hold open, how long a connection may take to
deliver its request, and how much of it.

Counting connections per caller key (see :mod:`.callers`), with a cap for the whole process, keeps one caller's
thousands of idle or stalled sockets from using up the file descriptors every other caller needs. Callers that are
neither the host nor a module count together per socket (:class:`.callers.Strangers`), and each uid that is neither
root, the daemon's nor a module's has a budget of connections that get no successful answer: past it, its
connections are closed as they are accepted, before anything is read or looked up for them
(:class:`StrangerBudget`), so a connect/close loop costs the daemon a getsockopt and a close per connection instead
of an attestation, and the listen queue drains faster than one user can fill it.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import json
import logging
import math
import os
import resource
import socket
import struct
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..attest.namespaces import is_host_process
from ..config.problems import ConfigError
from .body import reply_object
from .callers import (
    CallerKey,
    HostCaller,
    LocalCaller,
    ModuleCaller,
    Peer,
    Strangers,
    attested_module,
    by_socket_and_uid,
    describe_caller,
    in_host_user_namespace,
    is_host_caller,
    peer_of,
    remember_key,
)
from .peercred import Caller, connection_closed, note_accepted

__all__ = [
    "CONNECTION_POLICY",
    "ConnectionGuard",
    "ConnectionLimits",
    "ConnectionPolicy",
    "GuardedRunner",
    "StrangerBudget",
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
    handler waits for a request body. ``per_caller`` open connections per caller key; ``total`` for the process,
    of which ``host_reserve`` only host callers (root or the daemon's uid, in the host's namespaces, on a shared
    socket) may use, so no set of modules can lock the host's operator and agents out. ``per_stranger``: open
    connections of all the strangers of one socket together (:class:`.callers.Strangers`: on a socket that serves
    modules, whoever is neither the host nor attested as a module served there; on any socket, a caller in a user
    namespace that is neither the host's nor a module's): they will only ever be refused, and need no more to read
    that. ``stranger_burst`` and ``stranger_rate``: connections a uid that is neither root, the daemon's nor a
    module's may open without a successful answer, at once and then per second, before its connections are closed
    unread as they are accepted. ``max_head``: bytes of a request line and headers, in all; ``max_header_fields``
    and ``max_field_size``: how many header lines, and how long each may be (aiohttp's defaults are 128 of 8 KB, a
    megabyte a connection; aziot's clients, the IoT SDKs and the edge agent send well under 2 KB).
    """

    header_timeout: float = 20.0
    body_timeout: float = 10.0
    per_caller: int = 256
    total: int = 8192
    host_reserve: int = 256
    per_stranger: int = 8
    stranger_burst: int = 64
    stranger_rate: float = 16.0
    max_head: int = 32 * 1024
    max_header_fields: int = 64
    max_field_size: int = 8190

    def capped(self, per_caller: int | None) -> ConnectionLimits:
        """These limits with at most ``per_caller`` connections per caller (a service's configured
        ``max_requests``); None changes nothing."""
        if per_caller is None or per_caller >= self.per_caller:
            return self
        return replace(self, per_caller=per_caller, per_stranger=min(self.per_stranger, per_caller))

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> ConnectionLimits:
        """Defaults, overridden by ``EDGEWARD_HTTP_*`` variables (set in the service unit); a bad value stops the
        daemon at start rather than silently leaving a limit off."""
        env = os.environ if env is None else env
        problems: list[str] = []
        total = _positive(env, "EDGEWARD_HTTP_MAX_CONNECTIONS", _fd_budget(), int, problems)
        # A module rarely needs more than ~100 connections at once; sixteen callers at their cap fill the process.
        share = max(1, min(256, total // 16))
        limits = cls(
            header_timeout=_positive(env, "EDGEWARD_HTTP_HEADER_TIMEOUT", cls.header_timeout, float, problems),
            body_timeout=_positive(env, "EDGEWARD_HTTP_BODY_TIMEOUT", cls.body_timeout, float, problems),
            per_caller=_positive(env, "EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER", share, int, problems),
            total=total,
            host_reserve=_positive(env, "EDGEWARD_HTTP_HOST_RESERVED_CONNECTIONS", share, int, problems),
            per_stranger=_positive(env, "EDGEWARD_HTTP_MAX_CONNECTIONS_PER_STRANGER", cls.per_stranger, int,
                                   problems),
            stranger_burst=_positive(env, "EDGEWARD_HTTP_STRANGER_CONNECT_BURST", cls.stranger_burst, int, problems),
            stranger_rate=_positive(env, "EDGEWARD_HTTP_STRANGER_CONNECT_RATE", cls.stranger_rate, float, problems),
            max_head=_positive(env, "EDGEWARD_HTTP_MAX_HEADER_BYTES", cls.max_head, int, problems),
        )
        if not problems and limits.host_reserve >= limits.total:
            problems.append(f"EDGEWARD_HTTP_HOST_RESERVED_CONNECTIONS={limits.host_reserve}: must be less than "
                            f"the {limits.total} connections of EDGEWARD_HTTP_MAX_CONNECTIONS")
        if problems:
            raise ConfigError(problems, "the environment")
        return replace(limits, per_stranger=min(limits.per_stranger, limits.per_caller))  # never above a module


Close = Callable[[], None]


@dataclass
class StrangerBudget:
    """Connections each uid that is neither root, the daemon's nor a module's may open that get no successful
    answer (refused, or closed without a request): ``burst`` at once, then ``rate`` a second. A uid that has spent
    it has its connections closed as they are accepted, unread and unlooked-up (:class:`_AdmittingSocket`): no
    attestation, no aiohttp handler, no answer, no audit record; a log line per uid every 10 s says so.

    Callers in a user namespace that is neither the host's nor a module's spend from one budget together
    (``NAMESPACED``), not one per uid: a user with a subordinate range is thousands of uids. Their connections are
    told apart at accept only while that budget is dry (one read of /proc/<pid>/uid_map).

    A connection is charged when it is admitted as a stranger's or a shared socket's local user's, and refunded
    when it gets a successful answer: a host principal that keeps getting answers never runs dry, however often it
    connects. Root and the daemon's uid are never charged, nor dropped; nor is a uid a module's process was
    attested under in the last ``MODULE_MEMORY`` seconds. Past ``MAX_UIDS`` uids, the rest share one budget.
    """

    burst: int = 64
    rate: float = 16.0
    dropped: int = 0
    _left: dict[int | None, tuple[float, float]] = field(default_factory=dict)  # bucket -> (connections left, at)
    _modules: dict[int, float] = field(default_factory=dict)  # uid -> when last attested as a module's
    _last_log: dict[int | None, float] = field(default_factory=dict)
    _exempt: frozenset[int] = field(default_factory=lambda: frozenset({0, os.getuid()}))
    _recent_pids: dict[int, tuple[float, bool]] = field(default_factory=dict)

    MAX_UIDS = 16384
    RECENT = 0.1
    MODULE_MEMORY = 600.0
    NAMESPACED = -2  # the bucket of callers in user namespaces that are neither the host's nor a module's

    def _now_left(self, bucket: int | None, now: float) -> float:
        entry = self._left.get(bucket)
        return self.burst if entry is None else min(self.burst, entry[0] + (now - entry[1]) * self.rate)

    def _dry(self, bucket: int | None, now: float) -> bool:
        return bucket in self._left and self._now_left(bucket, now) < 1

    def exhausted(self, uid: int, pid: int = 0) -> bool:
        """At accept, before anything else: whether this connection (its peer's uid and pid) is to be closed
        unread (then counted)."""
        if not self._left or uid in self._exempt:
            return False  # the common case: nobody is spending
        now = time.monotonic()
        bucket: int | None = uid
        if uid in self._left:
            dry = self._dry(uid, now)
        elif self._dry(self.NAMESPACED, now) and self._namespaced(pid, uid, now):
            dry, bucket = True, self.NAMESPACED
        else:
            dry, bucket = len(self._left) >= self.MAX_UIDS and self._dry(None, now), None
        if not dry or now - self._modules.get(uid, -math.inf) < self.MODULE_MEMORY:
            return False
        self.dropped += 1
        if now - self._last_log.get(bucket, -10.0) >= 10.0:  # a line per budget (not per uid) every 10 s
            if len(self._last_log) > 4096:
                self._last_log = {k: t for k, t in self._last_log.items() if now - t < 10.0}
            self._last_log[bucket] = now
            whose = {self.NAMESPACED: f"uid {uid}'s user namespace (neither the host's nor a module's)",
                     None: f"uids beyond the first {self.MAX_UIDS}"}.get(bucket, f"uid {uid}")
            log.warning("connections of %s are closed unread as they are accepted: more than %d (then %g a second) "
                        "got no successful answer (%d closed so far)", whose, self.burst, self.rate, self.dropped)
        return True

    def _namespaced(self, pid: int, uid: int, now: float) -> bool:
        """Whether the peer is in a user namespace that is not the host's; remembered per pid for ``RECENT`` s (a
        churning process's connections come from one pid, and a pid is not used again so soon)."""
        known = self._recent_pids.get(pid)
        if known is not None and now - known[0] < self.RECENT:
            return known[1]
        if len(self._recent_pids) >= 1024:
            self._recent_pids = {}
        namespaced = not in_host_user_namespace(Caller(pid, uid, -1))
        self._recent_pids[pid] = (now, namespaced)
        return namespaced

    def spend(self, uid: int, *, namespaced: bool = False) -> int | None:
        """Charge a connection admitted as a stranger's; the bucket it was charged to (None: none), to refund."""
        if uid in self._exempt:
            return None
        now = time.monotonic()
        bucket: int | None = self.NAMESPACED if namespaced else uid
        if bucket not in self._left and len(self._left) >= self.MAX_UIDS:  # forget the uids that are whole again
            self._left = {k: v for k, v in self._left.items() if self._now_left(k, now) < self.burst}
            if len(self._left) >= self.MAX_UIDS:
                bucket = None
        self._left[bucket] = (self._now_left(bucket, now) - 1, now)
        return bucket if bucket is not None else -1

    def refund(self, bucket: int) -> None:
        key = None if bucket == -1 else bucket
        if key in self._left:
            now = time.monotonic()
            self._left[key] = (min(self.burst, self._now_left(key, now) + 1), now)

    def note_module(self, uid: int) -> None:
        if uid not in self._exempt:
            if len(self._modules) > 4096:
                self._modules = {}
            self._modules[uid] = time.monotonic()


_BUDGETS: weakref.WeakKeyDictionary[socket.socket, StrangerBudget] = weakref.WeakKeyDictionary()
_CREDS = struct.Struct("3i")


class _AdmittingSocket(socket.socket):
    """A listening socket whose accept closes, unread, the connections of uids that have spent their budget, before
    asyncio makes a task, a transport and a protocol of them: the cheapest a refusal can be, so one user's
    connect/close loop cannot keep the listen queue full for everyone else. A listening socket's class is switched
    to this one when a guarded runner starts serving it (same layout; its owner keeps the same object)."""

    __slots__ = ()
    # Then the event loop gets a turn (epoll reports the socket again at once if more wait): about a millisecond.
    # More per turn drains a churned socket's queue faster (1,024: root's connects on it 52% -> 71% through) but
    # stalls every other socket's callers behind the drain (root's keyd sign p50 50 ms -> 230 ms under c08).
    DROPS_PER_CALL = 128

    def accept(self) -> tuple[socket.socket, Any]:
        budget = _BUDGETS.get(self)
        if budget is None:
            return super().accept()
        for _ in range(self.DROPS_PER_CALL):
            fd, address = self._accept()  # type: ignore[attr-defined]  # the descriptor, no socket object yet
            # A bare _socket over the descriptor: no socket.socket to build for a connection about to be closed.
            probe = _socket.socket(self.family, self.type, self.proto, fd)
            try:
                pid, uid, _ = _CREDS.unpack(probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
            except OSError:
                pid = uid = -1  # admission refuses what it cannot identify, with an answer
            if uid == -1 or not budget.exhausted(uid, pid):
                probe.detach()
                conn = socket.socket(self.family, self.type, self.proto, fileno=fd)
                if socket.getdefaulttimeout() is None and self.gettimeout():
                    conn.setblocking(True)
                return conn, address
            probe.close()
        raise BlockingIOError(errno.EAGAIN, "over-budget connections closed; the rest on the loop's next turn")


def _serve_admitting(sock: socket.socket, budget: StrangerBudget) -> None:
    if type(sock) is socket.socket and sock.family == socket.AF_UNIX:
        sock.__class__ = _AdmittingSocket
    if isinstance(sock, _AdmittingSocket):
        _BUDGETS[sock] = budget


@dataclass
class ConnectionGuard:
    """Open connections per caller key and in total; one per process, shared by every listener, because the file
    descriptors it protects are the process's.

    Callers other than the host share ``total - host_reserve`` connections. When those are all held, a caller
    still below its fair share (the shared connections divided among the callers holding some) takes one from the
    caller furthest above it: its oldest connection is closed. A flood of many callers therefore cannot keep out a
    caller that stays within its share, and nobody below their share is ever cut to make room.
    """

    total: int
    host_reserve: int = 0
    count: int = 0
    budget: StrangerBudget = field(default_factory=StrangerBudget)
    _held: dict[Hashable, dict[Hashable, Close | None]] = field(default_factory=dict)
    _hosts: set[Hashable] = field(default_factory=set)
    _last_log: dict[Hashable, float] = field(default_factory=dict)

    @property
    def open(self) -> dict[Hashable, int]:
        return {key: len(held) for key, held in self._held.items()}

    def admit(self, key: Hashable, per_caller: int, token: Hashable | None = None, close: Close | None = None, *,
              host: bool = False, who: str | None = None) -> tuple[int, str] | None:
        """None if the connection (``token``; ``close`` closes it if it has to make room) may stay, else the
        (status, message) it is refused with; ``who`` names the process asking, in the log line of a refusal."""
        held = self._held.get(key, {})
        refusal: tuple[int, str] | None = None
        if len(held) >= per_caller:
            refusal = (429, f"too many open connections from this caller (limit {per_caller}); close idle "
                            "connections and retry")
        elif self.count >= (self.total if host else self.total - self.host_reserve) and not self._make_room(
                len(held) + 1, host, newcomer=not host and not held):
            refusal = (503, f"the service holds its limit of {self.total} open connections; retry later")
        if refusal is not None:
            self._log_once(key, f"connection refused for {describe_caller(key)}{f' ({who})' if who else ''}: "
                                f"{refusal[1]}")
            return refusal
        self._held.setdefault(key, {})[object() if token is None else token] = close
        if host:
            self._hosts.add(key)
        self.count += 1
        return None

    def release(self, key: Hashable, token: Hashable | None = None) -> None:
        """The connection ended; a connection already closed to make room was released then."""
        held = self._held.get(key)
        if not held:
            return
        if token is None:
            token = next(iter(held))
        elif token not in held:
            return
        del held[token]
        self.count -= 1
        if not held:
            del self._held[key]
            self._hosts.discard(key)

    def _fair_share(self, newcomer: bool) -> int:
        callers = sum(1 for key in self._held if key not in self._hosts) + newcomer
        return max(1, (self.total - self.host_reserve) // max(1, callers))

    def _make_room(self, wanted: int, host: bool, newcomer: bool) -> bool:
        """Close the oldest connection of the caller furthest above its fair share, if the one asking stays within
        its own with this connection (the host always does); whether room was made."""
        candidates = [key for key in self._held if key not in self._hosts]
        if not candidates:
            return False
        share = self._fair_share(newcomer)
        if not host and wanted > share:
            return False
        victim = max(candidates, key=lambda key: len(self._held[key]))
        if len(self._held[victim]) <= share:
            return False
        token, close = next(iter(self._held[victim].items()))
        self.release(victim, token)
        self._log_once(victim, f"connection of {describe_caller(victim)} closed to make room: it holds more than "
                               f"its fair share of {share} connections while the service is full")
        if close is not None:
            close()
        return True

    def _log_once(self, key: Hashable, message: str) -> None:
        # One line per caller per 10 s: a flood must not turn into a flood of log lines.
        now = time.monotonic()
        if now - self._last_log.get(key, -10.0) >= 10.0:
            self._last_log[key] = now
            if len(self._last_log) > 4096:
                self._last_log = {k: t for k, t in self._last_log.items() if now - t < 10.0}
            log.warning("%s", message)


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
        limits = ConnectionLimits.from_environ()
        _process_guard = ConnectionGuard(limits.total, limits.host_reserve,
                                         budget=StrangerBudget(limits.stranger_burst, limits.stranger_rate))
    return _process_guard


def with_host(head: bytes, end: int) -> bytes:
    """``head`` (a request whose head ends at ``end``, its blank line) with ``Host: localhost`` added when it is an
    HTTP/1.1 request without one. No route reads Host: a Unix socket's peer is known by its credentials."""
    line_end = head.find(b"\r\n")
    if not head[:line_end].endswith(b" HTTP/1.1") or b"\r\nhost:" in head[line_end:end + 2].lower():
        return head
    return head[:line_end + 2] + b"Host: localhost\r\n" + head[line_end + 2:]


def _refusal(status: int, message: str) -> bytes:
    body = json.dumps({"message": message}).encode()
    reason = {429: "Too Many Requests", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


def _record_refusal(peer: Peer, key: Hashable, status: int, message: str) -> None:
    """Into the refusal trail (rate-limited log line and audit record), as the access table's refusals are."""
    # Here, not at import: the access package builds on this one.
    from ..access.refusals import refusals  # noqa: PLC0415

    if isinstance(key, ModuleCaller):
        module: str | None = key.module
        where = f"module {key.module}"
    elif isinstance(key, Strangers) and not in_host_user_namespace(peer.caller):
        module, where = None, "elsewhere"  # one budget of audit records for every uid of such namespaces
    else:
        module = None
        host = isinstance(key, HostCaller) or (isinstance(key, LocalCaller) and key.host)
        where = "host" if host or (peer.caller.pid > 0 and is_host_process(peer.caller.pid)) else "elsewhere"
    refusals.record(service="connections", pid=peer.caller.pid, uid=peer.caller.uid, where=where, module=module,
                    step="connection_cap" if status == 429 else "connection_total", route=f"connect {peer.sockname}",
                    status=status, message=message)


def _pooled(peer: Peer, key: Hashable) -> Hashable:
    """The key a caller that is not the host counts under: strangers of a socket together, one pool however many
    uids they are; a local user of the host's user namespace on a shared socket (a host principal, say) by its uid,
    as before, since it is one uid."""
    if isinstance(key, LocalCaller):
        return key if key.host else Strangers(key.sockname)
    if isinstance(key, ModuleCaller | Strangers) or in_host_user_namespace(peer.caller):
        return key
    return key if attested_module(peer) is not None else Strangers(peer.sockname)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, admitted against the guard before it starts: a refused connection is answered
    and closed without ever starting aiohttp's request task (which would otherwise fail on the closed connection
    and log a traceback per refusal). A request line and headers longer than ``max_head`` in all are answered 431
    and the connection closed as soon as the bytes arrive (aiohttp bounds each line and their number, not their
    sum).

    The count starts again when a chunk completes a request, and what that chunk held past the request cannot be
    told from the parser: each read takes at most ``READ_SIZE`` bytes, so that uncounted remainder is bounded
    (h/brk14a F1: behind a tiny complete request, one 256 KB read left ~240 KB of the next head uncounted).

    The first request's head is held until it is complete, and an HTTP/1.1 one without Host gets one: aziot's
    synchronous key client (the aziot_keys OpenSSL engine, aziotctl, edgelet's edge-CA signing) sends none, which
    hyper serves and aiohttp's parser refuses. That client opens a connection per request; later requests on a
    connection go to the parser as they come."""

    READ_SIZE = 32 * 1024

    def __init__(self, manager: _GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.charged: int | None = None  # the budget this connection was charged to, refunded by a successful answer
        self._max_head = manager.limits.max_head
        self._max_lines = manager.limits.max_header_fields + 1  # and the request line
        self._head_bytes = 0
        self._last_payload: Any = None  # the last request's body: its head is done, its body may still come
        self._first_head: bytes | None = b""  # the first request's head, held until complete (None: passed on)

    def data_received(self, data: bytes) -> None:
        if self._first_head is not None:
            held = self._first_head + data
            end = held.find(b"\r\n\r\n")
            if end < 0:
                # held within the caps the parser would apply to it: the total, and the number of lines
                if len(held) <= self._max_head and held.count(b"\n") <= self._max_lines:
                    self._first_head = held
                    return
                self._first_head = None
                self._refuse_head()
                return
            self._first_head = None
            data = with_host(held, end)
        awaiting_head = self._last_payload is None or self._last_payload.is_eof()
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._head_bytes = 0
            self._last_payload = self._messages[-1][1] if self._messages else None
        elif awaiting_head and not self._force_close:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._refuse_head()

    def _refuse_head(self) -> None:
        if self.transport is not None:
            self.transport.write(_refusal(431, f"request line and headers over {self._max_head} bytes"))
            self.force_close()

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self.charged is not None and resp.status < 400 and isinstance(self._manager, _GuardedServer):
            self._manager.budget.refund(self.charged)
            self.charged = None
        return result

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        assert isinstance(manager, _GuardedServer)
        if manager.admit(self, cast(asyncio.Transport, transport)):
            if hasattr(transport, "max_size"):  # asyncio's selector transport: what one recv() may take
                transport.max_size = self.READ_SIZE
            super().connection_made(transport)
        else:
            self._manager = None  # nothing was set up: connection_lost has nothing to undo

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or a failure outside every handler) is answered in the API's own
        shape, {"message": ...}, and without aiohttp's text, which echoes the caller's bytes back. aiohttp's
        reply would do the logging (rate-limited: edgeward.http.logfilter) and close the connection."""
        super().handle_error(request, status, exc, message)
        text = "malformed HTTP request" if 400 <= status < 500 else "internal error; see the service log"
        response = reply_object({"message": text}, status)
        response.force_close()
        return response


class _GuardedServer(web.Server):
    """aiohttp's connection manager, admitting each connection against the guard before a byte of it is read."""

    def __init__(self, inner: web.Server, guard: ConnectionGuard, policy: ConnectionPolicy) -> None:
        super().__init__(inner.request_handler, request_factory=inner.request_factory,
                         handler_cancellation=inner.handler_cancellation, **inner._kwargs)
        self._guard, self._policy = guard, policy
        self.limits, self.budget = policy.limits, guard.budget
        self._admitted: dict[RequestHandler, Hashable] = {}

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: RequestHandler, transport: asyncio.Transport) -> bool:
        """Whether the connection may go on; if not, it has been answered and closed."""
        refusal: tuple[int, str] | None
        peer: Peer | None = None
        key: Hashable = None
        note_accepted(transport)
        try:
            peer = peer_of(transport)
            key = self._policy.key(peer)
            # A key that says who a module's socket is serving has already told the host apart (never its reserve).
            host = not isinstance(key, ModuleCaller | LocalCaller) and is_host_caller(peer.caller)
            # No kernel-vouched identity (a TCP peer: the Keylime agent's listener): its socket's own key decides,
            # by address; the pools and budgets below are for Unix sockets' uids and user namespaces.
            unix = peer.caller.pid > 0
            if not host and unix:
                key = _pooled(peer, key)
        except Exception:  # a caller that cannot be told apart is not admitted
            log.exception("cannot tell who is calling on %s", transport.get_extra_info("sockname"))
            refusal = (503, "the service cannot identify this caller")
        else:
            if host:
                key = HostCaller(key)
            limits = self._policy.limits
            cap = limits.per_stranger if isinstance(key, Strangers) else limits.per_caller
            who = f"pid {peer.caller.pid}" + ("" if isinstance(key, LocalCaller) else f" uid {peer.caller.uid}")
            if isinstance(key, ModuleCaller):
                self.budget.note_module(peer.caller.uid)
            elif not host and unix and isinstance(handler, _GuardedHandler):
                handler.charged = self.budget.spend(peer.caller.uid, namespaced=isinstance(key, Strangers) and (
                    not in_host_user_namespace(peer.caller)))
            refusal = self._guard.admit(key, cap, handler, transport.close, host=host, who=who)
        if refusal is None:
            self._admitted[handler] = key
            remember_key(transport, key)
            return True
        if peer is not None:
            _record_refusal(peer, key, *refusal)
        # Answered and closed at once, unread: an over-limit caller gets a clear refusal and holds no descriptor.
        transport.write(_refusal(*refusal))
        transport.close()
        return False

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if (key := self._admitted.pop(handler, None)) is not None:
            self._guard.release(key, handler)
        if handler.transport is not None:
            connection_closed(handler.transport)  # its attestation and pin go now, not at the next collection
        super().connection_lost(handler, exc)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose every site (those added later, like the workload sockets, included) admits connections
    through the process's connection guard, under the app's caller key and limits."""

    # A stop must not wait a minute for requests that never end on their own (a logs follow whose client left):
    # they get this long, then are cancelled, so a SIGTERM'd daemon stops its modules before any supervisor's kill.
    SHUTDOWN_TIMEOUT = 3.0

    # The listen queue: larger than aiohttp's 128, so a burst of connections waits for the loop instead of being
    # refused EAGAIN (the kernel caps it at net.core.somaxconn, 4096 by default).
    LISTEN_BACKLOG = 4096

    def __init__(self, app: web.Application) -> None:
        super().__init__(app, access_log=None, handle_signals=False, shutdown_timeout=self.SHUTDOWN_TIMEOUT)

    def _reg_site(self, site: web.BaseSite) -> None:
        """Every site, whoever made it: its socket closes over-budget uids' connections at accept, with a longer
        listen queue (aiohttp's sites listen again at start, with the backlog they hold)."""
        super()._reg_site(site)
        server = self.server
        if isinstance(site, web.SockSite) and isinstance(server, _GuardedServer):
            _serve_admitting(site._sock, server.budget)
            site._backlog = max(site._backlog, self.LISTEN_BACKLOG)

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        policy = self.app.get(CONNECTION_POLICY) or ConnectionPolicy(ConnectionLimits.from_environ())
        return _GuardedServer(inner, policy.guard or process_guard(), policy)
