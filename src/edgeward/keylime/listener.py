"""The agent API's TCP listener: TLS handshakes counted per peer and in all before a byte of TLS is read.

The process's connection guard counts a connection once aiohttp sees it, which on a TLS socket is after the
handshake; until then asyncio holds it for up to the handshake deadline. One peer opening connections and never
finishing a handshake would hold every slot the verifier needs. So each accepted connection is admitted here first,
against caps per peer (connections still in their handshake, and connections in all) and the same two caps over
every peer. Over any, it is closed at once, unread (there is no TLS yet to say why in). The TLS is then started on
the admitted connection with the same context and deadline the site would have used, and the established connection
is handed to aiohttp's handler, which goes on to the process's guard as before.

A peer is what one attacker cannot multiply at will (:func:`peer_of`): an IPv4 address, an IPv6 /64 (what one host
or link gets: the owner of a /64 has 2^64 addresses), and the whole of the loopback (127.0.0.0/8 and ::1 are all
this one host, and any local user may bind any 127/8 address). The caps over every peer are what keep a flood from
many peers off the process's descriptors: in the break-this review (A2) 1000 loopback addresses, 4 handshakes each
(the per-address cap then), used up the daemon's 1024 descriptors and the integrity monitor could not open a
module's binary. They are sized by the descriptor limit (:func:`caps_for_fd_limit`): the listener, with the batch
asyncio accepts at once before it can close them, keeps to a quarter at most; the rest is for the monitor, the
audit log, the TPM and the other services.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..fdlimit import fd_limit

__all__ = ["BACKLOG", "CONNECTIONS_PER_PEER", "HANDSHAKES_PER_PEER", "LOOPBACK", "TLS_HANDSHAKE_SECONDS", "AgentSite",
           "PeerCaps", "backlog_for_fd_limit", "caps_for_fd_limit", "peer_of"]

log = logging.getLogger(__name__)
TLS_HANDSHAKE_SECONDS = 5.0
HANDSHAKES_PER_PEER = 4  # a verifier and a tenant on one host open a handful at once; a flood opens hundreds
CONNECTIONS_PER_PEER = 16  # of the process guard's 64 for this listener: no one peer holds more than a quarter
BACKLOG = 128  # aiohttp's default, at most (see backlog_for_fd_limit)
LOOPBACK = "loopback"
_LOG_EVERY = 10.0
_ALL = "*"  # the key of the caps over every peer, in the log's rate limit


def peer_of(address: str) -> str:
    """The peer a source address counts for: the address itself (IPv4), its /64 (IPv6), or LOOPBACK for any
    address of this host's loopback (127.0.0.0/8, ::1, and those as IPv4-mapped IPv6)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return LOOPBACK
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def caps_for_fd_limit(limit: int) -> tuple[int, int]:
    """(connections in the TLS handshake, connections in all) over every peer, for a process that may hold `limit`
    descriptors: in all an eighth of them (16 to 256), of which half (8 to 64) in the handshake. With the backlog
    asyncio accepts before it can close any (:func:`backlog_for_fd_limit`), the listener holds at most a quarter of
    the descriptors (at 1024: 128 + 3 x 21): the rest stay for the integrity monitor, the audit log and the other
    services."""
    total = max(16, min(256, limit // 8))
    return max(8, min(64, total // 2)), total


def backlog_for_fd_limit(limit: int) -> int:
    """The listen backlog: a 48th of the descriptors (8 to `BACKLOG`). asyncio accepts up to that many at once, and
    a connection closed at once still holds its descriptor for two turns of the loop (connection_made, then the
    close, are each scheduled), in which two more batches are accepted: measured under a flood, about three
    backlogs' worth of descriptors (384 of them at 128)."""
    return max(8, min(BACKLOG, limit // 48))


class PeerCaps:
    """Connections per peer (see :func:`peer_of`) and over every peer: in the TLS handshake, and in all."""

    def __init__(self, handshakes: int = HANDSHAKES_PER_PEER, total: int = CONNECTIONS_PER_PEER, *,
                 all_handshakes: int | None = None, all_total: int | None = None,
                 peer_of: Callable[[str], str] = peer_of) -> None:
        sized = caps_for_fd_limit(fd_limit())
        self.max_handshakes, self.max_total = handshakes, total
        self.max_all_handshakes = sized[0] if all_handshakes is None else all_handshakes
        self.max_all_total = sized[1] if all_total is None else all_total
        self.peer_of = peer_of
        self.handshaking: dict[str, int] = {}
        self.open: dict[str, int] = {}
        self.all_handshaking = self.all_open = 0
        self.refused = 0
        self._logged: dict[str, float] = {}

    def admit(self, peer: str) -> bool:
        held, opened = self.handshaking.get(peer, 0), self.open.get(peer, 0)
        if held >= self.max_handshakes or opened >= self.max_total:
            self._refused(peer, f"closing connections from {peer} at once: {held} in the TLS handshake, {opened} "
                                f"open (caps {self.max_handshakes} and {self.max_total} per peer)")
            return False
        if self.all_handshaking >= self.max_all_handshakes or self.all_open >= self.max_all_total:
            self._refused(_ALL, f"closing connections at once (this one from {peer}): {self.all_handshaking} in the "
                                f"TLS handshake, {self.all_open} open over every peer (caps "
                                f"{self.max_all_handshakes} and {self.max_all_total})")
            return False
        self.handshaking[peer] = held + 1
        self.open[peer] = opened + 1
        self.all_handshaking += 1
        self.all_open += 1
        return True

    def _refused(self, key: str, message: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged.get(key, 0.0) >= _LOG_EVERY:  # a flood is one line per peer (and "all") and period
            if len(self._logged) > 4096:
                self._logged = {k: t for k, t in self._logged.items() if now - t < _LOG_EVERY}
            self._logged[key] = now
            log.warning("keylime agent: %s; %d refused so far", message, self.refused)

    def handshake_over(self, peer: str) -> None:
        if _down(self.handshaking, peer):
            self.all_handshaking -= 1

    def closed(self, peer: str) -> None:
        if _down(self.open, peer):
            self.all_open -= 1


def _down(counts: dict[str, int], peer: str) -> bool:
    """One fewer for `peer`; whether it held any."""
    held = counts.get(peer, 0)
    if held > 1:
        counts[peer] = held - 1
    else:
        counts.pop(peer, None)
    return held > 0


class _Slot:
    """One admitted connection's place in the counts, each released once whichever path ends it first."""

    def __init__(self, caps: PeerCaps, peer: str) -> None:
        self.caps, self.peer = caps, peer
        self.handshaking = self.open = True

    def handshake_over(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.caps.handshake_over(self.peer)

    def closed(self) -> None:
        self.handshake_over()
        if self.open:
            self.open = False
            self.caps.closed(self.peer)


class _Established(asyncio.Protocol):
    """aiohttp's handler behind the TLS (told of the connection only once the handshake is done), with the slot
    released when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, slot: _Slot) -> None:
        self.inner, self.slot = inner, slot
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.closed()
        if self.made:  # a failed handshake ends here too, before aiohttp's handler knew of the connection
            self.inner.connection_lost(exc)


class _Admission(asyncio.Protocol):
    """The protocol of a bare accepted connection: admit it, then start its TLS."""

    def __init__(self, site: AgentSite) -> None:
        self.site = site
        self.slot: _Slot | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peername: Any = transport.get_extra_info("peername")
        peer = self.site.caps.peer_of(str(peername[0])) if peername else "?"
        if not self.site.caps.admit(peer):
            transport.abort()
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer, once it is there
        self.slot = _Slot(self.site.caps, peer)
        self.site.upgrade(transport, self.slot)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:  # lost before the TLS layer took the connection over
            self.slot.closed()


class AgentSite(web.TCPSite):
    """A TCP site whose connections are admitted per peer and in all (:class:`PeerCaps`) before their TLS
    handshake, which must then finish within seconds (asyncio's default is a minute)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 caps: PeerCaps | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog_for_fd_limit(fd_limit()))
        self.tls = ssl_context
        self.caps = caps or PeerCaps()
        self._upgrades: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Admission(self), self._host, self._port, backlog=self._backlog)

    def upgrade(self, transport: asyncio.Transport, slot: _Slot) -> None:
        task = asyncio.get_running_loop().create_task(self._upgrade(transport, slot), name="keylime-tls")
        self._upgrades.add(task)
        task.add_done_callback(self._upgrades.discard)

    async def _upgrade(self, transport: asyncio.Transport, slot: _Slot) -> None:
        server = self._runner.server
        assert server is not None
        established = _Established(server(), slot)
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, established, self.tls, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS)
        except Exception as e:  # a bad or slow handshake, a peer gone mid-way: closed, counted out
            log.debug("keylime agent: TLS handshake with %s failed: %r", slot.peer, e)
            transport.abort()
            slot.closed()
            return
        except asyncio.CancelledError:
            transport.abort()
            slot.closed()
            raise
        slot.handshake_over()
        if tls is None:  # closed as the handshake ended
            slot.closed()
            return
        established.connection_made(tls)

    async def stop(self) -> None:
        for task in list(self._upgrades):
            task.cancel()
        await asyncio.gather(*self._upgrades, return_exceptions=True)
        await super().stop()
