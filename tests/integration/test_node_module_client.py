"""The real Azure IoT Node SDK (azure-iot-device 1.18, -mqtt, -http) as an Edgeward module, unchanged: deployed
through the management API as a host process and as a container on the real dockerd, it runs
`ModuleClient.fromEnvironment(Transport)`; the SDK fetches the trust bundle and has its SAS token signed through
the workload API (api-version 2018-06-28, `Content-Type: application/json`, URL-encoded module id and generation
id). The tests recompute the signature from the module's key (Edgeward's, or the one the hub emulator's registry
holds), send telemetry over HTTP that the hub emulator checks, and show that a process or container that is not the
module gets no token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeward.http import Listener, start_server
from edgeward.identity.compose import hub_factory_for
from edgeward.identity.settings import parse_identity_settings
from edgeward.runtime.edge_ca import TRUST_BUNDLE_ID
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.identities import module_key_handle
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.hub_telemetry import DialableHub
from tests.fixtures.modules import module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "module_client.js"
NODE = shutil.which("node") or "/usr/bin/node"
# Inside a container: the script and the SDKs, bound read-only; node resolves the SDKs from the parent directory.
CONTAINER_APP = "/opt/edgeward-node"
HOSTNAME = "edge-node"


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, {"hostname": HOSTNAME}) as env:
        yield env


@pytest.fixture
async def hub() -> AsyncIterator[DialableHub]:
    async with DialableHub() as emulator:
        yield emulator


@pytest.fixture
async def hub_rt(request: pytest.FixtureRequest, public_dir: Path, hub: DialableHub) -> AsyncIterator[RuntimeEnv]:
    """A device provisioned (manual, SAS) in the hub emulator, whose trust bundle carries the hub's CA (the
    operator's `trust_bundle_cert`): modules are registered in the hub with their keys, and trust it."""
    ca = public_dir / "hub-ca.pem"
    ca.write_bytes(hub.ca_pem)
    key = hub.add_device("edge-1")
    cs = f"HostName={hub.hostname};DeviceId=edge-1;SharedAccessKey={base64.b64encode(key).decode()}"
    doc = {"hostname": HOSTNAME, "provisioning": {"source": "manual", "connection_string": cs},
           "edgeward": {"identity": {"cloud_trust_bundle": f"file://{ca}"}},
           "preloaded_certs": {TRUST_BUNDLE_ID: f"file://{ca}"}}
    hub_factory = hub_factory_for(parse_identity_settings(doc, public_dir / "state", public_dir / "run"))
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, doc, hub=hub_factory) as env:
        yield env


def node_module(name: str, *args: str) -> dict[str, Any]:
    """A management API ModuleSpec: the host's node running the SDK script as a host-process module."""
    return {"name": name, "type": "docker", "imagePullPolicy": "never",
            "config": {"settings": {"image": NODE,
                                    "createOptions": {"Cmd": [str(SCRIPT), *args, "--stay"]}}}}


async def run_node_module(rt: RuntimeEnv, mgmt: ManagementClient, name: str, *args: str) -> dict[str, Any]:
    await mgmt.create_module(node_module(name, *args))
    await mgmt.action(name, "start")
    (result,) = await module_results(rt.parts.engine, name, timeout=60)
    return result


def token_fields(token: str) -> dict[str, str]:
    scheme, _, fields = token.partition(" ")
    assert scheme == "SharedAccessSignature", token
    pairs = [field.split("=", 1) for field in fields.split("&")]
    assert [k for k, _ in pairs] == ["sr", "sig", "se"], token  # no skn: a module token
    return {k: v for k, v in pairs}


async def module_key(rt: RuntimeEnv, name: str) -> bytes:
    reg = rt.parts.registry.get(name)
    assert reg is not None
    keys = rt.certs_env.keys
    return await keys.export_derived_key(await module_key_handle(keys, name, reg.generation_id))


def assert_signed_by(token: str, key: bytes, resource: str) -> None:
    """IoT Hub's check, done here from the token's own fields: sig = HMAC-SHA256(key, "<sr>\\n<se>") with sr as
    the token carries it (URL-encoded), and sr names exactly the module."""
    fields = token_fields(token)
    assert urllib.parse.unquote(fields["sr"]) == resource
    assert fields["sr"] == urllib.parse.quote(resource, safe="")
    expected = hmac.new(key, f"{fields['sr']}\n{fields['se']}".encode(), hashlib.sha256).digest()
    assert base64.b64decode(urllib.parse.unquote(fields["sig"])) == expected


