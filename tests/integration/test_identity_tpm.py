"""DPS TPM attestation end to end on a real swtpm: the identity service sends the EK and SRK from the TPM service (over
its socket), the DPS emulator challenges with a key made by MakeCredential to that EK/SRK, the TPM activates and
imports it, signs the SAS token, and the device is assigned; its hub tokens are then signed in the TPM too."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

pytest.importorskip("tpm2_pytss")

from edgeward.http import Listener, start_server
from edgeward.identity.compose import dps_registrar_for, hub_factory_for
from edgeward.identity.settings import parse_identity_settings
from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from edgeward.tpm.client import TpmClient
from edgeward.tpm.routes import build_tpm_app
from edgeward.tpm.service import TpmService
from edgeward.tpm.settings import parse_tpmd_settings
from tests.fixtures.identity import serve_identity
from tests.fixtures.swtpm import Swtpm

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed"),
]


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=2)
    async with hub:
        yield hub, dps


@asynccontextmanager
async def tpmd(swtpm: Swtpm, base: Path) -> AsyncIterator[TpmClient]:
    """The TPM service on the swtpm, over its real socket, as identityd reaches it when split."""
    settings = parse_tpmd_settings({"tcti": swtpm.tcti}, base / "tpm-run")
    service = TpmService(settings)
    runner = await start_server(build_tpm_app(service), [Listener(settings.socket_path)])
    client = TpmClient(settings.socket_path)
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()
        service.close()


def config(dps: DpsEmulator, base: Path, registration_id: str) -> dict[str, Any]:
    (base / "cloud-ca.pem").write_bytes(dps.hub.ca_pem)
    return {"hostname": "edge-tpm",
            "provisioning": {"source": "dps", "global_endpoint": dps.endpoint, "id_scope": dps.scope_id,
                             "attestation": {"method": "tpm", "registration_id": registration_id}},
            "edgeward": {"identity": {"cloud_trust_bundle": f"file://{base / 'cloud-ca.pem'}"}}}


def serve(request: pytest.FixtureRequest, base: Path, doc: dict[str, Any], tpm: TpmClient) -> Any:
    settings = parse_identity_settings(doc, base / "state", base / "run")
    return serve_identity(request, base, doc, hub_factory_for(settings), dps_registrar_for(settings), tpm=tpm)


async def test_dps_tpm_attestation_end_to_end_on_swtpm(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_swtpm: Swtpm, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, dps = cloud
    async with tpmd(fresh_swtpm, tmp_path) as tpm:
        tpm_keys = await tpm.get_tpm_keys()
        dps.add_tpm_enrollment("tpm-reg-1", tpm_keys.endorsement_key, device_id="edge-tpm-1")
        dps.fail_next(1, 429, retry_after=1)  # the first attempt is throttled: retried after Retry-After
        async with serve(request, tmp_path, config(dps, tmp_path, "tpm-reg-1"), tpm) as env:
            assert env.service.next_attempt_in == 1
            retry = env.service._retry_task
            assert retry is not None
            await asyncio.wait_for(retry, 10)
            device = env.service.device
            assert (device.hub, device.device_id, device.auth, dps.registrations) == (hub.hostname, "edge-tpm-1",
                                                                                      "tpm", 1)
            # the TPM holds the key DPS chose: its HMAC is the one DPS (and the hub) check tokens with
            dps_key = dps.individual["tpm-reg-1"].key
            assert dps_key is not None and hub.devices["edge-tpm-1"].key == dps_key
            assert await tpm.sign_with_auth_key(b"probe") == hmac.new(dps_key, b"probe", hashlib.sha256).digest()
            # the identity API says "tpm" and hands out no key handle (as aziot-identityd)
            async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(env.socket))) as s,
                        s.get("http://identityd/identities/identity?api-version=2021-12-01") as r):
                assert r.status == 200
                spec = (await r.json())["spec"]
            assert (spec["deviceId"], spec["auth"]) == ("edge-tpm-1", {"type": "tpm"})
            # module identities: registry calls with SAS tokens signed in the TPM
            module = await env.service.create_module("tpm-module")
            assert module.gen_id == hub.modules_of("edge-tpm-1")["tpm-module"].generation_id


async def test_dps_refuses_a_tpm_that_is_not_the_enrolled_one(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_swtpm: Swtpm, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    _hub, dps = cloud
    async with tpmd(fresh_swtpm, tmp_path) as tpm:
        tpm_keys = await tpm.get_tpm_keys()
        # enrolled with another TPM's EK (here: a valid storage key that is not this TPM's EK)
        dps.add_tpm_enrollment("tpm-reg-2", tpm_keys.storage_root_key)
        async with serve(request, tmp_path, config(dps, tmp_path, "tpm-reg-2"), tpm) as env:
            with pytest.raises(Exception, match=r"DPS answered 401 .*endorsement key is not the enrolled one"):
                _ = env.service.device
            assert env.service._retry_task is None
        assert dps.registrations == 0
