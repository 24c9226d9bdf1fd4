"""The identity service's HTTPS transport to the cloud, against a real TLS server that sends its answer slowly, in
small chunks: the whole body arrives (not what happened to be buffered), and a body past the cap is refused loudly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509

from edgeward.identity.cloud import MAX_RESPONSE, HttpsTransport, OversizedAnswer
from edgeward.testing.hub_emulator import HubEmulator

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHUNK = 4096


async def _slow_chunked(request: web.Request) -> web.StreamResponse:
    """``size`` bytes of JSON-ish text, chunked (no Content-Length), each chunk flushed and followed by a pause so
    that the client sees many small reads."""
    size = int(request.query["size"])
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    sent = 0
    try:
        while sent < size:
            n = min(CHUNK, size - sent)
            await resp.write(b"x" * n)  # flushed: one chunk per write
            sent += n
            await asyncio.sleep(0.002)  # pacing IS the behaviour under test: the body trickles in
        await resp.write_eof()
    except ConnectionResetError:  # the client refused the rest (past its cap) and hung up
        pass
    return resp


@pytest_asyncio.fixture
async def server() -> AsyncIterator[HubEmulator]:
    hub = HubEmulator()
    hub.extra_routes.append(("GET", "/slow", _slow_chunked))
    async with hub:
        yield hub


def _transport(hub: HubEmulator) -> HttpsTransport:
    return HttpsTransport([x509.load_pem_x509_certificate(hub.ca_pem)], timeout=30, peer="IoT Hub")


async def test_a_large_slowly_chunked_answer_arrives_whole(server: HubEmulator) -> None:
    size = 240 * 1024
    status, _headers, body = await _transport(server).send("GET", f"https://{server.hostname}/slow?size={size}",
                                                           {}, None)
    assert status == 200
    assert len(body) == size


async def test_an_answer_past_the_cap_is_refused_naming_the_url_and_the_cap(server: HubEmulator) -> None:
    url = f"https://{server.hostname}/slow?size={MAX_RESPONSE + CHUNK}"
    with pytest.raises(OversizedAnswer) as e:
        await _transport(server).send("GET", url, {}, None)
    assert url in e.value.message and str(MAX_RESPONSE) in e.value.message
    assert e.value.status == 502
