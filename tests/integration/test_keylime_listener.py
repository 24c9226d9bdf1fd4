"""The Keylime agent's listener under a flood: connections beyond the caps per peer are closed at once, before any
TLS, and a verifier elsewhere is still answered promptly. A flood from many loopback addresses (break-this review
A2: 1000 of them used up the daemon's descriptors) is one peer's. A flood from many peers that holds every handshake
slot over every peer (second review, N1) makes room for a newcomer, and never takes a known verifier's."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from edgeward.http.connections import GuardedRunner
from edgeward.keylime.listener import (
    CONNECTIONS_PER_PEER,
    HANDSHAKES_PER_PEER,
    LOOPBACK,
    AgentSite,
    PeerCaps,
    backlog_for_fd_limit,
    caps_for_fd_limit,
    learn_verifiers,
    peer_of,
)
from tests.fixtures.mtls_certs import issue

ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to lo


def _per_address(address: str) -> str:
    """Each loopback address a peer of its own, as hosts on the network are: the per-peer tests need two peers."""
    return address


class _Agent:
    def __init__(self, port: int, client: ssl.SSLContext, site: AgentSite) -> None:
        self.port, self.client, self.site = port, client, site

    async def get_version(self, local: str = "127.0.0.1", path: str = "/version") -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client,
                                                       local_addr=(local, 0), server_hostname="localhost")
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n".encode())
            return await reader.read()
        finally:
            writer.close()


@asynccontextmanager
async def _serve(tmp_path: Path, caps: PeerCaps) -> AsyncIterator[_Agent]:
    ca_cert, ca_key, ca_path, _ = issue(tmp_path, "ca", None)
    _, _, server_cert, server_key = issue(tmp_path, "agent", (ca_cert, ca_key))
    _, _, client_cert, client_key = issue(tmp_path, "verifier", (ca_cert, ca_key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_path))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(server_cert), str(server_key))
    client = ssl.create_default_context(cafile=str(ca_path))
    client.load_cert_chain(str(client_cert), str(client_key))

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"code": 200})

    async def integrity(request: web.Request) -> web.Response:
        return web.json_response({"code": 200})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v2.2/quotes/integrity", integrity)
    learn_verifiers(app, caps)
    runner = GuardedRunner(app)
    await runner.setup()
    site = AgentSite(runner, "127.0.0.1", 0, ssl_context=server, caps=caps)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield _Agent(port, client, site)
    finally:
        await runner.cleanup()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[_Agent]:
    async with _serve(tmp_path, PeerCaps(peer_of=_per_address)) as served:
        yield served


async def _closed_at_once(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(1.0):
            return await reader.read(1) == b""
    except TimeoutError:
        return False  # still held open, waiting for a handshake
    except ConnectionResetError:
        return True


async def test_a_handshake_flood_from_one_address_does_not_keep_the_verifier_out(agent: _Agent) -> None:
    flood = [await asyncio.open_connection("127.0.0.1", agent.port, local_addr=(ATTACKER, 0)) for _ in range(100)]
    try:
        closed = await asyncio.gather(*(_closed_at_once(r) for r, _ in flood))
        assert sum(not c for c in closed) == HANDSHAKES_PER_PEER  # the rest were closed at once, unread
        assert agent.site.caps.handshaking == {ATTACKER: HANDSHAKES_PER_PEER}
        started = time.monotonic()
        answer = await agent.get_version()  # the verifier, from another address, during the flood
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert time.monotonic() - started < 2.0
    finally:
        for _, writer in flood:
            writer.close()


async def test_one_address_holds_at_most_its_share_of_established_connections(agent: _Agent) -> None:
    held = []
    try:
        for _ in range(CONNECTIONS_PER_PEER):  # completed mTLS handshakes, kept open
            held.append(await asyncio.open_connection("127.0.0.1", agent.port, ssl=agent.client,
                                                      local_addr=(ATTACKER, 0), server_hostname="localhost"))
        assert agent.site.caps.open == {ATTACKER: CONNECTIONS_PER_PEER}
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, ssl=agent.client,
                                                           local_addr=(ATTACKER, 0), server_hostname="localhost")
            writer.write(b"GET /version HTTP/1.1\r\nHost: agent\r\n\r\n")
            assert await reader.read() == b"", "refused"
            raise ConnectionError("closed unanswered")
        assert (await agent.get_version()).startswith(b"HTTP/1.1 200")  # another address is still served
    finally:
        for _, writer in held:
            writer.close()
    async with asyncio.timeout(5):  # and the address's count comes back down as they close
        while agent.site.caps.open.get(ATTACKER):
            await asyncio.sleep(0.01)


async def _bare(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that never sends a ClientHello: it costs no certificate, and held a descriptor for 5 s."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_a_flood_from_many_loopback_addresses_is_one_peers(tmp_path: Path) -> None:
    """Any local user may bind any 127/8 address: 50 of them, 4 bare connections each, hold 4 handshakes in all."""
    async with _serve(tmp_path, PeerCaps()) as agent:
        flood = [await _bare(agent.port, f"127.1.0.{a}") for a in range(1, 51) for _ in range(4)]
        try:
            closed = await asyncio.gather(*(_closed_at_once(r) for r, _ in flood))
            assert sum(not c for c in closed) == HANDSHAKES_PER_PEER
            assert agent.site.caps.handshaking == {LOOPBACK: HANDSHAKES_PER_PEER}
        finally:
            for _, writer in flood:
                writer.close()
        async with asyncio.timeout(5):
            while agent.site.caps.all_open:
                await asyncio.sleep(0.01)
        assert (await agent.get_version()).startswith(b"HTTP/1.1 200")  # the flood gone, served again at once


async def test_handshakes_over_every_peer_are_capped_and_a_verifier_that_finishes_its_handshake_is_served(
        tmp_path: Path) -> None:
    """Peers the network has plenty of (IPv6 /64s, here loopback addresses counted apart) together hold no more
    than the strangers' share of the cap over every peer: each newcomer closes the oldest unfinished handshake, so
    the newest are held. Established connections count against the total too; its reserve is a known verifier's."""
    caps = PeerCaps(peer_of=_per_address, all_handshakes=8, all_total=12, reserved=(2, 4),
                    verifiers=[ipaddress.ip_network("127.3.9.0/24")])
    async with _serve(tmp_path, caps) as agent:
        flood = [await _bare(agent.port, f"127.2.0.{a}") for a in range(1, 41)]
        try:
            closed = await asyncio.gather(*(_closed_at_once(r) for r, _ in flood))
            assert [not c for c in closed] == [False] * 34 + [True] * 6
            assert agent.site.caps.all_handshaking == 6 and agent.site.caps.evicted == 34
        finally:
            for _, writer in flood:
                writer.close()
        async with asyncio.timeout(5):
            while agent.site.caps.all_handshaking:
                await asyncio.sleep(0.01)
        held = [await asyncio.open_connection("127.0.0.1", agent.port, ssl=agent.client, server_hostname="localhost",
                                              local_addr=(f"127.3.0.{a}", 0)) for a in range(1, 9)]
        try:
            assert agent.site.caps.all_open == 8
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                await agent.get_version("127.3.1.1")  # no handshake to take the place of: refused
            for a in range(1, 5):  # a configured verifier's reserve
                assert (await agent.get_version(f"127.3.9.{a}")).startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in held:
                writer.close()


