"""A2 (phase 1) of the break-this review, closed: 32 POST /keys/ukey bodies of 15 MB from a holder of a verifier-CA
client certificate took the daemon from 79 to 418 MB, each body read whole, parsed and decoded at once. Now each
route's Content-Length is checked before a byte is read, one payload is in memory at a time (a second waits briefly,
then is answered 429), and a pinned agent answers 409 unread. Over real mutual TLS, as the tenant and verifier
call the agent."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeward.keylime import routes
from edgeward.keylime.payloads import Payloads
from tests.fixtures.mtls_certs import issue
from tests.unit.test_keylime_auth import UUID, _bootstrap


@dataclass
class _StandIn:
    """What the routes use of the agent for these three routes: its payloads."""

    payloads: Payloads
    uuid: str = UUID


@dataclass
class _Api:
    port: int
    client: ssl.SSLContext
    agent: _StandIn
    others: dict[str, ssl.SSLContext]  # more clients of the verifier's CA, each with a certificate of its own

    def post(self, route: str, body: bytes | None, length: int | None = None, chunked: bool = False,
             who: str | None = None) -> int:
        """POST with a Content-Length of ``length`` (default: the body's), sending ``body`` (None: headers only, so
        only an answer given unread can arrive). Blocking, for a thread: the bytes go out from C, unlike the
        event loop's buffers, so the server's memory is all tracemalloc sees grow."""
        client = self.others[who] if who else self.client
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as s:
            size = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length or len(body or b'')}"
            s.sendall(f"POST /v2.6/keys/{route} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                      f"{size}\r\n\r\n".encode())
            if body is not None:
                try:
                    s.sendall(body)
                except OSError:
                    pass  # answered and closed before all of it went out
            return int(s.recv(64).split(b" ", 2)[1])


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[_Api]:
    ca_cert, ca_key, ca_path, _ = issue(tmp_path, "ca", None)
    _, _, server_cert, server_key = issue(tmp_path, "agent", (ca_cert, ca_key))
    _, _, client_cert, client_key = issue(tmp_path, "some-tenant", (ca_cert, ca_key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_path))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(server_cert), str(server_key))
    client = ssl.create_default_context(cafile=str(ca_path))
    client.load_cert_chain(str(client_cert), str(client_key))
    others: dict[str, ssl.SSLContext] = {}
    for who in ("verifier", "attacker"):
        _, _, cert_path, key_path = issue(tmp_path, who, (ca_cert, ca_key))
        others[who] = ssl.create_default_context(cafile=str(ca_path))
        others[who].load_cert_chain(str(cert_path), str(key_path))
    agent = _StandIn(Payloads(tmp_path / "keylime", rsa.generate_private_key(65537, 2048), UUID))
    (tmp_path / "keylime").mkdir()
    runner = web.AppRunner(routes.build_agent_app(agent))  # type: ignore[arg-type] # the routes it needs
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield _Api(port, client, agent, others)
    finally:
        await runner.cleanup()


async def _posts(api: _Api, route: str, body: bytes, n: int) -> list[int]:
    answers: list[int] = []

    def one() -> None:
        answers.append(api.post(route, body))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    return answers


async def test_each_route_refuses_a_body_over_its_bound_before_reading_it(api: _Api) -> None:
    attack = 15 << 20  # the review's bodies: the app used to take 16 MB on every route
    assert await asyncio.to_thread(api.post, "ukey", None, attack) == 413
    assert await asyncio.to_thread(api.post, "vkey", None, 5000) == 413  # a V is ~400 bytes of JSON
    assert await asyncio.to_thread(api.post, "ukey", None, None, True) == 411
    assert await asyncio.to_thread(api.post, "vkey", None, None, True) == 411


async def test_one_payload_is_in_memory_at_a_time(api: _Api) -> None:
    body = b'{"encrypted_key": "' + b"A" * (10 << 20) + b'"}'  # under the bound: read, parsed, decoded, refused
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        answers = await _posts(api, "ukey", body, 16)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    print(f"\n16 concurrent 10 MB ukey bodies: answers {sorted(answers)}; server peak {peak / 2**20:.0f} MB")
    assert set(answers) <= {400, 429} and 400 in answers, answers
    assert peak < 80 << 20, f"{peak / 2**20:.0f} MB: more than one payload in memory at once"


async def test_a_pinned_agent_refuses_another_u_unread_and_another_v(api: _Api) -> None:
    pub = api.agent.payloads._key.public_key()
    ukey, vkey, _ = _bootstrap(pub, None)
    api.agent.payloads.ukey(ukey)
    api.agent.payloads.vkey(vkey)
    assert await asyncio.to_thread(api.post, "ukey", None, 1 << 20) == 409  # answered with no body sent
    evil_u, evil_v, _ = _bootstrap(pub, None)
    assert await asyncio.to_thread(api.post, "ukey", json.dumps(evil_u).encode()) == 409
    assert await asyncio.to_thread(api.post, "vkey", json.dumps(evil_v).encode()) == 409
    assert await asyncio.to_thread(api.post, "vkey", json.dumps(vkey).encode()) == 200  # the verifier's, again


async def test_a_second_payload_waits_briefly_then_is_refused_not_queued(api: _Api) -> None:
    """A slow sender holds the one slot: the next payload is answered 429 within seconds, unread; a V still passes."""
    def hold() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", api.port), timeout=20)
        slow = api.client.wrap_socket(raw, server_hostname="localhost")
        slow.sendall(b"POST /v2.6/keys/ukey HTTP/1.1\r\nHost: agent\r\nContent-Length: 1000000\r\n\r\n{")
        return slow

    slow = await asyncio.to_thread(hold)
    try:
        await asyncio.sleep(0.2)  # its handler has the slot and waits for the rest of the body
        started = asyncio.get_running_loop().time()
        assert await asyncio.to_thread(api.post, "ukey", None, 1 << 20) == 429
        assert asyncio.get_running_loop().time() - started < routes.PAYLOAD_WAIT_SECONDS + 2
        _, vkey, _ = _bootstrap(api.agent.payloads._key.public_key(), None)
        assert await asyncio.to_thread(api.post, "vkey", json.dumps(vkey).encode()) == 400  # at once: no U for it
    finally:
        slow.close()


async def test_a_bare_u_flood_from_another_certificate_does_not_keep_the_bootstrap_from_combining(api: _Api) -> None:
    """N3 of the second review, over mTLS: a holder of another client certificate posts bare U halves throughout
    enrolment. The tenant's U (with its payload) stays pending beside them; the verifier's V combines with it and is
    answered 200; a V that combines with nothing is answered 400, which Keylime's verifier takes as a failed agent
    (event no_v), not as success."""
    from tests.unit.test_keylime_auth import _issue as issue_rsa

    pub = api.agent.payloads._key.public_key()
    notifier = issue_rsa("RevocationNotifier")
    ukey, vkey, _ = _bootstrap(pub, notifier[1])

    async def flood(n: int) -> list[int]:
        codes = []
        for _ in range(n):
            bare, _, _ = _bootstrap(pub, None)
            codes.append(await asyncio.to_thread(api.post, "ukey", json.dumps(bare).encode(), who="attacker"))
        return codes

    assert set(await flood(3)) == {200}
    assert await asyncio.to_thread(api.post, "ukey", json.dumps(ukey).encode()) == 200  # the tenant's
    assert set(await flood(5)) == {200}
    _, evil_v, _ = _bootstrap(pub, None)
    assert await asyncio.to_thread(api.post, "vkey", json.dumps(evil_v).encode(), who="attacker") == 400
    assert await asyncio.to_thread(api.post, "vkey", json.dumps(vkey).encode(), who="verifier") == 200
    assert api.agent.payloads.pinned()
    assert (api.agent.payloads.home / "revocation-cert.pem").exists()
