"""The runtime over a real dockerd: modules in containers calling the workload API through their own mounted
socket, the attack set (look-alike containers, replaced containers, other modules' names and generations, the
management API from a non-agent container), the watchdog, and a dockerd restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeward.http.errors import HttpError
from edgeward.runtime.engine import ENGINE_LABEL
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, container_results, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.podman import Podman
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")
SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30"


def container_spec(name: str, calls: list[Any], mounts: list[dict[str, object]] | None = None,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never", "config": {
        "settings": {"image": TEST_IMAGE, "createOptions": {
            "Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT],
            "HostConfig": {"Mounts": host_python_binds() + (mounts or [])}}},
        "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(calls)},
                *({"key": k, "value": v} for k, v in (env or {}).items())]}}


def _doc(dockerd: Dockerd, agent: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"hostname": "edge-docker", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
                           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    if agent is not None:
        doc["agent"] = agent
    return doc


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> AsyncIterator[RuntimeEnv]:
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), _doc(dockerd)) as env:
        try:
            yield env
        finally:
            for m in await env.parts.engine.list():
                await env.parts.engine.remove(m.name)


def _run_by_hand(dockerd: Dockerd, name: str, labels: dict[str, str], workload_dir: Path, env: dict[str, str],
                 calls: list[Any]) -> str:
    """A container started outside Edgeward, as an attacker with access to the engine would."""
    args = ["run", "-d", "--name", name, "--network", "none"]
    for k, v in labels.items():
        args += ["--label", f"{k}={v}"]
    for m in host_python_binds():
        args += ["--mount", f"type=bind,src={m['Source']},dst={m['Target']},readonly"]
    args += ["--mount", f"type=bind,src={workload_dir},dst=/var/run/iotedge"]
    for k, v in {**env, "EDGEWARD_TEST_CALLS": json.dumps(calls),
                 "IOTEDGE_WORKLOADURI": "unix:///var/run/iotedge/workload.sock"}.items():
        args += ["-e", f"{k}={v}"]
    return dockerd.cli(*args, TEST_IMAGE, "/usr/bin/python3", "-c", CLIENT_SCRIPT).stdout.strip()


async def test_container_module_uses_its_workload_socket(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    calls = [["POST", "workload", SIGN_PATH, SIGN],
             ["POST", "workload", "/modules/{name}/genid/{genid}/certificate/server?api-version=2019-01-30",
              {"commonName": "sensor"}],
             ["POST", "workload", "/modules/{name}/genid/wrong-gen/sign?api-version=2019-01-30", SIGN],
             ["POST", "workload", "/modules/other/genid/{genid}/sign?api-version=2019-01-30", SIGN]]
    created = await mgmt.create_module(container_spec("sensor", calls))
    assert len(created["id"]) == 64 and created["config"]["settings"]["imageHash"].startswith("sha256:")
    await mgmt.action("sensor", "start")
    sign, cert, wrong_gen, other = await module_results(rt.parts.engine, "sensor")
    assert sign["status"] == 200 and cert["status"] == 201, (sign, cert)
    assert wrong_gen["status"] == 403 and "registration_for" in wrong_gen["body"]["message"]
    assert other["status"] == 403 and "registration_for" in other["body"]["message"]


async def test_a_create_the_engine_refuses_leaves_no_module_identity(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """Break-this review, session 12 (i02): a refused create left the module identity it had made (in IoT Hub,
    which caps a device's module identities). Here dockerd refuses the container after the identity was made, so
    the runtime must undo it; the runtime's own check could not have seen the problem."""
    spec = container_spec("refused", [])
    spec["config"]["settings"]["createOptions"]["HostConfig"]["Memory"] = 1  # below dockerd's minimum (6 MB)
    with pytest.raises(HttpError) as e:
        await mgmt.create_module(spec)
    assert e.value.status == 400 and "memory" in e.value.message.lower(), e.value.message
    assert "refused" not in {i["moduleId"] for i in await mgmt.identities()}
    assert "refused" not in {m["name"] for m in await mgmt.list_modules()}


async def test_look_alike_container_is_refused_and_found(rt: RuntimeEnv, mgmt: ManagementClient,
                                                         dockerd: Dockerd) -> None:
    await mgmt.create_module(container_spec("victim", []))
    victim = rt.parts.registry.get("victim")
    assert victim is not None
    name = "victim-lookalike"
    try:
        _run_by_hand(dockerd, name, {ENGINE_LABEL: "victim", "net.edgeward.system": "False"},
                     rt.settings.workload_root / "victim",
                     {"IOTEDGE_MODULEID": "victim", "IOTEDGE_MODULEGENERATIONID": victim.generation_id},
                     [["POST", "workload", SIGN_PATH, SIGN]])
        (result,) = await container_results(dockerd, name)
        assert result["status"] == 403 and "did not create" in result["body"]["message"]
        findings = await rt.parts.monitor.check()
        assert ("unregistered", name) in {(f.kind, f.module) for f in findings}
        kinds = [r.kind for r in rt.parts.audit.records()]
        assert {"integrity.unregistered", "access.refused"} <= set(kinds)  # the finding, and the refusal
    finally:
        dockerd.cli("rm", "-f", name, check=False)


async def test_replaced_container_with_retagged_image_is_refused(rt: RuntimeEnv, mgmt: ManagementClient,
                                                                 dockerd: Dockerd) -> None:
    await mgmt.create_module(container_spec("payments", []))
    reg = rt.parts.registry.get("payments")
    assert reg is not None
    # The attacker builds another image, gives it the module's tag, and swaps the container under the same name.
    dockerd.cli("tag", TEST_IMAGE, "edgeward-test/evil:1")
    dockerd.cli("rm", "-f", "payments")
    try:
        _run_by_hand(dockerd, "payments", {ENGINE_LABEL: "payments"}, rt.settings.workload_root / "payments",
                     {"IOTEDGE_MODULEID": "payments", "IOTEDGE_MODULEGENERATIONID": reg.generation_id},
                     [["POST", "workload", SIGN_PATH, SIGN]])
        (result,) = await container_results(dockerd, "payments")
        assert result["status"] == 403, result
        assert "registration_for" in result["body"]["message"] or "measure" in result["body"]["message"]
        kinds = {f.kind for f in await rt.parts.monitor.check()}
        assert kinds & {"engine_object_replaced", "unregistered"}
    finally:
        dockerd.cli("rm", "-f", "payments", check=False)
        dockerd.cli("rmi", "edgeward-test/evil:1", check=False)


async def test_management_api_refuses_a_module_that_is_not_the_agent(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    mounts = [{"Type": "bind", "Source": str(rt.settings.mgmt_dir), "Target": "/var/run/iotedge-mgmt"}]
    spec = container_spec("nosy", [["GET", "mgmt", "/modules?api-version=2022-08-03", None]], mounts,
                          {"IOTEDGE_MANAGEMENTURI": "unix:///var/run/iotedge-mgmt/mgmt.sock"})
    # By default a deployment cannot bind the management socket's directory at all (runtime/privileges.py); with
    # elevated permissions allowed, the attestation behind it must still refuse the module.
    with pytest.raises(HttpError) as refused:
        await mgmt.create_module(spec)
    assert refused.value.status == 422 and "allow_elevated_docker_permissions" in refused.value.message
    rt.parts.runtime.settings = replace(rt.settings, allow_elevated_docker_permissions=True)
    await mgmt.create_module(spec)
    await mgmt.action("nosy", "start")
    (listing,) = await module_results(rt.parts.engine, "nosy")
    message = listing["body"]["message"]
    assert listing["status"] == 403 and "registration_for" in message and "edge agent" in message, message


async def test_agent_watchdog_and_engine_restart(request: pytest.FixtureRequest, public_dir: Path,
                                                 dockerd: Dockerd) -> None:
    calls = [["GET", "mgmt", "/modules?api-version=2022-08-03", None]]
    agent = {"name": "edgeAgent", "type": "docker", "config": {"image": TEST_IMAGE, "createOptions": {
        "Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT], "HostConfig": {"Mounts": host_python_binds()}}},
        "env": {"EDGEWARD_TEST_CALLS": json.dumps(calls)}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), _doc(dockerd, agent)) as rt:
        engine = rt.parts.engine
        try:
            (listing,) = await module_results(engine, "edgeAgent")
            assert listing["status"] == 200 and listing["body"]["modules"][0]["name"] == "edgeAgent"
            first = await engine.inspect("edgeAgent")

            async def running_again(previous_id: str, previous_pid: int | None) -> None:
                restarts = rt.parts.runtime.agent_restarts
                while True:
                    try:
                        s = await engine.inspect("edgeAgent")
                        if (s.state == "running" and (s.engine_id != previous_id or s.pid != previous_pid)
                                and rt.parts.runtime.agent_restarts > restarts):
                            return
                    except Exception:
                        pass
                    await asyncio.sleep(0.1)

            dockerd.cli("kill", "edgeAgent")
            await asyncio.wait_for(running_again(first.engine_id, first.pid), 30)
            dockerd.cli("rm", "-f", "edgeAgent")
            await asyncio.wait_for(running_again(first.engine_id, None), 30)
            replaced = await engine.inspect("edgeAgent")
            assert replaced.engine_id != first.engine_id
            reg = rt.parts.registry.get("edgeAgent")
            assert reg is not None and reg.engine_id == replaced.engine_id and reg.system
            dockerd.restart()
            await asyncio.wait_for(running_again(replaced.engine_id, replaced.pid), 60)
            kinds = [r.kind for r in rt.parts.audit.records()]
            assert "watchdog.restarted" in kinds and "watchdog.recreated" in kinds
        finally:
            for m in await engine.list():
                await engine.remove(m.name)


async def test_podman_module_is_attested_too(request: pytest.FixtureRequest, public_dir: Path,
                                             podman_service: Podman) -> None:
    """The same runtime over podman's Docker-compatible service: its cgroup layout (libpod-<id>) names the caller."""
    doc = {"hostname": "edge-podman", "moby_runtime": {"uri": podman_service.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker"}}}
    async with serve_runtime(request, public_dir, DockerEngine(podman_service.uri), doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            calls = [["POST", "workload", SIGN_PATH, SIGN],
                     ["POST", "workload", "/modules/someone-else/genid/{genid}/sign?api-version=2019-01-30", SIGN]]
            await mgmt.create_module(container_spec("podmod", calls))
            await mgmt.action("podmod", "start")
            own, other = await module_results(rt.parts.engine, "podmod")
            assert own["status"] == 200, own
            assert other["status"] == 403
        finally:
            await mgmt.close()
            for m in await rt.parts.engine.list():
                await rt.parts.engine.remove(m.name)
