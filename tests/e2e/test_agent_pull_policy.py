"""``[agent] imagePullPolicy`` as an operator writes it in config.toml, taking effect in the daemon (``edgeward run``)
on a real dockerd: with "never", an agent image that is not on the device is not pulled (the registry never hears
from dockerd) and the daemon says why the agent does not start; with "on-create" (the default) the same config
makes dockerd pull it, which is what shows the registry stand-in would have seen a pull.

No registry is reachable: a local HTTP server at 127.0.0.1 (which dockerd reaches over plain HTTP) stands in for one
and records every request dockerd makes to it."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.fixtures.config_daemon import DEADLINE, daemon
from tests.fixtures.dockerd import Dockerd

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def registry() -> AsyncIterator[tuple[list[str], int]]:
    """A registry stand-in that answers 404 to everything and records each path asked for."""
    asked: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such manifest"}]},
                                 status=404, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield asked, port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("policy", ["never", "on-create"])
async def test_never_keeps_an_absent_agent_image_from_being_pulled(policy: str, public_dir: Path, dockerd: Dockerd,
                                                                   registry: tuple[list[str], int]) -> None:
    asked, port = registry
    image = f"127.0.0.1:{port}/azureiotedge-agent-{uuid.uuid4().hex[:8]}:1.5"
    assert dockerd.cli("image", "inspect", image, check=False).returncode != 0  # not on the device
    config = public_dir / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "pull-{policy}"

        [moby_runtime]
        uri = "{dockerd.uri}"
        network = "none"

        [agent]
        name = "edgeAgent"
        type = "docker"
        imagePullPolicy = "{policy}"

        [agent.config]
        image = "{image}"

        [edgeward.runtime]
        engine = "docker"
        watchdog_seconds = 1
    """))
    log = public_dir / "daemon.log"
    async with daemon(config, public_dir):
        deadline = time.monotonic() + DEADLINE
        if policy == "never":
            while "imagePullPolicy is never" not in log.read_text():
                assert not asked, f"dockerd asked the registry for {asked}"
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            assert f"image {image} is not on the device" in log.read_text()
        else:
            while not asked:
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
    if policy == "never":
        assert asked == []  # dockerd was never asked to pull
    assert dockerd.cli("inspect", "edgeAgent", check=False).returncode != 0  # no agent container either way
