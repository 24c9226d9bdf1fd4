"""A container module's workload socket is 0666 in a 0755 directory on the host, so that the module's processes can
connect whatever uid they run as: a local user can connect too. On a real dockerd: the user's connections count
under the user, the container's under its module (attested by its init's namespaces, at accept), so the user's
idle connections do not lock the module out (a21 part 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.peers import held_by_a_local_user
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03"


async def test_a_local_user_holding_connections_to_a_containers_socket_leaves_the_module_signing(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER", "20")
    gate = public_dir / "gate"
    gate.mkdir()
    gate.chmod(0o755)
    calls = [["POST", "workload", SIGN_PATH, SIGN]] * 10
    agent = {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never", "config": {
        "image": TEST_IMAGE, "createOptions": {"Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT], "HostConfig": {
            "Mounts": [*host_python_binds(), {"Type": "bind", "Source": str(gate), "Target": "/gate"}]}}},
        "env": {"EDGEWARD_TEST_CALLS": json.dumps(calls), "EDGEWARD_TEST_GO": "/gate/go"}}
    doc = {"hostname": "edge-caps", "moby_runtime": {"uri": dockerd.uri, "network": "none"}, "agent": agent,
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
        try:
            await module_results(rt.parts.engine, "edgeAgent", timeout=60, until=b"WAITING")
            sock = rt.parts.sockets.socket_path("edgeAgent")
            async with held_by_a_local_user(sock, 40) as (_, flood):
                (gate / "go").touch()
                results = await module_results(rt.parts.engine, "edgeAgent", timeout=60)
            print(json.dumps({"flood": flood, "module": [r["status"] for r in results]}))
            assert [r["status"] for r in results] == [200] * 10, results
            assert flood == {"held": 8, "refused": {"429": 32}}, flood
        finally:
            for m in await rt.parts.engine.list():
                await rt.parts.engine.remove(m.name)
