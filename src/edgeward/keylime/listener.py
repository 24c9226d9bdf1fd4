"""The agent API's TCP listener: TLS handshakes counted per source address before a byte of TLS is read.

The process's connection guard counts a connection once aiohttp sees it, which on a TLS socket is after the
handshake; until then asyncio holds it for up to the handshake deadline. One address opening connections and never
finishing a handshake would hold every slot the verifier needs. So each accepted connection is admitted here first,
against two caps per source address: connections still in their handshake, and connections in all. Over either, it
is closed at once, unread (there is no TLS yet to say why in). The TLS is then started on the admitted connection
with the same context and deadline the site would have used, and the established connection is handed to aiohttp's
handler, which goes on to the process's guard as before.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiohttp import web

__all__ = ["HANDSHAKES_PER_PEER", "TLS_HANDSHAKE_SECONDS", "AgentSite", "PeerCaps"]

log = logging.getLogger(__name__)
TLS_HANDSHAKE_SECONDS = 5.0
HANDSHAKES_PER_PEER = 4  # a verifier and a tenant on one host open a handful at once; a flood opens hundreds
CONNECTIONS_PER_PEER = 16  # of the process guard's 64 for this listener: no one address holds more than a quarter
_LOG_EVERY = 10.0


class PeerCaps:
    """Connections per source address: in the TLS handshake, and in all."""

    def __init__(self, handshakes: int = HANDSHAKES_PER_PEER, total: int = CONNECTIONS_PER_PEER) -> None:
        self.max_handshakes, self.max_total = handshakes, total
        self.handshaking: dict[str, int] = {}
        self.open: dict[str, int] = {}
        self.refused = 0
        self._logged: dict[str, float] = {}

    def admit(self, peer: str) -> bool:
        if self.handshaking.get(peer, 0) >= self.max_handshakes or self.open.get(peer, 0) >= self.max_total:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged.get(peer, 0.0) >= _LOG_EVERY:  # a flood is one line per address and period
                self._logged[peer] = now
                log.warning("keylime agent: closing connections from %s at once: %d in the TLS handshake, %d open "
                            "(caps %d and %d per address; %d refused so far)", peer, self.handshaking.get(peer, 0),
                            self.open.get(peer, 0), self.max_handshakes, self.max_total, self.refused)
            return False
        self.handshaking[peer] = self.handshaking.get(peer, 0) + 1
        self.open[peer] = self.open.get(peer, 0) + 1
        return True

    def handshake_over(self, peer: str) -> None:
        _down(self.handshaking, peer)

    def closed(self, peer: str) -> None:
        _down(self.open, peer)


def _down(counts: dict[str, int], peer: str) -> None:
    left = counts.get(peer, 0) - 1
    if left > 0:
        counts[peer] = left
    else:
        counts.pop(peer, None)


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
        peer = str(peername[0]) if peername else "?"
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
    """A TCP site whose connections are admitted per source address (:class:`PeerCaps`) before their TLS handshake,
    which must then finish within seconds (asyncio's default is a minute)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 caps: PeerCaps | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
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
