"""The real azure-iothub Registry (Node SDK, unmodified) against the IoT Hub emulator over TLS with a private CA:
device and module CRUD with ETags as a service application does it, with the connection strings of the hub's shared
access policies (iothubowner, registryReadWrite, registryRead) and refusals for wrong ones."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.cloud_sdk import run_node

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[HubEmulator]:
    async with HubEmulator() as emulator:
        yield emulator


def by_step(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in steps}


def failed_with(step: dict[str, Any], status: int, name: str) -> bool:
    return not step["ok"] and step["error"]["statusCode"] == status and step["error"]["name"] == name


def generated_key(auth: dict[str, Any], which: str) -> bytes:
    return base64.b64decode(auth["symmetricKey"][which], validate=True)


@pytest.mark.parametrize("policy", ["iothubowner", "registryReadWrite"])
async def test_node_registry_device_and_module_crud_with_etags(policy: str, hub: HubEmulator,
                                                               tmp_path: Path) -> None:
    steps = by_step(await run_node("registry.js", ["scenario", hub.connection_string(policy), "dev-1", "mod-1"],
                                   hub.ca_pem, tmp_path))
    assert all(s["ok"] or "error" in s for s in steps.values())

    created = steps["create device"]
    assert created["ok"], created
    device = created["result"]
    assert device["deviceId"] == "dev-1" and device["generationId"] and device["etag"]
    # the Registry sends empty keys: the hub generates them
    assert len(generated_key(device["authentication"], "primaryKey")) == 32
    assert len(generated_key(device["authentication"], "secondaryKey")) == 32
    assert failed_with(steps["create device again"], 409, "DeviceAlreadyExistsError")
    assert steps["get device"]["result"]["etag"] == device["etag"]
    assert [d["deviceId"] for d in steps["list devices"]["result"]] == ["dev-1"]
    updated_device = steps['update device (If-Match "*")']
    assert updated_device["ok"], updated_device
    assert updated_device["result"]["status"] == "disabled" and updated_device["result"]["etag"] != device["etag"]

    added = steps["add module"]
    assert added["ok"], added
    module = added["result"]
    assert module["moduleId"] == "mod-1" and module["deviceId"] == "dev-1" and module["generationId"]
    assert len(generated_key(module["authentication"], "primaryKey")) == 32
    assert failed_with(steps["add module again"], 409, "DeviceAlreadyExistsError")
    assert steps["add module again"]["error"]["code"] == "ModuleAlreadyExistsOnDevice"
    assert steps["get module"]["result"]["etag"] == module["etag"]
    assert [m["moduleId"] for m in steps["list modules"]["result"]] == ["mod-1"]

    # ETags: the SDK sends If-Match: "<etag>" (quoted) or "*"
    with_etag = steps["update module with its etag"]
    assert with_etag["ok"], with_etag
    assert with_etag["result"]["managedBy"] == "owner-1" and with_etag["result"]["etag"] != module["etag"]
    assert with_etag["result"]["generationId"] == module["generationId"]
    assert failed_with(steps["update module with a stale etag"], 412, "InvalidEtagError")
    forced = steps['update module forced (If-Match "*")']
    assert forced["ok"] and forced["result"]["managedBy"] == "owner-3", forced
    assert failed_with(steps["remove module with a stale etag"], 412, "InvalidEtagError")
    assert steps["remove module with its etag"]["ok"], steps["remove module with its etag"]
    assert not steps["get removed module"]["ok"]
    assert steps["get removed module"]["error"]["statusCode"] == 404
    assert steps["get removed module"]["error"]["code"] == "ModuleNotFound"

    assert steps["delete device"]["ok"], steps["delete device"]
    assert failed_with(steps["get deleted device"], 404, "DeviceNotFoundError")
    assert hub.devices == {}


async def test_node_registry_read_policy_reads_but_cannot_write(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_device("existing")
    read_only = hub.connection_string("registryRead")
    [listed] = await run_node("registry.js", ["call", read_only, "list"], hub.ca_pem, tmp_path)
    assert listed["ok"] and [d["deviceId"] for d in listed["result"]] == ["existing"]
    [create] = await run_node("registry.js", ["call", read_only, "create", '{"deviceId": "new"}'], hub.ca_pem,
                              tmp_path)
    assert failed_with(create, 401, "UnauthorizedError") and "RegistryWrite" in create["error"]["message"]
    assert "new" not in hub.devices


@pytest.mark.parametrize("connection_string", [
    pytest.param(lambda hub: hub.connection_string().replace(
        hub.connection_string().rsplit("SharedAccessKey=", 1)[1], base64.b64encode(b"k" * 32).decode()),
        id="wrong-key"),
    pytest.param(lambda hub: hub.connection_string().replace("SharedAccessKeyName=iothubowner",
                                                             "SharedAccessKeyName=nosuchpolicy"), id="unknown-policy"),
    pytest.param(lambda hub: hub.connection_string("service"), id="policy-without-registry-rights"),
])
async def test_node_registry_with_a_connection_string_the_hub_does_not_honour_gets_401(
    connection_string: Any, hub: HubEmulator, tmp_path: Path
) -> None:
    [step] = await run_node("registry.js", ["call", connection_string(hub), "list"], hub.ca_pem, tmp_path)
    assert failed_with(step, 401, "UnauthorizedError"), step
    assert step["error"]["code"] == "IotHubUnauthorizedAccess"
