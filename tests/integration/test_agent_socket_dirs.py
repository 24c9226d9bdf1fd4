"""The edge agent's socket directories on a real dockerd (review of session 11): mounted read-only, and a file left
where its management socket goes costs the agent that socket, not the daemon its start."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03"
LIST_PATH = "/modules?api-version=2022-08-03"

# Root in the agent's container writes into the directories of both its sockets (one RESULT line each).
PROBE = textwrap.dedent("""
    import errno, json, os, urllib.parse
    for var in ("IOTEDGE_WORKLOADURI", "IOTEDGE_MANAGEMENTURI"):
        d = os.path.dirname(urllib.parse.urlparse(os.environ[var]).path)
        try:
            with open(d + "/fill", "wb") as f:
                f.write(b"\\0" * 4096)
            print("RESULT " + json.dumps({"status": var + " written"}), flush=True)
        except OSError as e:
            print("RESULT " + json.dumps({"status": var + " " + errno.errorcode[e.errno]}), flush=True)
""")


def _doc(dockerd: Dockerd, connect: dict[str, str] | None, calls: list[Any]) -> dict[str, Any]:
    agent = {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never", "config": {
        "image": TEST_IMAGE, "createOptions": {"Cmd": ["/usr/bin/python3", "-c", PROBE + CLIENT_SCRIPT],
                                               "HostConfig": {"Mounts": host_python_binds()}}},
        "env": {"EDGEWARD_TEST_CALLS": json.dumps(calls)}}
    doc: dict[str, Any] = {"hostname": "edge-agent-dirs", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
                           "agent": agent, "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    if connect is not None:
        doc["connect"] = connect
    return doc


async def test_the_agents_management_and_workload_directories_are_read_only(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> None:
    """Edgeward's layout: the management directory (which also holds the host's management socket) is mounted
    into the agent beside its workload directory; it can use both sockets and write in neither."""
    calls = [["GET", "mgmt", LIST_PATH, None], ["POST", "workload", SIGN_PATH, SIGN]]
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), _doc(dockerd, None, calls)) as rt:
        try:
            workload, mgmt, listing, sign = await module_results(rt.parts.engine, "edgeAgent", timeout=60)
            assert workload["status"] == "IOTEDGE_WORKLOADURI EROFS", workload
            assert mgmt["status"] == "IOTEDGE_MANAGEMENTURI EROFS", mgmt
            assert listing["status"] == 200 and sign["status"] == 200, (listing, sign)
            assert not (rt.settings.mgmt_dir / "fill").exists()
        finally:
            for m in await rt.parts.engine.list():
                await rt.parts.engine.remove(m.name)


async def test_a_file_where_the_agents_management_socket_goes_fails_that_socket_only(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd, caplog: pytest.LogCaptureFixture) -> None:
    """IoT Edge's one-directory layout puts the agent's management socket in its workload directory. A regular
    file there (from a container created when that directory was writable) is left alone; the runtime starts, and
    the agent keeps its workload socket."""
    connect = {"workload_uri": "unix:///var/run/iotedge/workload.sock",
               "management_uri": "unix:///var/run/iotedge/mgmt.sock"}
    planted = public_dir / "run" / "workload" / "edgeAgent" / "mgmt.sock"
    planted.parent.mkdir(parents=True)
    planted.write_text("not a socket\n")
    calls = [["GET", "mgmt", LIST_PATH, None], ["POST", "workload", SIGN_PATH, SIGN]]
    with caplog.at_level(logging.ERROR, logger="edgeward.runtime.compose"):
        async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri),
                                 _doc(dockerd, connect, calls)) as rt:
            try:
                _, _, listing, sign = await module_results(rt.parts.engine, "edgeAgent", timeout=60)
                assert listing["status"] == 0 and sign["status"] == 200, (listing, sign)
                assert planted.read_text() == "not a socket\n"
                assert f"the edge agent's management socket cannot be opened at {planted}" in caplog.text
            finally:
                for m in await rt.parts.engine.list():
                    await rt.parts.engine.remove(m.name)
