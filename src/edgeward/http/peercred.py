"""Caller credentials from the kernel (SO_PEERCRED), never from anything the caller says."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
import weakref
from asyncio.trsock import TransportSocket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["SO_PEERPIDFD", "Caller", "ConnectorGone", "accepted_ticks", "caller_of", "connection_closed",
           "connector_pidfd", "note_accepted", "on_connection_closed", "peer_credentials"]



@dataclass(frozen=True, slots=True)
class Caller:
    """The process at the other end of a Unix socket connection, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def this_process(cls) -> Caller:
        """The caller used when a service is called in-process (the embedded composition)."""
        return cls(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())


_CREDS_KEY: web.RequestKey[Caller] = web.RequestKey("edgeward.caller", Caller)
_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Caller] = weakref.WeakKeyDictionary()


def peer_credentials(sock: socket.socket | TransportSocket) -> Caller:
    """Read (pid, uid, gid) of the connected peer; raises OSError for sockets without peer credentials."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid=pid, uid=uid, gid=gid)


def caller_of(request: web.Request) -> Caller:
    """The caller of a request; cached on the request so every layer sees the same answer."""
    cached: Caller | None = request.get(_CREDS_KEY)
    if cached is not None:
        return cached
    transport = request.transport
    if transport is not None:
        # The kernel fixes a connection's peer credentials at connect time: read them once per connection.
        known = _BY_CONNECTION.get(transport)
        if known is not None:
            request[_CREDS_KEY] = known
            return known
    sock = transport.get_extra_info("socket") if transport is not None else None
    # Not a Unix socket (e.g. an aiohttp test client over TCP): there is no kernel-vouched identity, so the
    # caller gets an identity that no principal can match.
    # asyncio hands out a TransportSocket wrapper, which has getsockopt and family but is no socket.socket.
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        caller = peer_credentials(sock)
    else:
        caller = Caller(pid=0, uid=-1, gid=-1)
    request[_CREDS_KEY] = caller
    if transport is not None:
        _BY_CONNECTION[transport] = caller
    return caller


_ACCEPTED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_TICKS = os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int:
    """Now, in the clock /proc/<pid>/stat gives process start times in (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)


def note_accepted(transport: Any) -> None:
    """Remember when a connection was accepted: the process that opened it started before that, so a process that
    started later and holds its pid is not the one SO_PEERCRED named (a recycled pid)."""
    _ACCEPTED[transport] = boot_ticks()


def accepted_ticks(request: web.Request) -> int | None:
    transport = request.transport
    return _ACCEPTED.get(transport) if transport is not None else None


# Linux >= 6.5: a pidfd of the process that called connect(), which the kernel recorded then (Python 3.11 has no
# name for it). The accept time above only bounds when that process started: one that connects, hands the
# connection to another process of its uid and exits while the daemon is slow to accept leaves a pid that a later
# process can take before the accept, and would pass for the connector. A pidfd never names a later owner of its pid.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
# What the kernel says when the connector has already been reaped (6.5-6.15; 6.16 and later give a pidfd that
# reports the exit instead).
_CONNECTOR_GONE = frozenset({errno.ESRCH, errno.EINVAL})


class ConnectorGone(Exception):
    """The process that opened the connection has exited: nothing alive can be attested as it."""


def connector_pidfd(request: web.Request) -> int | None:
    """A pidfd (close-on-exec, the caller owns it) of the process that opened the request's connection; None where
    the kernel has no SO_PEERPIDFD (ENOPROTOOPT: older than 6.5) or the connection is no Unix socket, and callers
    then fall back to the accept time. Raises ConnectorGone when the kernel says that process is gone.

    Asked once per connection, where the caller is pinned: one getsockopt, in place of the pidfd_open it saves."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    except OSError as e:
        if e.errno in _CONNECTOR_GONE:
            raise ConnectorGone("the process that opened the connection has exited") from None
        return None  # ENOPROTOOPT (an older kernel), ENODATA (no peer process): the accept time decides


# What a connection's callers asked to forget when it closes (its attestation and the pin it holds), so a pinned
# process does not wait for the garbage collector to free the transport: a transport in a reference cycle kept a
# closed connection's pin (and pidfd) open for as long as no collection ran.
_ON_CLOSE: weakref.WeakKeyDictionary[Any, list[Callable[[Any], None]]] = weakref.WeakKeyDictionary()


def on_connection_closed(transport: Any, forget: Callable[[Any], None]) -> None:
    """Call `forget(transport)` when the connection closes (`connection_closed`). `forget` must not hold the
    transport itself: it is handed it."""
    _ON_CLOSE.setdefault(transport, []).append(forget)


def connection_closed(transport: Any) -> None:
    """The connection is closed (its server's connection_lost): run what its callers asked to forget."""
    for forget in _ON_CLOSE.pop(transport, ()):
        forget(transport)
