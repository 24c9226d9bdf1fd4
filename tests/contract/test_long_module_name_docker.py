"""A container module with the longest name the agent deploys (128 characters), over a real dockerd: its workload
socket directory is named by a hash (the plain path would pass the Unix socket limit), mounted where every container
finds it, and the module is attested as itself there — and only there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}


def _spec(name: str, calls: list[Any]) -> dict[str, Any]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never", "config": {
        "settings": {"image": TEST_IMAGE, "createOptions": {
            "Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT], "HostConfig": {"Mounts": host_python_binds()}}},
        "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(calls)}]}}


async def test_container_module_with_a_128_character_name_signs_on_its_own_socket_only(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> None:
    doc = {"hostname": "edge-long", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker"}}}
    name = "m" * 128
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2020-07-07", SIGN],
                     ["POST", "workload", "/modules/short/genid/{genid}/sign?api-version=2020-07-07", SIGN]]
            await mgmt.create_module(_spec(name, calls))
            await mgmt.action(name, "start")
            own, other = await module_results(rt.parts.engine, name)
            assert own["status"] == 200 and set(own["body"]) == {"digest"}, own
            assert other["status"] == 403, other
            hashed = [d.name for d in rt.settings.workload_root.iterdir()]
            assert hashed and all(d.startswith("~") and len(d) < 40 for d in hashed), hashed
        finally:
            for m in await rt.parts.engine.list():
                await rt.parts.engine.remove(m.name)
            await mgmt.close()
