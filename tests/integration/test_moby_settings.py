"""[moby_runtime] network and the agent's [agent.config.auth] / [agent.env], on a real dockerd.

dockerd runs with --bridge=none --iptables=false: the network Edgeward creates is a user-defined bridge (the
engine's default driver, as aziot-edged creates it; ipvlan and macvlan answer "operation not supported" there).
dockerd adds a br-<id> interface (with the network's gateway address) for it while it exists, and no firewall
rule; the test uses a subnet of the benchmarking range and removes the network.

No registry is reachable: a local HTTP server stands in for one at 127.0.0.1 (which dockerd treats as an insecure
registry and reaches over plain HTTP), challenges for Basic credentials, and records the Authorization header
dockerd sends — which can only come from the X-Registry-Auth the runtime gave dockerd's pull."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _inspect(dockerd: Dockerd, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(dockerd.cli("inspect", name).stdout)[0]
    return out


async def test_modules_and_agent_join_the_network_created_when_missing(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> None:
    network = f"edgeward-net-{uuid.uuid4().hex[:8]}"
    assert dockerd.cli("network", "inspect", network, check=False).returncode != 0
    agent = {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never",
             "config": {"image": TEST_IMAGE, "createOptions": {"Cmd": ["sleep", "3600"]}},
             "env": {"RuntimeLogLevel": "debug", "UpstreamProtocol": "AmqpWs"}}
    # IoT Edge's table form; a subnet from the benchmarking range (RFC 2544) clashes with no real network.
    table = {"name": network, "ipam": {"config": [{"gateway": "198.18.231.1", "subnet": "198.18.231.0/24",
                                                    "ip_range": "198.18.231.128/25"}]}}
    doc = {"hostname": "edge-net", "moby_runtime": {"uri": dockerd.uri, "network": table}, "agent": agent,
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    try:
        async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
            try:
                created = _inspect(dockerd, network)
                assert created["Driver"] == "bridge", created
                assert created["IPAM"]["Config"] == [{"Subnet": "198.18.231.0/24", "IPRange": "198.18.231.128/25",
                                                      "Gateway": "198.18.231.1"}], created["IPAM"]
                mgmt = ManagementClient(rt.mgmt_socket)
                try:
                    await mgmt.create_module({"name": "netmod", "type": "docker", "imagePullPolicy": "never",
                                              "config": {"settings": {"image": TEST_IMAGE, "createOptions": {
                                                  "Cmd": ["sleep", "3600"]}}, "env": []}})
                    await mgmt.action("netmod", "start")
                finally:
                    await mgmt.close()
                for name in ("edgeAgent", "netmod"):
                    c = _inspect(dockerd, name)
                    assert c["HostConfig"]["NetworkMode"] == network, name
                    assert list(c["NetworkSettings"]["Networks"]) == [network], name
                    assert c["NetworkSettings"]["Networks"][network]["IPAddress"].startswith("198.18.231."), name
                env = dict(e.split("=", 1) for e in _inspect(dockerd, "edgeAgent")["Config"]["Env"])
                assert env["RuntimeLogLevel"] == "debug" and env["UpstreamProtocol"] == "AmqpWs"  # [agent.env]
            finally:
                for m in await rt.parts.engine.list():
                    await rt.parts.engine.remove(m.name)
        # A second start finds the network and uses it as it is.
        without_agent = {k: v for k, v in doc.items() if k != "agent"}
        async with serve_runtime(request, public_dir / "again", DockerEngine(dockerd.uri), without_agent):
            assert _inspect(dockerd, network)["Id"] == created["Id"]
    finally:
        dockerd.cli("network", "rm", network, check=False)


class _Registry:
    """Answers every request 401 with a Basic challenge until it gets credentials, then 404; records them."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        if auth is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="edgeward-test"',
                                                     "Docker-Distribution-API-Version": "registry/2.0"})
        self.authorizations.append(auth)
        self.got.set()
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such manifest"}]},
                                 status=404, headers={"Docker-Distribution-API-Version": "registry/2.0"})


@pytest.fixture
async def registry() -> AsyncIterator[tuple[_Registry, int]]:
    reg = _Registry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", reg.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield reg, port
    finally:
        await runner.cleanup()


async def test_agent_registry_credentials_reach_dockerds_pull(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd,
        registry: tuple[_Registry, int]) -> None:
    reg, port = registry
    server = f"127.0.0.1:{port}"
    agent = {"name": "edgeAgent", "type": "docker",
             "config": {"image": f"{server}/azureiotedge-agent:1.5",
                        "auth": {"serveraddress": server, "username": "edge-user", "password": "s3cret-pw"}}}
    doc = {"hostname": "edge-auth", "moby_runtime": {"uri": dockerd.uri, "network": "none"}, "agent": agent,
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
        await asyncio.wait_for(reg.got.wait(), 60)
        assert rt.parts.runtime.last_watchdog_error is not None  # no image behind the stand-in
        assert "s3cret-pw" not in rt.parts.runtime.last_watchdog_error
    scheme, _, value = reg.authorizations[0].partition(" ")
    assert scheme == "Basic" and base64.b64decode(value).decode() == "edge-user:s3cret-pw"
