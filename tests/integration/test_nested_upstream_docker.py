"""`$upstream` in the agent's image, on a real dockerd: aziot-edged resolves it to the parent's host name before it
pulls and creates the agent (main.rs, `agent_upstream_resolve`), so a child device runs the agent image its parent's
registry serves (`$upstream:443/azureiotedge-agent:1.5`). No registry is reachable here, so the image is already on
the engine under the resolved name (as after a pull from the parent); the container must be created from exactly that
name, and get `IOTEDGE_GATEWAYHOSTNAME` = the parent (watchdog.rs `agent_env`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

PARENT = "parent.example"
RESOLVED = f"{PARENT}:443/edgeward-test/agent:nested"


async def test_agent_image_upstream_resolves_to_the_parent(request: pytest.FixtureRequest, public_dir: Path,
                                                           dockerd: Dockerd) -> None:
    dockerd.cli("tag", TEST_IMAGE, RESOLVED)
    doc = {"hostname": "child-docker", "local_gateway_hostname": PARENT,
           "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}},
           "agent": {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never",
                     "config": {"image": "$upstream:443/edgeward-test/agent:nested",
                                "createOptions": {"Cmd": ["sleep", "3600"]}}}}
    try:
        async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
            try:
                deadline = asyncio.get_running_loop().time() + 30
                while rt.parts.registry.get("edgeAgent") is None or not rt.parts.registry.get("edgeAgent").engine_id:
                    assert asyncio.get_running_loop().time() < deadline, "the agent was not created"
                    await asyncio.sleep(0.1)
                inspected = json.loads(dockerd.cli("inspect", "edgeAgent").stdout)[0]
            finally:
                for m in await rt.parts.engine.list():
                    await rt.parts.engine.remove(m.name)
    finally:
        dockerd.cli("rmi", RESOLVED, check=False)
    assert inspected["Config"]["Image"] == RESOLVED
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert env["IOTEDGE_GATEWAYHOSTNAME"] == PARENT
    assert "IOTEDGE_PARENTHOSTNAME" not in env