@pytest.mark.parametrize(("address", "peer"), [
    ("127.0.0.1", LOOPBACK), ("127.1.2.3", LOOPBACK), ("::1", LOOPBACK), ("::ffff:127.9.9.9", LOOPBACK),
    ("192.0.2.7", "192.0.2.7"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"), ("fe80::1%eth0", "fe80::/64"),
])
def test_a_peer_is_an_ipv4_address_an_ipv6_64_or_the_whole_loopback(address: str, peer: str) -> None:
    assert peer_of(address) == peer


@pytest.mark.parametrize("limit", [256, 1024, 4096, 524288])
def test_the_caps_over_every_peer_leave_most_descriptors_to_the_rest(limit: int) -> None:
    handshakes, total = caps_for_fd_limit(limit)
    assert 8 <= handshakes <= total
    assert total + 3 * backlog_for_fd_limit(limit) <= limit // 4  # the listener, and what asyncio accepts at once


async def _hold(port: int, source: str) -> None:
    """One bare connection from `source`, re-opened the moment the agent closes it (review N1's flood_net)."""
    while True:
        try:
            reader, writer = await _bare(port, source)
        except OSError:
            await asyncio.sleep(0.005)
            continue
        try:
            await reader.read()
        except OSError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def _flood(port: int, sources: list[str], per_source: int) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(_hold(port, source)) for source in sources for _ in range(per_source)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_flood_from_sixteen_peers_holding_every_handshake_slot_does_not_keep_a_verifier_out(
        tmp_path: Path) -> None:
    """Review N1: 16 addresses x 4 bare connections (the per-peer cap) are every handshake slot over every peer
    (64), re-opened as the agent closes them. A verifier from a 17th address, never seen before, is still served:
    a newcomer takes the oldest unfinished handshake of the peer holding the most."""
    async with _serve(tmp_path, PeerCaps(peer_of=_per_address, all_handshakes=64, all_total=128)) as agent:
        sources = [f"127.4.0.{a}" for a in range(1, 17)]
        async with _flood(agent.port, sources, HANDSHAKES_PER_PEER):
            async with asyncio.timeout(10):
                while agent.site.caps.all_handshaking < 56:  # the flood holds (about) every slot strangers get
                    await asyncio.sleep(0.01)
            for _ in range(5):
                started = time.monotonic()
                answer = await agent.get_version("127.0.0.1")
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
                assert time.monotonic() - started < 2.0
            assert agent.site.caps.all_handshaking <= 64


async def test_a_verifier_that_took_an_integrity_quote_keeps_its_handshakes_through_a_flood(tmp_path: Path) -> None:
    """Learned, not claimed: an address is a known verifier once it took an integrity quote over mTLS. Then its
    unfinished handshake is never the one a newcomer displaces, and the flood gets only the strangers' share."""
    async with _serve(tmp_path, PeerCaps(peer_of=_per_address, all_handshakes=8, all_total=16, reserved=(2, 4))
                      ) as agent:
        caps = agent.site.caps
        assert (await agent.get_version("127.5.0.1")).startswith(b"HTTP/1.1 200")
        assert not caps.known("127.5.0.1")  # any client of the CA may ask for /version
        assert (await agent.get_version("127.5.0.1", "/v2.2/quotes/integrity")).startswith(b"HTTP/1.1 200")
        assert caps.known("127.5.0.1") and caps.known("::ffff:127.5.0.1") and not caps.known("127.5.0.2")
        verifier = [await _bare(agent.port, "127.5.0.1") for _ in range(2)]  # its handshakes, not yet finished
        flood = [await _bare(agent.port, f"127.6.0.{a}") for a in range(1, 101)]
        try:
            closed = await asyncio.gather(*(_closed_at_once(r) for r, _ in verifier + flood))
            assert [not c for c in closed] == [True, True] + [False] * 94 + [True] * 6
            assert caps.known_handshaking == 2 and caps.all_handshaking == 8
        finally:
            for _, writer in verifier + flood:
                writer.close()
