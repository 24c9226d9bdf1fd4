"""The Keylime agent's listener under a flood from one address: connections beyond the per-address caps are closed
at once, before any TLS, and a verifier on another address is still answered promptly."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.http.connections import GuardedRunner
from edgeward.keylime.listener import CONNECTIONS_PER_PEER, HANDSHAKES_PER_PEER, AgentSite

ATTACKER = "127.0.0.2"  # Linux routes all of 127/8 to lo


def _issue(base: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = base / f"{name}.pem", base / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


class _Agent:
    def __init__(self, port: int, client: ssl.SSLContext, site: AgentSite) -> None:
        self.port, self.client, self.site = port, client, site

    async def get_version(self, local: str = "127.0.0.1") -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client,
                                                       local_addr=(local, 0), server_hostname="localhost")
        try:
            writer.write(b"GET /version HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            return await reader.read()
        finally:
            writer.close()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[_Agent]:
    ca_cert, ca_key, ca_path, _ = _issue(tmp_path, "ca", None)
    _, _, server_cert, server_key = _issue(tmp_path, "agent", (ca_cert, ca_key))
    _, _, client_cert, client_key = _issue(tmp_path, "verifier", (ca_cert, ca_key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_path))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(str(server_cert), str(server_key))
    client = ssl.create_default_context(cafile=str(ca_path))
    client.load_cert_chain(str(client_cert), str(client_key))

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"code": 200})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = GuardedRunner(app)
    await runner.setup()
    site = AgentSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield _Agent(port, client, site)
    finally:
        await runner.cleanup()


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
