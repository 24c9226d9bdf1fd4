"""IoT Edge's [connect] and [listen] on a real dockerd: the sockets are where [listen] says on the host, and the agent
and modules find them where [connect] says inside their containers (IOTEDGE_WORKLOADURI, IOTEDGE_MANAGEMENTURI),
in IoT Edge's own layouts (edgelet/iotedge/test-files/config/not-socket-activated-* and its defaults)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03"
LIST_PATH = "/modules?api-version=2022-08-03"


def _env_of(dockerd: Dockerd, name: str) -> dict[str, str]:
    raw = json.loads(dockerd.cli("inspect", name).stdout)[0]["Config"]["Env"]
    return dict(e.split("=", 1) for e in raw)


def _agent(calls: list[Any]) -> dict[str, Any]:
    return {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never", "config": {
        "image": TEST_IMAGE, "createOptions": {"Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT],
                                               "HostConfig": {"Mounts": host_python_binds()}}},
        "env": {"EDGEWARD_TEST_CALLS": json.dumps(calls)}}


@asynccontextmanager
async def _runtime(request: pytest.FixtureRequest, base: Path, dockerd: Dockerd, connect: dict[str, str],
                   listen: dict[str, str], agent_calls: list[Any]) -> AsyncIterator[RuntimeEnv]:
    doc = {"hostname": "edge-sockets", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "connect": connect, "listen": listen, "agent": _agent(agent_calls),
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    async with serve_runtime(request, base, DockerEngine(dockerd.uri), doc) as env:
        try:
            yield env
        finally:
            for m in await env.parts.engine.list():
                await env.parts.engine.remove(m.name)


async def test_agent_finds_both_sockets_in_iotedge_default_one_directory_layout(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> None:
    """IoT Edge's defaults: both sockets in /var/run/iotedge inside the agent; management on a host path of the
    operator's choosing."""
    listen_mgmt = public_dir / "iotedge" / "mgmt.sock"
    connect = {"workload_uri": "unix:///var/run/iotedge/workload.sock",
               "management_uri": "unix:///var/run/iotedge/mgmt.sock"}
    calls = [["GET", "mgmt", LIST_PATH, None], ["POST", "workload", SIGN_PATH, SIGN]]
    async with _runtime(request, public_dir, dockerd, connect, {"management_uri": f"unix://{listen_mgmt}"},
                        calls) as rt:
        listing, sign = await module_results(rt.parts.engine, "edgeAgent", timeout=60)
        assert listing["status"] == 200 and sign["status"] == 200, (listing, sign)
        assert [m["name"] for m in listing["body"]["modules"]] == ["edgeAgent"]
        env = _env_of(dockerd, "edgeAgent")
        assert env["IOTEDGE_WORKLOADURI"] == connect["workload_uri"]
        assert env["IOTEDGE_MANAGEMENTURI"] == connect["management_uri"]
        assert rt.settings.mgmt_socket == listen_mgmt
        host = ManagementClient(listen_mgmt)  # host root on the [listen] socket
        try:
            assert [m["name"] for m in await host.list_modules()] == ["edgeAgent"]
        finally:
            await host.close()


async def test_modules_are_told_custom_connect_paths_and_the_shared_listen_socket_attests_them(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> None:
    """not-socket-activated-both-custom: custom file names in one directory. [listen] workload_uri is IoT Edge's
    shared workload socket (aziot-edged serves it beside the per-module ones, for modules an older agent created):
    a module reaching it is still attested by its container, so it can sign as itself and as no one else."""
    own = public_dir / "own"
    connect = {"workload_uri": "unix:///my/own/iotedge.workload.sock",
               "management_uri": "unix:///my/own/iotedge.mgmt.sock"}
    listen = {"workload_uri": f"unix://{own}/legacy/iotedge.workload.sock",
              "management_uri": f"unix://{own}/iotedge.mgmt.sock"}
    calls = [["GET", "mgmt", LIST_PATH, None], ["POST", "workload", SIGN_PATH, SIGN]]
    async with _runtime(request, public_dir, dockerd, connect, listen, calls) as rt:
        listing, sign = await module_results(rt.parts.engine, "edgeAgent", timeout=60)
        assert listing["status"] == 200 and sign["status"] == 200, (listing, sign)
        agent_env = _env_of(dockerd, "edgeAgent")
        assert agent_env["IOTEDGE_WORKLOADURI"] == connect["workload_uri"]
        assert agent_env["IOTEDGE_MANAGEMENTURI"] == connect["management_uri"]

        # A module whose (older) client was pointed at the shared socket: the test client's "mgmt" calls go to
        # IOTEDGE_MANAGEMENTURI, which a non-agent module may set for itself.
        shared_calls = [["POST", "workload", SIGN_PATH, SIGN], ["POST", "mgmt", SIGN_PATH, SIGN],
                        ["POST", "mgmt", "/modules/edgeAgent/genid/{genid}/sign?api-version=2022-08-03", SIGN]]
        spec = {"name": "oldclient", "type": "docker", "imagePullPolicy": "never", "config": {
            "settings": {"image": TEST_IMAGE, "createOptions": {
                "Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT],
                "HostConfig": {"Mounts": [*host_python_binds(), {"Type": "bind", "Source": str(own / "legacy"),
                                                                 "Target": "/legacy"}]}}},
            "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(shared_calls)},
                    {"key": "IOTEDGE_MANAGEMENTURI", "value": "unix:///legacy/iotedge.workload.sock"}]}}
        host = ManagementClient(own / "iotedge.mgmt.sock")
        try:
            await host.create_module(spec)
            await host.action("oldclient", "start")
        finally:
            await host.close()
        own_socket, shared, as_agent = await module_results(rt.parts.engine, "oldclient", timeout=60)
        assert own_socket["status"] == 200 and shared["status"] == 200, (own_socket, shared)
        assert shared["body"] == own_socket["body"]  # the same key: the module's own
        assert as_agent["status"] == 403 and "registration_for" in as_agent["body"]["message"], as_agent
        assert _env_of(dockerd, "oldclient")["IOTEDGE_WORKLOADURI"] == connect["workload_uri"]
        assert (rt.settings.workload_root / "oldclient" / "iotedge.workload.sock").is_socket()
