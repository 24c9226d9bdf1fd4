"""The agent API's TCP listener: TLS handshakes counted per peer and in all before a byte of TLS is read.

The process's connection guard counts a connection once aiohttp sees it, which on a TLS socket is after the
handshake; until then asyncio holds it for up to the handshake deadline. One peer opening connections and never
finishing a handshake would hold every slot the verifier needs. So each accepted connection is admitted here first,
against caps per peer (connections still in their handshake, and connections in all) and the same two caps over
every peer. Over its peer's caps, it is closed at once, unread (there is no TLS yet to say why in). The TLS is then
started on the admitted connection with the same context and deadline the site would have used, and the established
connection is handed to aiohttp's handler, which goes on to the process's guard as before.

A peer is what one attacker cannot multiply at will (:func:`peer_of`): an IPv4 address, an IPv6 /64 (what one host
or link gets: the owner of a /64 has 2^64 addresses), and the whole of the loopback (127.0.0.0/8 and ::1 are all
this one host, and any local user may bind any 127/8 address). The caps over every peer are what keep a flood from
many peers off the process's descriptors: in the break-this review (A2) 1000 loopback addresses, 4 handshakes each
(the per-address cap then), used up the daemon's 1024 descriptors and the integrity monitor could not open a
module's binary. They are sized by the descriptor limit (:func:`caps_for_fd_limit`): the listener, with the batch
asyncio accepts at once before it can close them, keeps to a quarter at most; the rest is for the monitor, the
audit log, the TPM and the other services.

The caps over every peer must not lock the verifier out either: in the second review (N1) 16 addresses with 4 bare
connections each, re-opened as they were closed, held all 64 handshakes, the verifier's connections were closed at
once, and after its retries Keylime's verifier marked the agent failed and never polled it again. So when they are
full a newcomer is not refused: it takes the place of the oldest unfinished handshake of the stranger holding the
most (:class:`PeerCaps`), so a flood from N peers keeps only itself busy, and a verifier from anywhere else gets in
within the handshake deadline. And an eighth of the slots (:func:`reserved_for`) are kept for known verifiers, whose
handshakes nothing displaces: the addresses of verifier_addresses, and any address that completed the mTLS
handshake (its certificate chains to verifier_ca) and took an integrity quote in the last hour
(:func:`learn_verifiers`). A flood cannot pass for one without its address, and an address is one peer's: a verifier
behind a NAT, or on this host's loopback, shares its per-peer caps with whoever shares its address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from ..fdlimit import fd_limit

__all__ = ["BACKLOG", "CONNECTIONS_PER_PEER", "HANDSHAKES_PER_PEER", "KNOWN_SECONDS", "LOOPBACK",
           "TLS_HANDSHAKE_SECONDS", "AgentSite", "IPNetwork", "PeerCaps", "backlog_for_fd_limit", "caps_for_fd_limit",
           "learn_verifiers", "peer_of", "reserved_for"]

log = logging.getLogger(__name__)
TLS_HANDSHAKE_SECONDS = 5.0
HANDSHAKES_PER_PEER = 4  # a verifier and a tenant on one host open a handful at once; a flood opens hundreds
CONNECTIONS_PER_PEER = 16  # of the process guard's 64 for this listener: no one peer holds more than a quarter
BACKLOG = 128  # aiohttp's default, at most (see backlog_for_fd_limit)
LOOPBACK = "loopback"
_LOG_EVERY = 10.0
_ALL = "*"  # the key of the caps over every peer, in the log's rate limit
_EVICTED = "-"  # and of the handshakes closed for a newcomer
KNOWN_SECONDS = 3600.0  # a verifier polls every few seconds; one that backed off, or was re-added, within the hour
KNOWN_ADDRESSES = 64  # learned verifier addresses kept (the latest): only clients of verifier_ca can add one
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def reserved_for(all_handshakes: int, all_total: int) -> tuple[int, int]:
    """The slots (in the handshake, in all) that only known verifiers may take: an eighth of each, at least 2 and
    4 (8 and 16 of 64 and 128 at 1024 descriptors): a verifier opens one connection per poll."""
    return min(all_handshakes, max(2, all_handshakes // 8)), min(all_total, max(4, all_total // 8))


def backlog_for_fd_limit(limit: int) -> int:
    """The listen backlog: a 48th of the descriptors (8 to `BACKLOG`). asyncio accepts up to that many at once, and
    a connection closed at once still holds its descriptor for two turns of the loop (connection_made, then the
    close, are each scheduled), in which two more batches are accepted: measured under a flood, about three
    backlogs' worth of descriptors (384 of them at 128)."""
    return max(8, min(BACKLOG, limit // 48))


class PeerCaps:
    """Connections per peer (see :func:`peer_of`) and over every peer: in the TLS handshake, and in all.

    When the slots over every peer are full, a newcomer takes the place of the oldest unfinished handshake of the
    stranger peer holding the most, if that one holds more than the newcomer's peer would (:meth:`_victim`): peers
    that flood from many addresses keep each other out, never a peer with fewer, and a peer's first connection
    always gets in. `reserved` slots (handshakes, in all) are for known verifiers only
    (:meth:`known`), whose handshakes there are never displaced; beyond the reserve theirs are strangers' like any
    other (a learned address is any verifier_ca client's that took an integrity quote). Every step is O(1) in the
    number of peers: the strangers are kept by how many handshakes they hold (at most `handshakes`), each one's
    oldest first."""

    def __init__(self, handshakes: int = HANDSHAKES_PER_PEER, total: int = CONNECTIONS_PER_PEER, *,
                 all_handshakes: int | None = None, all_total: int | None = None,
                 reserved: tuple[int, int] | None = None, verifiers: Iterable[IPNetwork] = (),
                 peer_of: Callable[[str], str] = peer_of) -> None:
        sized = caps_for_fd_limit(fd_limit())
        self.max_handshakes, self.max_total = handshakes, total
        self.max_all_handshakes = sized[0] if all_handshakes is None else all_handshakes
        self.max_all_total = sized[1] if all_total is None else all_total
        self.reserved_handshakes, self.reserved_total = (
            reserved_for(self.max_all_handshakes, self.max_all_total) if reserved is None else reserved)
        self.verifiers = tuple(verifiers)
        self.peer_of = peer_of
        self.handshaking: dict[str, int] = {}
        self.open: dict[str, int] = {}
        self.all_handshaking = self.all_open = 0
        self.known_handshaking = self.known_open = 0
        self.refused = self.evicted = 0
        self._learned: dict[str, float] = {}  # address -> when it last took an integrity quote (monotonic)
        self._strangers: dict[str, dict[_Slot, None]] = {}  # peer -> its strangers' unfinished handshakes, oldest 1st
        # [n]: the strangers holding n unfinished handshakes, in the order they came to (an OrderedDict: a dict's
        # first key is found past the holes its deleted ones left, O(n) when it is a queue)
        self._by_count: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(handshakes + 1)]
        self._logged: dict[str, float] = {}

    # known verifiers ------------------------------------------------------------------------------------------------
    def learn(self, address: str) -> None:
        """`address` completed an mTLS handshake (its certificate chains to verifier_ca) and took an integrity
        quote: a verifier, known for :data:`KNOWN_SECONDS`."""
        if self.verifiers:  # configured: the operator named the verifier; no client makes itself one (K1b)
            return
        key = _address(address)
        self._learned.pop(key, None)
        self._learned[key] = time.monotonic()
        if len(self._learned) > KNOWN_ADDRESSES:
            del self._learned[next(iter(self._learned))]

    def known(self, address: str) -> bool:
        """A configured verifier address (verifier_addresses) or one learned within :data:`KNOWN_SECONDS`."""
        key = _address(address)
        seen = self._learned.get(key)
        if seen is not None:
            if time.monotonic() - seen < KNOWN_SECONDS:
                return True
            del self._learned[key]
        if not self.verifiers:
            return False
        try:
            ip = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(ip in net for net in self.verifiers if net.version == ip.version)

    # admission ------------------------------------------------------------------------------------------------------
    def admit(self, peer: str, known: bool = False) -> _Slot | None:
        """A slot for a new connection from `peer`, or None: it is to be closed at once, unread."""
        if known and (self.known_handshaking >= self.reserved_handshakes or self.known_open >= self.reserved_total):
            # Beyond the reserve a known verifier's connection is anyone's: any client of verifier_ca can make its
            # addresses known by taking integrity quotes (review K1), and must not hold every slot with them.
            known = False
        held, opened = self.handshaking.get(peer, 0), self.open.get(peer, 0)
        if held >= self.max_handshakes or opened >= self.max_total:
            own = self._strangers.get(peer) if known and held >= self.max_handshakes else None
            if not own:
                self._refused(peer, f"closing connections from {peer} at once: {held} in the TLS handshake, "
                                    f"{opened} open (caps {self.max_handshakes} and {self.max_total} per peer)")
                return None
            self._evict(next(iter(own)), peer)  # a known verifier's address before a stranger sharing its peer
        if self._full(known):
            victim = self._victim(None if known else len(self._strangers.get(peer, ())))
            if victim is None:
                self._refused(_ALL, f"closing connections at once (this one from {peer}): {self.all_handshaking} "
                                    f"in the TLS handshake, {self.all_open} open over every peer (caps "
                                    f"{self.max_all_handshakes} and {self.max_all_total}, "
                                    f"{self.known_handshaking} and {self.known_open} of them known verifiers')")
                return None
            self._evict(victim, peer)
        slot = _Slot(self, peer, known)
        self.handshaking[peer] = self.handshaking.get(peer, 0) + 1
        self.open[peer] = self.open.get(peer, 0) + 1
        self.all_handshaking += 1
        self.all_open += 1
        if known:
            self.known_handshaking += 1
            self.known_open += 1
        else:
            own = self._strangers.setdefault(peer, {})
            self._move(peer, len(own), len(own) + 1)
            own[slot] = None
        return slot

    def _full(self, known: bool) -> bool:
        if self.all_handshaking >= self.max_all_handshakes or self.all_open >= self.max_all_total:
            return True
        if known:
            return False
        return (self.all_handshaking - self.known_handshaking >= self.max_all_handshakes - self.reserved_handshakes
                or self.all_open - self.known_open >= self.max_all_total - self.reserved_total)

    def _victim(self, holds: int | None) -> _Slot | None:
        """The oldest unfinished handshake of the stranger holding the most, for a newcomer whose peer `holds` so
        many (None: a known verifier, for whom any will do). Only if that leaves the newcomer's peer with fewer than
        the other had: a peer's first always gets in, but peers level with each other (16 addresses x 4 in 56
        slots) do not trade places at the flood's rate, each trade a TLS set-up, only to end where they began."""
        for count in range(len(self._by_count) - 1, 0, -1):
            peers = self._by_count[count]
            if peers:
                if holds is not None and holds and count < holds + 2:
                    return None
                return next(iter(self._strangers[next(iter(peers))]))
        return None

    def _evict(self, slot: _Slot, newcomer: str) -> None:
        self.evicted += 1
        now = time.monotonic()
        if now - self._logged.get(_EVICTED, 0.0) >= _LOG_EVERY:
            self._logged[_EVICTED] = now
            log.warning("keylime agent: every TLS handshake slot is taken: closing the oldest unfinished one of %s "
                        "for a connection from %s; %d closed so far", slot.peer, newcomer, self.evicted)
        slot.evict()

    def _move(self, peer: str, was: int, now: int) -> None:
        if was:
            del self._by_count[was][peer]
        if now:
            self._by_count[now][peer] = None

    def _refused(self, key: str, message: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged.get(key, 0.0) >= _LOG_EVERY:  # a flood is one line per peer (and "all") and period
            if len(self._logged) > 4096:
                self._logged = {k: t for k, t in self._logged.items() if now - t < _LOG_EVERY}
            self._logged[key] = now
            log.warning("keylime agent: %s; %d refused so far", message, self.refused)

    def handshake_over(self, slot: _Slot) -> None:
        if _down(self.handshaking, slot.peer):
            self.all_handshaking -= 1
        if slot.known:
            self.known_handshaking -= 1
            return
        own = self._strangers.get(slot.peer)
        if own is not None and slot in own:
            del own[slot]
            self._move(slot.peer, len(own) + 1, len(own))
            if not own:
                del self._strangers[slot.peer]

    def closed(self, slot: _Slot) -> None:
        if _down(self.open, slot.peer):
            self.all_open -= 1
        if slot.known:
            self.known_open -= 1


def _address(address: str) -> str:
    """An address as :meth:`PeerCaps.learn` keeps it: no IPv6 zone, IPv4-mapped IPv6 as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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

    def __init__(self, caps: PeerCaps, peer: str, known: bool) -> None:
        self.caps, self.peer, self.known = caps, peer, known
        self.handshaking = self.open = True
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def handshake_over(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.caps.handshake_over(self)

    def closed(self) -> None:
        self.handshake_over()
        if self.open:
            self.open = False
            self.caps.closed(self)

    def evict(self) -> None:
        """Counted out now (the newcomer takes its place); the descriptor goes as the loop next turns."""
        self.closed()
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None:
            self.task.cancel()


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
        caps = self.site.caps
        address = str(peername[0]) if peername else "?"
        slot = caps.admit(caps.peer_of(address), caps.known(address))
        if slot is None:
            transport.abort()
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer, once it is there
        slot.transport = transport
        self.slot = slot
        self.site.upgrade(transport, slot)

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
        slot.task = task
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
        slot.task = None  # established: no longer a handshake to close for a newcomer
        if tls is None:  # closed as the handshake ended
            slot.closed()
            return
        established.connection_made(tls)

    async def stop(self) -> None:
        for task in list(self._upgrades):
            task.cancel()
        await asyncio.gather(*self._upgrades, return_exceptions=True)
        await super().stop()


def learn_verifiers(app: web.Application, caps: PeerCaps) -> None:
    """Each address that takes an integrity quote (only the verifier asks for one; the tenant asks for identity
    quotes) over mTLS becomes a known verifier of `caps`. Call before the app is frozen (the runner's setup)."""

    async def learned(request: web.Request, response: web.StreamResponse) -> None:
        if (response.status == 200 and request.method == "GET" and request.path.endswith("/quotes/integrity")
                and request.remote and request.transport is not None
                and request.transport.get_extra_info("peercert")):
            caps.learn(request.remote)

    app.on_response_prepare.append(learned)
