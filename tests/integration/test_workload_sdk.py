"""The real Azure IoT Python SDK (azure-iot-device) as an edge module: create_from_edge_environment() reads the
environment the runtime gives the module, fetches the trust bundle and has its SAS token signed through the
workload API (no Content-Type header, URL-encoded module id) — unchanged."""

from __future__ import annotations

import sys
import textwrap
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
    import json, time
    from azure.iot.device import IoTHubModuleClient
    client = IoTHubModuleClient.create_from_edge_environment()
    token = client._mqtt_pipeline.pipeline_configuration.sastoken
    print("RESULT " + json.dumps({"status": 200, "body": str(token)}), flush=True)
    print("DONE", flush=True)
    time.sleep(3600)
""")


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0)
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
