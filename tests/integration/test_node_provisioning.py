"""The real azure-iot-provisioning-device-http client (Node SDK, unmodified; symmetric-key attestation) against
the DPS emulator over TLS with a private CA: individual and group enrollments, the assigned hub holding the device
with the key the device holds, and a wrong key refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.cloud_sdk import run_node

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=2)
    async with hub:
        yield hub, dps


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def test_node_provisioning_individual_enrollment_assigns_the_device_to_a_hub_it_can_dial(
    cloud: tuple[HubEmulator, DpsEmulator], tmp_path: Path
) -> None:
    hub, dps = cloud
    key = dps.add_individual_enrollment("reg-node-1", device_id="node-device-1")
    out = await run_node("provision.js", [hub.hostname, dps.scope_id, "reg-node-1", "individual", b64(key),
                                          json.dumps({"site": "plant-4"})], hub.ca_pem, tmp_path)
    assert out["ok"], out
    state = out["result"]
    assert state["status"] == "assigned" and state["registrationId"] == "reg-node-1"
    assert state["deviceId"] == "node-device-1" and state["payload"] == {"site": "plant-4"}
    # a host name the SDKs can dial: no port (they dial 443), and the hub is really there
    assert state["assignedHub"] == hub.hostname and ":" not in state["assignedHub"]
    assert hub.devices["node-device-1"].key == key
    assert dps.registrations == 1


async def test_node_provisioning_group_enrollment_uses_the_derived_device_key(
    cloud: tuple[HubEmulator, DpsEmulator], tmp_path: Path
) -> None:
    hub, dps = cloud
    group_key = dps.add_group_enrollment()
    out = await run_node("provision.js", [hub.hostname, dps.scope_id, "reg-node-g", "group", b64(group_key)],
                         hub.ca_pem, tmp_path)
    assert out["ok"], out
    assert out["result"]["deviceId"] == "reg-node-g" and out["result"]["assignedHub"] == hub.hostname
    derived = hmac.new(group_key, b"reg-node-g", hashlib.sha256).digest()
    assert hub.devices["reg-node-g"].key == derived


@pytest.mark.parametrize("kind", ["individual", "group"])
async def test_node_provisioning_with_a_wrong_key_is_refused(kind: str, cloud: tuple[HubEmulator, DpsEmulator],
                                                             tmp_path: Path) -> None:
    hub, dps = cloud
    if kind == "individual":
        dps.add_individual_enrollment("reg-node-w")
    else:
        dps.add_group_enrollment()
    out = await run_node("provision.js", [hub.hostname, dps.scope_id, "reg-node-w", kind, b64(b"w" * 32)],
                         hub.ca_pem, tmp_path)
    assert not out["ok"] and out["error"]["statusCode"] == 401 and out["error"]["name"] == "UnauthorizedError"
    assert dps.registrations == 0 and "reg-node-w" not in hub.devices


async def test_node_provisioning_checks_the_servers_certificate(cloud: tuple[HubEmulator, DpsEmulator],
                                                                tmp_path: Path) -> None:
    """The SDK really verifies TLS: trusting another CA, it does not reach the emulator at all."""
    hub, dps = cloud
    key = dps.add_individual_enrollment("reg-node-tls")
    other_ca = HubEmulator().ca_pem
    out = await run_node("provision.js", [hub.hostname, dps.scope_id, "reg-node-tls", "individual", b64(key)],
                         other_ca, tmp_path)
    assert not out["ok"] and "certificate" in out["error"]["message"], out
    assert dps.registrations == 0