async def test_node_sdk_module_client_gets_trust_bundle_and_a_sas_token_signed_with_its_module_key(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    result = await run_node_module(rt, mgmt, "nodemqtt", "mqtt")
    assert result.get("error") is None and result["stage"] == "done", result
    assert result["credentials"] == {"host": HOSTNAME, "deviceId": HOSTNAME, "moduleId": "nodemqtt",
                                     "gatewayHostName": HOSTNAME}
    assert_signed_by(result["sasToken"], await module_key(rt, "nodemqtt"),
                     f"{HOSTNAME}/devices/{HOSTNAME}/modules/nodemqtt")
    assert result["trustBundle"] == await rt.parts.edge_ca.trust_bundle()


async def test_node_sdk_run_by_a_process_that_is_not_the_module_gets_no_token(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """The same script, with the module's very environment and its workload socket, started by a plain host
    process (root, outside the module's process tree): the sign call is refused and the SDK reports the error.
    The trust bundle is public CA certificates (served to any caller, as aziot-edged does): it is no secret."""
    module = await run_node_module(rt, mgmt, "nodevictim", "mqtt")
    status = await rt.parts.engine.inspect("nodevictim")
    assert status.pid is not None
    environ = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert env["IOTEDGE_MODULEID"] == "nodevictim"
    proc = await asyncio.create_subprocess_exec(NODE, str(SCRIPT), "mqtt", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    line = next(x for x in out.decode().splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert proc.returncode == 1, (out, err)
    assert result["stage"] == "getDeviceCredentials" and "sasToken" not in result, result
    assert result["error"]["statusCode"] == 403 and "refused" in result["error"]["message"], result
    assert result["trustBundle"] == module["trustBundle"]


async def test_node_sdk_module_client_sends_telemetry_over_http_that_the_hub_accepts(
        hub_rt: RuntimeEnv, hub: DialableHub) -> None:
    """The SDK's whole path: fromEnvironment, open, sendEvent over HTTPS to the hub the runtime named (trusting the
    workload trust bundle only); the hub checks the module's token with the key its registry holds."""
    mgmt = ManagementClient(hub_rt.mgmt_socket)
    try:
        result = await run_node_module(hub_rt, mgmt, "nodehttp", "http", "--send")
    finally:
        await mgmt.close()
    assert result.get("error") is None and result["stage"] == "done", result
    assert result["send"] == {"ok": True, "result": "MessageEnqueued"}
    (event,) = hub.telemetry
    assert (event.device_id, event.module_id) == ("edge-1", "nodehttp")
    assert event.path == "/devices/edge-1/messages/events"  # the SDK's HTTP transport has no module route
    assert event.headers["Authorization"] == result["sasToken"]
    assert event.headers["IoTHub-MessageId"] == "edgeward-node-module-client"
    assert json.loads(event.body) == {"temperature": 21.5}
    registered = hub.modules_of("edge-1")["nodehttp"].authentication
    assert registered is not None
    assert_signed_by(result["sasToken"], base64.b64decode(registered["symmetricKey"]["primaryKey"]),
                     f"{hub.hostname}/devices/edge-1/modules/nodehttp")
    bundle = await hub_rt.parts.edge_ca.trust_bundle()
    assert result["trustBundle"] == bundle and hub.ca_pem.decode() in bundle


@pytest.fixture
async def docker_rt(request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> AsyncIterator[RuntimeEnv]:
    doc = {"hostname": HOSTNAME, "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker"}}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as env:
        try:
            yield env
        finally:
            for m in await env.parts.engine.list():
                await env.parts.engine.remove(m.name)


def node_binds() -> list[dict[str, object]]:
    """The host's node (under /usr, with the libraries it links) and the SDKs, read-only, in the busybox image."""
    return [*host_python_binds(),
            {"Type": "bind", "Source": str(SCRIPT), "Target": f"{CONTAINER_APP}/app/module_client.js",
             "ReadOnly": True},
            {"Type": "bind", "Source": str((NODE_DIR / "node_modules").resolve()),
             "Target": f"{CONTAINER_APP}/node_modules", "ReadOnly": True}]


async def run_node_container_module(rt: RuntimeEnv, name: str) -> dict[str, Any]:
    assert NODE.startswith("/usr/"), "the container sees the host's /usr only"
    spec = {"name": name, "type": "docker", "imagePullPolicy": "never", "config": {"settings": {
        "image": TEST_IMAGE, "createOptions": {
            "Cmd": [NODE, f"{CONTAINER_APP}/app/module_client.js", "mqtt", "--stay"],
            "HostConfig": {"Mounts": node_binds()}}}}}
    mgmt = ManagementClient(rt.mgmt_socket)
    try:
        await mgmt.create_module(spec)
        await mgmt.action(name, "start")
        (result,) = await module_results(rt.parts.engine, name, timeout=60)
    finally:
        await mgmt.close()
    return result


async def test_node_sdk_in_a_container_module_gets_a_sas_token_signed_with_its_module_key(
        docker_rt: RuntimeEnv) -> None:
    result = await run_node_container_module(docker_rt, "nodebox")
    assert result.get("error") is None and result["stage"] == "done", result
    assert result["credentials"]["moduleId"] == "nodebox"
    assert_signed_by(result["sasToken"], await module_key(docker_rt, "nodebox"),
                     f"{HOSTNAME}/devices/{HOSTNAME}/modules/nodebox")
    assert result["trustBundle"] == await docker_rt.parts.edge_ca.trust_bundle()


async def test_node_sdk_in_a_look_alike_container_with_the_module_socket_gets_no_token(
        docker_rt: RuntimeEnv, dockerd: Dockerd) -> None:
    """A container started beside Edgeward (by someone with access to the engine) with the module's environment,
    labels and workload socket, running the same SDK script: the sign is refused, the SDK reports it."""
    await run_node_container_module(docker_rt, "nodeboxed")
    status = await docker_rt.parts.engine.inspect("nodeboxed")
    config = json.loads(dockerd.cli("inspect", status.engine_id).stdout)[0]["Config"]
    args = ["run", "-d", "--network", "none"]
    for k, v in config["Labels"].items():
        args += ["--label", f"{k}={v}"]
    for e in config["Env"]:
        args += ["-e", e]
    for m in node_binds():
        args += ["--mount", f"type=bind,src={m['Source']},dst={m['Target']},readonly"]
    workload_dir = docker_rt.settings.workload_root / "nodeboxed"
    args += ["--mount", f"type=bind,src={workload_dir},dst={config_workload_dir(config['Env'])}"]
    container = dockerd.cli(*args, TEST_IMAGE, NODE, f"{CONTAINER_APP}/app/module_client.js", "mqtt").stdout.strip()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while "DONE" not in (out := dockerd.cli("logs", container, check=False).stdout):
            assert loop.time() < deadline, out
            await asyncio.sleep(0.1)
    finally:
        dockerd.cli("rm", "-f", container, check=False)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    # Not attributable to any module, it gets not even the public trust bundle; and the sign, tried on its own
    # with the SDK's edge authentication provider, is refused too.
    assert result["stage"] == "fromEnvironment" and "sasToken" not in result, result
    for error in (result["error"], result["signError"]):
        assert error["statusCode"] == 403 and "registration_for" in error["message"], result


def config_workload_dir(env: list[str]) -> str:
    uri = next(e.split("=", 1)[1] for e in env if e.startswith("IOTEDGE_WORKLOADURI="))
    return str(Path(urllib.parse.urlparse(uri).path).parent)


async def test_node_sdk_workload_requests_are_what_the_routes_expect(public_dir: Path) -> None:
    """The golden requests: what azure-iot-device 1.18 sends to the workload socket, recorded by a bare server
    (api-version 2018-06-28 whatever IOTEDGE_APIVERSION says; module id and generation id URL-encoded; the sign body
    as JSON with a Content-Type; `data` the base64 of "<URL-encoded sr>\\n<se>"), and what it makes of the answers."""
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    key = b"k" * 32

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path_qs, dict(request.headers), body))
        if request.path == "/trust-bundle":
            return web.json_response({"certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"})
        data = base64.b64decode(json.loads(body)["data"])
        return web.json_response({"digest": base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    sock = public_dir / "recorder.sock"
    runner = await start_server(app, [Listener(sock, mode=0o600)])
    env = {"PATH": "/usr/bin:/bin", "IOTEDGE_WORKLOADURI": f"unix://{sock}", "IOTEDGE_DEVICEID": "dev-1",
           "IOTEDGE_MODULEID": "mod-1", "IOTEDGE_MODULEGENERATIONID": "gen/1", "IOTEDGE_IOTHUBHOSTNAME": "hub.example",
           "IOTEDGE_GATEWAYHOSTNAME": "gw", "IOTEDGE_AUTHSCHEME": "sasToken", "IOTEDGE_APIVERSION": "2022-08-03"}
    try:
        proc = await asyncio.create_subprocess_exec(NODE, str(SCRIPT), "mqtt", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, (out, err)
    (bundle_method, bundle_path, bundle_headers, bundle_body), (method, path, headers, body) = seen
    assert (bundle_method, bundle_path, bundle_body) == ("GET", "/trust-bundle?api-version=2018-06-28", b"")
    assert "Content-Type" not in bundle_headers
    assert (method, path) == ("POST", "/modules/mod-1/genid/gen%2F1/sign?api-version=2018-06-28")
    assert headers["Content-Type"] == "application/json" and headers["Host"] == "localhost"
    assert headers["User-Agent"].startswith("azure-iot-device/1.18.")
    sign = json.loads(body)
    assert set(sign) == {"keyId", "algo", "data"} and (sign["keyId"], sign["algo"]) == ("primary", "HMACSHA256")
    sr, _, se = base64.b64decode(sign["data"]).decode().partition("\n")
    assert sr == "hub.example%2Fdevices%2Fdev-1%2Fmodules%2Fmod-1" and se.isdigit()
    result = json.loads(out.decode().splitlines()[0][len("RESULT "):])
    assert_signed_by(result["sasToken"], key, "hub.example/devices/dev-1/modules/mod-1")
