"""What the real edge agent, edge hub and module SDKs do, replayed against a real daemon provisioned in the IoT Hub
emulator; each test is one place where Edgeward answered otherwise than aziot-edged.

The agent is the module the daemon starts from `[agent]`; a relay inside it forwards one private socket of the test to
its management socket and another to its workload socket, so every call is attested as the agent. Modules the agent
deploys run the same relay towards their own workload socket. Each relay also writes the environment its process was
given, which is what the real agent and hub read at start.

Sources (Azure/iotedge): aziot-edged's `watchdog.rs` (the agent's environment), `edgelet-http/src/auth.rs` (a
leading `$` of a module id is dropped before the caller is checked), `edgelet-http-workload/src/module/data/sign.rs`
(the key is the hub identity's), `support-bundle/src/runtime_util.rs` (edge_runtime_only keeps edgeAgent and
edgeHub), the agent's `ModuleIdentityLifecycleManager`/`ModuleIdentityHelper` (edgeHub's identity is `$edgeHub`) and
`CreateOrUpdateCommand` (the environment it gives edgeHub), edge-hub's `DependencyManager` (IOTEDGE_GATEWAYHOSTNAME
present means "I have a parent edge").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import sys
import textwrap
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.hub_emulator import HubEmulator
from tests.contract.relay import RELAY_SCRIPT, relay_agent_toml
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd

from .conftest import PROBLEM_SIGNS

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTNAME = "brk1-edge"
DEVICE = "brk1-edge"
MGMT = "api-version=2022-08-03"  # the agent's management client (IOTEDGE_APIVERSION)
WORKLOAD = "api-version=2020-07-07"  # edge-util's workload client: min(IOTEDGE_APIVERSION, its own 2020-07-07)



@dataclass
class Device:
    hub: HubEmulator
    base: Path
    log_path: Path

    @property
    def agent_mgmt(self) -> Path:
        return self.base / "relays" / "agent-mgmt.sock"

    @property
    def agent_workload(self) -> Path:
        return self.base / "relays" / "agent-workload.sock"

    def relay(self, module: str) -> Path:
        return self.base / "relays" / f"{module}.sock"

    def env_of(self, module: str) -> dict[str, str]:
        return dict(json.loads((self.base / "relays" / f"{module}.env.json").read_text()))


async def _wait_for(path: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not appear within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def call(sock: Path, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request over a Unix socket, with the JSON body and headers the C# generated clients send."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json; charset=utf-8"} if data is not None else {}
    sent |= headers or {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
            s.request(method, "http://localhost" + path, data=data, headers=sent,
                      timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.read()


def relay_module_spec(device: Device, name: str, env: dict[str, str], cmd: list[str] | None = None) -> dict[str, Any]:
    """A ModuleSpec as the agent's MapToModuleSpec builds it: type docker, the enum's "On-Create", env as key/value
    pairs (the agent's own variables first, then what the deployment set)."""
    relay_env = {"RELAY_1_AT": str(device.relay(name)), "RELAY_1_TO": "IOTEDGE_WORKLOADURI",
                 "RELAY_ENV_OUT": str(device.base / "relays" / f"{name}.env.json")}
    return {"name": name, "type": "docker", "imagePullPolicy": "On-Create",
            "config": {"settings": {"image": sys.executable,
                                    "createOptions": {"Cmd": cmd or ["-c", RELAY_SCRIPT]}},
                       "env": [{"key": k, "value": v} for k, v in (relay_env | env).items()]}}


@pytest.fixture(scope="module")
async def device(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Device]:
    base = tmp_path_factory.mktemp("brk1")
    os.chmod(base, 0o755)
    (base / "relays").mkdir(mode=0o700)
    async with HubEmulator() as hub:
        key = hub.add_device(DEVICE)
        (base / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = base / "config.toml"
        config.write_text(textwrap.dedent(f"""\
            hostname = "{HOSTNAME}"
            allow_elevated_docker_permissions = true  # the agent and the modules run as root

            [provisioning]
            source = "manual"
            connection_string = "HostName={hub.hostname};DeviceId={DEVICE};SharedAccessKey={base64.b64encode(key).decode()}"

            [edgeward.identity]
            cloud_trust_bundle = "file://{base / 'hub-ca.pem'}"
            """) + relay_agent_toml({
                "RELAY_1_AT": str(base / "relays" / "agent-mgmt.sock"), "RELAY_1_TO": "IOTEDGE_MANAGEMENTURI",
                "RELAY_2_AT": str(base / "relays" / "agent-workload.sock"), "RELAY_2_TO": "IOTEDGE_WORKLOADURI",
                "RELAY_ENV_OUT": str(base / "relays" / "edgeAgent.env.json")}))
        log_path = base / "daemon.log"
        loop = asyncio.get_running_loop()
        daemon = await loop.run_in_executor(None, lambda: start_daemon(
            ["-v", "run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(base / "run")],
            log_path=log_path))
        try:
            dev = Device(hub, base, log_path)
            await _wait_for(dev.agent_mgmt, "the edge agent's management relay")
            await _wait_for(dev.agent_workload, "the edge agent's workload relay")
            yield dev
        finally:
            await loop.run_in_executor(None, stop_daemon, daemon)
    problems = [line for line in log_path.read_text(errors="replace").splitlines()
                if any(sign in line for sign in PROBLEM_SIGNS)]
    assert not problems, problems


def _hmac(key: bytes, data: bytes) -> str:
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()


async def _sign(sock: Path, module_id: str, gen: str, data: bytes) -> tuple[int, bytes]:
    """The sign request of the SDKs (C# ModuleAuthenticationWithHsm via edge-util, Node's
    IotEdgeAuthenticationProvider, Python's IoTEdgeHsm): the module id from IOTEDGE_MODULEID, URL-encoded."""
    return await call(sock, "POST", f"/modules/{quote(module_id, safe='')}/genid/{quote(gen, safe='')}/sign?"
                      + WORKLOAD, {"keyId": "primary", "algo": "HMACSHA256",
                                   "data": base64.b64encode(data).decode()})


async def test_agent_signs_as_its_iotedge_moduleid_with_the_key_the_hub_holds_for_dollar_edgeagent(
        device: Device) -> None:
    """The agent's SDK signs with IOTEDGE_MODULEID ("$edgeAgent", which Edgeward itself gives it): aziot-edged
    drops the `$` to find the caller and signs with the key of the hub identity "$edgeAgent". Edgeward answered
    400 "invalid module name", and signed the un-prefixed form with a key derived for "edgeAgent", which the hub
    does not hold: the agent could never connect to IoT Hub."""
    env = device.env_of("edgeAgent")
    assert env["IOTEDGE_MODULEID"] == "$edgeAgent"
    gen = env["IOTEDGE_MODULEGENERATIONID"]
    data = b"brk1-edge.azure-devices.net/devices/brk1-edge/modules/$edgeAgent\n1900000000"
    status, body = await _sign(device.agent_workload, env["IOTEDGE_MODULEID"], gen, data)
    assert status == 200, body
    registered = device.hub.modules_of(DEVICE)["$edgeAgent"]
    assert registered.generation_id == gen
    assert json.loads(body)["digest"] == _hmac(registered.keys[0], data)


async def test_agent_environment_is_the_one_aziot_edged_gives_it(device: Device) -> None:
    """watchdog.rs: EdgeDeviceHostName (the agent writes it into edgeHub's environment and uses it as the gateway
    name of every other module; without it the agent's appsettings placeholder "<Edge device host name>" is used),
    Mode=iotedged, and IOTEDGE_GATEWAYHOSTNAME only for a device under a parent edge: the agent reads that variable
    as its parent's name, connects its own SDK client there and passes it to edgeHub as the upstream parent."""
    env = device.env_of("edgeAgent")
    assert env.get("EdgeDeviceHostName") == HOSTNAME
    assert env.get("Mode") == "iotedged"
    assert "IOTEDGE_GATEWAYHOSTNAME" not in env, env.get("IOTEDGE_GATEWAYHOSTNAME")
    assert env["IOTEDGE_APIVERSION"] == "2022-08-03"


async def test_edgehub_deployed_as_the_agent_deploys_it_runs_as_dollar_edgehub_without_a_parent(
        device: Device) -> None:
    """The agent names edgeHub's identity "$edgeHub" (ModuleIdentityHelper), creates it through POST /identities/
    when the list lacks it, then creates module "edgeHub" with IOTEDGE_MODULEID=$edgeHub and that identity's
    generation in its environment; edgeHub signs with "$edgeHub" and treats any IOTEDGE_GATEWAYHOSTNAME as its
    parent edge. Edgeward registered a second identity "edgeHub", overrode IOTEDGE_MODULEID and the generation
    with it, refused "$edgeHub" on the workload socket, and told edgeHub its parent is the device itself."""
    sock = device.agent_mgmt
    status, body = await call(sock, "GET", "/identities/?" + MGMT, headers={"Accept": "application/json"})
    assert status == 200, body
    if "$edgeHub" not in {i["moduleId"] for i in json.loads(body)["identities"]}:
        status, body = await call(sock, "POST", "/identities/?" + MGMT,
                                  {"moduleId": "$edgeHub", "managedBy": "IotEdge"})
        assert status == 200, body
    status, body = await call(sock, "GET", "/identities/?" + MGMT)
    (identity,) = [i for i in json.loads(body)["identities"] if i["moduleId"] == "$edgeHub"]
    gen = identity["generationId"]
    agent_env = device.env_of("edgeAgent")
    # CreateOrUpdateCommand's variables for edgeHub (no parent edge configured).
    hub_env = {"IOTEDGE_WORKLOADURI": agent_env["IOTEDGE_WORKLOADURI"], "IOTEDGE_AUTHSCHEME": "sasToken",
               "IOTEDGE_MODULEGENERATIONID": gen, "IOTEDGE_IOTHUBHOSTNAME": agent_env["IOTEDGE_IOTHUBHOSTNAME"],
               "EdgeDeviceHostName": HOSTNAME, "IOTEDGE_DEVICEID": DEVICE, "IOTEDGE_MODULEID": "$edgeHub",
               "RuntimeLogLevel": "Information", "IOTEDGE_APIVERSION": "2022-08-03"}
    status, body = await call(sock, "POST", "/modules?" + MGMT, relay_module_spec(device, "edgeHub", hub_env))
    assert status == 201, body
    status, body = await call(sock, "POST", "/modules/edgeHub/start?" + MGMT)
    assert status == 204, body
    await _wait_for(device.relay("edgeHub"), "edgeHub's relay")
    env = device.env_of("edgeHub")
    assert env["IOTEDGE_MODULEID"] == "$edgeHub"
    assert env["IOTEDGE_MODULEGENERATIONID"] == gen
    assert "IOTEDGE_GATEWAYHOSTNAME" not in env, env.get("IOTEDGE_GATEWAYHOSTNAME")
    status, body = await call(sock, "GET", "/identities/?" + MGMT)
    assert "edgeHub" not in {i["moduleId"] for i in json.loads(body)["identities"]}, body
    assert "edgeHub" not in device.hub.modules_of(DEVICE)
    data = b"brk1-edge/devices/brk1-edge/modules/$edgeHub\n1900000000"
    status, body = await _sign(device.relay("edgeHub"), "$edgeHub", gen, data)
    assert status == 200, body
    assert json.loads(body)["digest"] == _hmac(device.hub.modules_of(DEVICE)["$edgeHub"].keys[0], data)
    status, body = await call(device.relay("edgeHub"), "POST",
                              f"/modules/%24edgeHub/genid/{gen}/certificate/server?" + WORKLOAD,
                              {"commonName": HOSTNAME, "expiration": "2030-01-01T00:00:00Z"})
    assert status == 201, body


async def test_an_ordinary_module_keeps_its_name_as_identity_and_the_device_as_its_gateway(device: Device) -> None:
    """What the agent gives every other module stays: IOTEDGE_GATEWAYHOSTNAME is the edge device (edgeHub), the
    module id is the module's name."""
    sock = device.agent_mgmt
    status, body = await call(sock, "POST", "/identities/?" + MGMT, {"moduleId": "plainmod", "managedBy": "IotEdge"})
    assert status == 200, body
    spec = relay_module_spec(device, "plainmod", {"IOTEDGE_GATEWAYHOSTNAME": HOSTNAME, "IOTEDGE_MODULEID": "plainmod"})
    status, body = await call(sock, "POST", "/modules?" + MGMT, spec)
    assert status == 201, body
    status, body = await call(sock, "POST", "/modules/plainmod/start?" + MGMT)
    assert status == 204, body
    await _wait_for(device.relay("plainmod"), "plainmod's relay")
    env = device.env_of("plainmod")
    assert env["IOTEDGE_MODULEID"] == "plainmod" and env["IOTEDGE_GATEWAYHOSTNAME"] == HOSTNAME
    data = b"payload"
    status, body = await _sign(device.relay("plainmod"), "plainmod", env["IOTEDGE_MODULEGENERATIONID"], data)
    assert status == 200, body
    assert json.loads(body)["digest"] == _hmac(device.hub.modules_of(DEVICE)["plainmod"].keys[0], data)


async def test_support_bundle_edge_runtime_only_leaves_out_customer_module_logs(device: Device) -> None:
    """support-bundle's get_modules: edge_runtime_only=true keeps edgeAgent and edgeHub only (the agent's
    UploadSupportBundle direct method passes it through). Edgeward ignored it and put every module's logs in the
    bundle the agent uploads."""
    sock = device.agent_mgmt
    script = "import time\nprint('customer secret line', flush=True)\ntime.sleep(3600)"
    spec = relay_module_spec(device, "custmod", {}, cmd=["-c", script])
    status, body = await call(sock, "POST", "/modules?" + MGMT, spec)
    assert status == 201, body
    status, body = await call(sock, "POST", "/modules/custmod/start?" + MGMT)
    assert status == 204, body
    deadline = time.monotonic() + 20
    while True:
        status, body = await call(sock, "GET", "/modules/custmod/logs?" + MGMT + "&follow=false")
        if b"customer secret line" in body:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)

    async def bundle(edge_only: str) -> set[str]:
        # The generated client's query: since, until (it repeats since), edge_runtime_only lower-cased.
        status, body = await call(sock, "GET", f"/systeminfo/supportbundle?{MGMT}&since=1d&edge_runtime_only="
                                  + edge_only, headers={"Accept": "application/zip"})
        assert status == 200, body[:300]
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            return {n for n in z.namelist() if n.startswith("logs/")}

    assert "logs/custmod.log" in await bundle("false")
    only = await bundle("true")
    assert "logs/custmod.log" not in only and "logs/edgeAgent.log" in only, only


async def test_module_created_with_the_agents_workload_bind_starts_and_reaches_its_own_socket(
        dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The agent's CombinedEdgeletConfigProvider adds to every module's HostConfig.Binds
    "<IOTEDGE_WORKLOADLISTEN_MNTURI>/<module>.sock:<its own IOTEDGE_WORKLOADURI path>", or, when aziot-edged's
    watchdog gave it no IOTEDGE_WORKLOADLISTEN_MNTURI (Edgeward gives none), "<workload path>:<workload path>".
    The path inside containers is the runtime's; the module must still start, with its own workload socket there."""
    base = tmp_path_factory.mktemp("brk1-docker")
    os.chmod(base, 0o755)
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        hostname = "{HOSTNAME}"

        [moby_runtime]
        uri = "{dockerd.uri}"

        [agent]
        name = "edgeAgent"
        type = "docker"
        imagePullPolicy = "never"

        [agent.config]
        image = "{TEST_IMAGE}"
        createOptions = {{ Cmd = ["sleep", "3600"] }}
        """))
    loop = asyncio.get_running_loop()
    daemon = await loop.run_in_executor(None, lambda: start_daemon(
        ["run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(base / "run")],
        log_path=base / "daemon.log"))
    name = "bindmod"
    made: list[Path] = []  # what dockerd made on the host for a missing bind source, removed at the end
    try:
        inspect = json.loads(dockerd.cli("inspect", "edgeAgent").stdout)[0]
        agent_env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
        workload = agent_env["IOTEDGE_WORKLOADURI"].removeprefix("unix://")
        listen = agent_env.get("IOTEDGE_WORKLOADLISTEN_MNTURI")
        source = f"{listen.removeprefix('unix://')}/{name}.sock" if listen else workload
        spec = {"name": name, "type": "docker", "imagePullPolicy": "Never",
                "config": {"settings": {"image": TEST_IMAGE, "createOptions": {
                    "Cmd": ["sleep", "3600"], "HostConfig": {"Binds": [f"{source}:{workload}"]}}},
                    "env": [{"key": "IOTEDGE_WORKLOADURI", "value": agent_env["IOTEDGE_WORKLOADURI"]}]}}
        mgmt = base / "run" / "mgmt" / "mgmt.sock"
        status, body = await call(mgmt, "POST", "/modules?" + MGMT, spec)
        assert status == 201, body
        status, body = await call(mgmt, "POST", f"/modules/{name}/start?" + MGMT)
        assert status == 204, body
        got = dockerd.cli("exec", name, "sh", "-c", f"test -S {workload}", check=False)
        assert got.returncode == 0, (got.stdout, got.stderr)
        assert dockerd.cli("exec", name, "sh", "-c", "echo $IOTEDGE_WORKLOADURI").stdout.strip() == \
            agent_env["IOTEDGE_WORKLOADURI"]
        # The agent updating itself (UpdateAndStartModuleAsync): its config provider also binds its management
        # socket's path onto itself.
        management = agent_env["IOTEDGE_MANAGEMENTURI"].removeprefix("unix://")
        agent_spec = {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "Never",
                      "config": {"settings": {"image": TEST_IMAGE, "createOptions": {
                          "Cmd": ["sleep", "3601"],
                          "HostConfig": {"Binds": [f"{source}:{workload}", f"{management}:{management}"]}}},
                          "env": []}}
        status, body = await call(mgmt, "PUT", "/modules/edgeAgent?" + MGMT + "&start=true", agent_spec)
        # aziot-edged answers 201; the generated client expects 200 and ignores any other status below 400.
        assert status == 201, body
        got = dockerd.cli("exec", "edgeAgent", "sh", "-c", f"test -S {management} && test -S {workload}",
                          check=False)
        assert got.returncode == 0, (got.stdout, got.stderr)
        # Again and again: the watchdog, woken by each removal, must never slip its own agent in between.
        for n in range(5):
            agent_spec["config"]["settings"]["createOptions"]["Cmd"] = ["sleep", str(3700 + n)]
            status, body = await call(mgmt, "PUT", "/modules/edgeAgent?" + MGMT + "&start=true", agent_spec)
            assert status == 201, (n, body)
        cmd = json.loads(dockerd.cli("inspect", "edgeAgent").stdout)[0]["Config"]["Cmd"]
        assert cmd == ["sleep", "3704"], cmd
        # Nothing was bound from the host's path: dockerd makes a missing bind source as a directory.
        made = [Path(p) for p in (workload, management) if not listen and Path(p).is_dir()]
        assert not made, f"dockerd created {made} on the host"
    finally:
        await loop.run_in_executor(None, stop_daemon, daemon)
        for container in (name, "edgeAgent"):
            dockerd.cli("rm", "-f", container, check=False)
        for path in made or [Path(p) for p in ("/run/iotedge/workload.sock", "/run/iotedge-mgmt/mgmt.sock")
                             if Path(p).is_dir() and not any(Path(p).iterdir())]:
            with contextlib.suppress(OSError):
                path.rmdir()
                path.parent.rmdir()
