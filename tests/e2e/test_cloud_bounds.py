"""`cloud_timeout_sec` and `cloud_retries` bound every cloud call of the real daemon, as aziot-identityd's http-common
bounds them: each attempt (connect to last byte) gets cloud_timeout_sec, an attempt that got no answer is made again
up to cloud_retries more times, and then the caller gets a clear error. The cloud here is a black hole: a TCP server on
port 443 of a loopback address of its own that accepts and never answers (not even the TLS handshake); it counts
the attempts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeward.identity.cloud import RETRY_DELAY
from edgeward.supervise import start_daemon, stop_daemon

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the black hole listens on port 443")]

IDENTITY = "api-version=2021-12-01"


class BlackHole:
    """Accepts connections and never says a word; closes them when the test ends."""

    def __init__(self) -> None:
        self.address = ""
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[BlackHole]:
        for _ in range(20):
            self.address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
            try:
                self._server = await asyncio.start_server(self._accept, self.address, 443)
                break
            except OSError:
                continue
        assert self._server is not None
        try:
            yield self
        finally:
            for writer in self._writers:
                writer.close()
            self._server.close()
            await self._server.wait_closed()


async def call(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
            s.request(method, "http://localhost" + path, json=body, timeout=aiohttp.ClientTimeout(total=120)) as r:
        return r.status, json.loads(await r.read() or b"null")


@asynccontextmanager
async def daemon(base: Path, config: str) -> AsyncIterator[Path]:
    (base / "config.toml").write_text(textwrap.dedent(config))
    run = base / "run"
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(None, lambda: start_daemon(
        ["run", "-c", str(base / "config.toml"), "--state-dir", str(base / "state"), "--run-dir", str(run)],
        log_path=base / "daemon.log"))
    try:
        yield run
    finally:
        await loop.run_in_executor(None, stop_daemon, proc)


async def test_a_hub_call_gets_cloud_retries_more_attempts_of_cloud_timeout_sec_each(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    async with BlackHole().listening() as hole, daemon(tmp_path, f"""
            hostname = "bounded"
            cloud_timeout_sec = 1
            cloud_retries = 2
            [provisioning]
            source = "manual"
            connection_string = "HostName={hole.address};DeviceId=bounded;SharedAccessKey={key}"
            """) as run:
        before = hole.accepted
        started = time.monotonic()
        status, body = await call(run / "identityd.sock", "POST", "/identities/modules?" + IDENTITY,
                                  {"type": "aziot", "moduleId": "m1"})
        took = time.monotonic() - started
        attempts = hole.accepted - before
    assert status == 503, body
    assert "did not answer within 1s (cloud_timeout_sec)" in body["message"], body
    assert "after 3 attempts; cloud_retries = 2" in body["message"], body
    assert attempts == 3
    assert 3 * 1 + 2 * RETRY_DELAY - 0.5 <= took < 3 * 1 + 2 * RETRY_DELAY + 5, took


async def test_dps_registration_is_bounded_the_same_way(tmp_path: Path) -> None:
    key = base64.b64encode(b"d" * 32).decode()
    async with BlackHole().listening() as hole, daemon(tmp_path, f"""
            hostname = "bounded-dps"
            cloud_timeout_sec = 1
            cloud_retries = 0
            [provisioning]
            source = "dps"
            global_endpoint = "https://{hole.address}"
            id_scope = "0ne00000000"
            [provisioning.attestation]
            method = "symmetric_key"
            registration_id = "bounded-dps"
            symmetric_key = {{ value = "{key}" }}
            """) as run:
        attempts = hole.accepted  # the registration made at start, before the daemon was ready
        status, body = await call(run / "identityd.sock", "GET", "/identities/identity?" + IDENTITY)
    assert status == 503, body
    assert "did not answer within 1s (cloud_timeout_sec)" in body["message"], body
    assert "attempts" not in body["message"]  # cloud_retries = 0: one attempt
    assert attempts == 1
