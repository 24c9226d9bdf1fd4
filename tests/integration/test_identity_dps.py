"""DPS symmetric-key provisioning (individual and group enrollments) against the DPS and IoT Hub emulators over real
TLS: register + poll, the device key kept (or derived) in the keys service, custom payload, outages, reprovision."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from edgeward.identity.compose import dps_registrar_for, hub_factory_for
from edgeward.identity.settings import parse_identity_settings
from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.identity import serve_identity

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=2)
    async with hub:
        yield hub, dps


def config(dps: DpsEmulator, ca: Path, reg_id: str, key: bytes, group: bool = False) -> dict[str, Any]:
    ca.write_bytes(dps.hub.ca_pem)
    return {
        "hostname": "edge-dps",
        "provisioning": {
            "source": "dps", "global_endpoint": dps.endpoint, "id_scope": dps.scope_id,
            "payload": {"site": "plant-4"},
            "attestation": {"method": "symmetric_key", "registration_id": reg_id,
                            "symmetric_key": {"value": base64.b64encode(key).decode()}, "group_enrollment": group},
        },
        "edgeward": {"identity": {"cloud_trust_bundle": f"file://{ca}"}},
    }


def serve(request: pytest.FixtureRequest, tmp_path: Path, doc: dict[str, Any]) -> Any:
    settings = parse_identity_settings(doc, tmp_path / "state", tmp_path / "run")
    return serve_identity(request, tmp_path, doc, hub_factory_for(settings), dps_registrar_for(settings))


@pytest.mark.parametrize("group", [False, True], ids=["individual", "group"])
async def test_dps_symmetric_key_provisioning_then_module_identities(
    group: bool, request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, dps = cloud
    key = dps.add_group_enrollment() if group else dps.add_individual_enrollment("reg-42", device_id="device-42")
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-42", key, group)) as env:
        device = env.service.device
        assert device.hub == hub.hostname and device.source == "dps"
        assert device.device_id == ("reg-42" if group else "device-42")
        assert dps.registrations == 1
        info = await env.service.provisioning_info()
        assert (info.source, info.auth, info.scope_id, info.registration_id) == ("dps", "symmetric_key",
                                                                                  dps.scope_id, "reg-42")
        # the assigned hub accepts the device's credentials (derived from the group key for group enrollments)
        module = await env.service.create_module("after-dps")
        assert module.gen_id == hub.modules_of(device.device_id)["after-dps"].generation_id
    # a restart with the same configuration starts from the backup: no second registration
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-42", key, group)) as env:
        assert env.service.device.device_id == ("reg-42" if group else "device-42")
        assert dps.registrations == 1


async def test_wrong_key_and_outages_are_reported_then_reprovision_recovers(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    _hub, dps = cloud
    key = dps.add_individual_enrollment("reg-7")
    dps.fail_next(1, 500)
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-7", key)) as env:
        with pytest.raises(Exception, match="not provisioned yet: DPS answered 500") as e:
            _ = env.service.device
        assert getattr(e.value, "status", None) == 503
        await env.service.reprovision()
        assert env.service.device.device_id == "reg-7"
    async with serve(request, tmp_path / "wrong", config(dps, tmp_path / "ca.pem", "reg-7", b"x" * 32)) as env:
        with pytest.raises(Exception, match="DPS answered 401"):
            _ = env.service.device


async def test_a_changed_scope_invalidates_the_backup(request: pytest.FixtureRequest, tmp_path: Path,
                                                      cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    _hub, dps = cloud
    key = dps.add_individual_enrollment("reg-9")
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-9", key)) as env:
        assert env.service.device.device_id == "reg-9"
    changed = config(dps, tmp_path / "ca.pem", "reg-9", key)
    changed["provisioning"]["id_scope"] = "0ne99999999"
    async with serve(request, tmp_path, changed) as env:
        # the old backup names a device of another scope: it is not used, and the new scope is unknown to DPS
        with pytest.raises(Exception, match="DPS answered 404"):
            _ = env.service.device


async def test_transient_dps_failures_are_retried_with_backoff_until_provisioned(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    import asyncio

    _hub, dps = cloud
    key = dps.add_individual_enrollment("reg-retry")
    dps.fail_next(2, 503)  # the first attempt at start and the first retry fail; the second retry succeeds
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-retry", key)) as env:
        with pytest.raises(Exception, match="DPS answered 503"):
            _ = env.service.device
        assert env.service.next_attempt_in is not None
        for _ in range(100):  # backoff 1 s then 2 s
            if env.service._device is not None:
                break
            await asyncio.sleep(0.1)
        assert env.service.device.device_id == "reg-retry"
        assert env.service.next_attempt_in is None
        assert dps.registrations == 1


async def test_refused_credentials_are_not_retried(request: pytest.FixtureRequest, tmp_path: Path,
                                                   cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    _hub, dps = cloud
    dps.add_individual_enrollment("reg-no")
    async with serve(request, tmp_path, config(dps, tmp_path / "ca.pem", "reg-no", b"w" * 32)) as env:
        assert env.service._retry_task is None
        with pytest.raises(Exception, match="DPS answered 401"):
            _ = env.service.device
