"""The real Azure IoT Python SDK (azure-iot-device) as an edge module: create_from_edge_environment() reads the
environment the runtime gives the module, fetches the trust bundle and has its SAS token signed through the
workload API (no Content-Type header, URL-encoded module id) — unchanged. The same ground as the Node SDK's test
(test_node_module_client.py): the token's exact `sr`, its HMAC recomputed here, the trust bundle the daemon
serves, and no token for a process that is not the module."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import textwrap
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeward.identity.sas import parse_token, verify_token
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.identities import module_key_handle
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.modules import module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

pytest.importorskip("azure.iot.device", reason="the Azure IoT SDK is a dev dependency")

SDK_MODULE = textwrap.dedent("""
    import json, sys, time
    from azure.iot.device import IoTHubModuleClient
    try:
        client = IoTHubModuleClient.create_from_edge_environment()
    except Exception as e:
        print("RESULT " + json.dumps({"status": 0, "body": repr(e), "cause": repr(e.__cause__)}), flush=True)
        print("DONE", flush=True)
        sys.exit(1)
    config = client._mqtt_pipeline.pipeline_configuration
    print("RESULT " + json.dumps({"status": 200, "body": str(config.sastoken),
                                  "ca": config.server_verification_cert}), flush=True)
    print("DONE", flush=True)
    if len(sys.argv) < 2:
        time.sleep(3600)
""")


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, {"hostname": "edge-sdk"}) as env:
        yield env


async def test_sdk_module_client_gets_a_valid_sas_token(rt: RuntimeEnv) -> None:
    mgmt = ManagementClient(rt.mgmt_socket)
    try:
        await mgmt.create_module({"name": "sdkmodule", "imagePullPolicy": "never",
                                  "config": {"image": sys.executable, "createOptions": {"Cmd": ["-c", SDK_MODULE]}}})
        await mgmt.action("sdkmodule", "start")
        (result,) = await module_results(rt.parts.engine, "sdkmodule", timeout=60)
    finally:
        await mgmt.close()
    token = parse_token(result["body"])
    reg = rt.parts.registry.get("sdkmodule")
    assert reg is not None
    keys = rt.certs_env.keys
    key = await keys.export_derived_key(await module_key_handle(keys, "sdkmodule", reg.generation_id))
    # No cloud here: the device's "hub" is its hostname, as the runtime told the module.
    verify_token(token, "edge-sdk/devices/edge-sdk/modules/sdkmodule", key)
    assert urllib.parse.unquote(token.resource) == "edge-sdk/devices/edge-sdk/modules/sdkmodule"  # exactly
    expected = hmac.new(key, f"{token.resource}\n{token.expiry}".encode(), hashlib.sha256).digest()
    assert token.signature == expected and token.key_name is None
    assert result["ca"] == await rt.parts.edge_ca.trust_bundle()


async def test_sdk_run_by_a_process_that_is_not_the_module_gets_no_token(rt: RuntimeEnv) -> None:
    """The SDK with the module's environment and socket, in a plain host process: the sign is refused, the SDK
    raises instead of making a token."""
    mgmt = ManagementClient(rt.mgmt_socket)
    try:
        await mgmt.create_module({"name": "sdkvictim", "imagePullPolicy": "never",
                                  "config": {"image": sys.executable, "createOptions": {"Cmd": ["-c", SDK_MODULE]}}})
        await mgmt.action("sdkvictim", "start")
        (own,) = await module_results(rt.parts.engine, "sdkvictim", timeout=60)
    finally:
        await mgmt.close()
    assert own["status"] == 200
    status = await rt.parts.engine.inspect("sdkvictim")
    assert status.pid is not None
    environ = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert env["IOTEDGE_MODULEID"] == "sdkvictim" and Path(env["IOTEDGE_WORKLOADURI"][len("unix://"):]).exists()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SDK_MODULE, "once", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    line = next(x for x in out.decode().splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert proc.returncode == 1 and result["status"] == 0, (out, err)
    assert "Could not create a SasToken" in result["body"], result
    assert "SharedAccessSignature" not in out.decode()
