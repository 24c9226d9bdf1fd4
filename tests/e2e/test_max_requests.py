"""`[aziot_max_requests]` and `[iotedge_max_requests]` (IoT Edge's nested-edge test config sets them) take effect on
the real daemon: aziot's http-common lets one uid hold at most `max_requests` simultaneous connections (each serving
one request at a time) on a service's socket; past that the next connection is refused at once. Edgeward answers it
with a 429 naming the limit (aziot closes it unanswered), and the caller is served again as soon as it lets one go.
A service the config does not name keeps Edgeward's own (higher) limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest

from edgeward.supervise import start_daemon, stop_daemon

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _parse(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def request(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return _parse(await asyncio.wait_for(reader.read(), 10))


async def first_refused(sock: Path, limit_over: int, path: str) -> tuple[list[asyncio.StreamWriter], int, bytes]:
    """Open ``limit_over`` idle connections, then one more: (the idle ones, and the answer the next one gets: a
    refusal arrives before any request, else the answer to a request)."""
    held = [(await asyncio.open_unix_connection(str(sock)))[1] for _ in range(limit_over)]
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        status, body = _parse(await asyncio.wait_for(reader.read(), 1.0))  # refused at accept: answered, closed
    except TimeoutError:
        status, body = await request(writer, reader, path)
    writer.close()
    return held, status, body


async def test_configured_max_requests_cap_each_callers_connections_per_socket(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent("""\
        hostname = "limited"
        [aziot_max_requests]
        identityd = 2
        certd = 3
        [iotedge_max_requests]
        management = 2
        """))
    run = tmp_path / "run"
    loop = asyncio.get_running_loop()
    daemon = await loop.run_in_executor(None, lambda: start_daemon(
        ["run", "-c", str(config), "--state-dir", str(tmp_path / "state"), "--run-dir", str(run)],
        log_path=tmp_path / "daemon.log"))
    held: list[asyncio.StreamWriter] = []
    try:
        results = {}
        for sock, limit, path in ((run / "identityd.sock", 2, "/identities/provisioning?api-version=2021-12-01"),
                                  (run / "certd.sock", 3, "/certificates/none?api-version=2020-09-01"),
                                  (run / "mgmt" / "mgmt.sock", 2, "/modules?api-version=2022-08-03")):
            idle, status, body = await first_refused(sock, limit, path)
            results[sock.name] = (status, json.loads(body)["message"])
            # one let go: the caller is served again
            idle[0].close()
            deadline = loop.time() + 5  # until the server has seen the close
            while True:
                reader, writer = await asyncio.open_unix_connection(str(sock))
                try:
                    served, _ = await request(writer, reader, path)
                except ConnectionResetError:  # refused before our request was read
                    served = 429
                writer.close()
                if served != 429 or loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert served != 429, (sock.name, served)
            held += idle[1:]
        # keyd is not configured: Edgeward's default cap (far above aziot's 10) still applies
        idle, status, _ = await first_refused(run / "keyd.sock", 12, "/key/none?api-version=2020-09-01")
        held += idle
        assert status != 429
    finally:
        for writer in held:
            writer.close()
        await loop.run_in_executor(None, stop_daemon, daemon)
    assert results == {
        "identityd.sock": (429, "too many open connections from this caller (limit 2); close idle connections "
                                "and retry"),
        "certd.sock": (429, "too many open connections from this caller (limit 3); close idle connections and retry"),
        "mgmt.sock": (429, "too many open connections from this caller (limit 2); close idle connections and retry"),
    }
