"""IoT Edge 1.5's ``auto_reprovisioning_mode`` and ``prefer_module_identity_cache`` against the real daemon
(``edgeward run``), provisioned by DPS (symmetric key) through the DPS and IoT Hub emulators over real TLS; module
identities are asked for over the identity socket, as aziot-edged and host agents ask. The DPS key is written
without its base64 padding, as aziot accepts it (a wrongly decoded key would fail every registration)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.peers import as_uid_async

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]

Q = "?api-version=2020-09-01"
REG = "reg-reprov"
DEVICE = "edge-reprov"


@asynccontextmanager
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator, bytes]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=1, retry_after=0)
    key = dps.add_individual_enrollment(REG, device_id=DEVICE)
    async with hub:
        yield hub, dps, key


def write_config(base: Path, dps: DpsEmulator, key: bytes, extra: str) -> Path:
    (base / "cloud-ca.pem").write_bytes(dps.hub.ca_pem)
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "{DEVICE}"
        {extra}

        [provisioning]
        source = "dps"
        global_endpoint = "{dps.endpoint}"
        id_scope = "{dps.scope_id}"

        [provisioning.attestation]
        method = "symmetric_key"
        registration_id = "{REG}"
        symmetric_key = {{ value = "{base64.b64encode(key).decode().rstrip('=')}" }}

        [edgeward.identity]
        cloud_trust_bundle = "file://{base / 'cloud-ca.pem'}"
    """))
    return config


@asynccontextmanager
async def daemon(base: Path, config: Path) -> AsyncIterator[Path]:
    """``edgeward run`` until the block ends (stopped by pid, also when the test fails); yields its identity
    socket."""
    loop = asyncio.get_running_loop()
    proc: subprocess.Popen[bytes] = await loop.run_in_executor(None, start_daemon, [
        "run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(base / "run")])
    try:
        yield base / "run" / "identityd.sock"
    finally:
        await loop.run_in_executor(None, stop_daemon, proc)


async def call(sock: Path, method: str, path: str, body: dict[str, object] | None = None,
               query: str = "") -> tuple[int, dict]:
    return await as_uid_async(0, sock, method, path + Q + query, body)


@pytest.mark.parametrize(("mode", "registrations"), [("AlwaysOnStartup", 2), ("OnErrorOnly", 1), ("Dynamic", 1)])
async def test_only_always_on_startup_registers_with_dps_again_at_a_restart(mode: str, registrations: int,
                                                                            public_dir: Path) -> None:
    async with cloud() as (hub, dps, key):
        config = write_config(public_dir, dps, key, f'auto_reprovisioning_mode = "{mode}"')
        async with daemon(public_dir, config) as sock:
            status, body = await call(sock, "GET", "/identities/identity")
            assert status == 200 and body["spec"]["deviceId"] == DEVICE, body
            assert dps.registrations == 1
        async with daemon(public_dir, config) as sock:
            status, body = await call(sock, "GET", "/identities/identity")
            assert status == 200 and body["spec"]["hubName"] == hub.hostname, body
            assert dps.registrations == registrations


@pytest.mark.parametrize("mode", ["Dynamic", "OnErrorOnly"])
async def test_dynamic_registers_again_when_the_hub_no_longer_knows_the_device(mode: str, public_dir: Path) -> None:
    async with cloud() as (hub, dps, key):
        config = write_config(public_dir, dps, key, f'auto_reprovisioning_mode = "{mode}"')
        async with daemon(public_dir, config) as sock:
            status, body = await call(sock, "POST", "/identities/modules", {"type": "aziot", "moduleId": "before"})
            assert status == 200, body
            # The device is moved away: this hub refuses its credentials from now on, until DPS assigns it again.
            del hub.devices[DEVICE]
            status, body = await call(sock, "POST", "/identities/modules", {"type": "aziot", "moduleId": "after"})
            if mode == "Dynamic":
                assert status == 200 and body["spec"]["moduleId"] == "after", body
                assert dps.registrations == 2
                assert "after" in hub.modules_of(DEVICE)
            else:
                assert status == 502 and "401" in body["message"], body
                assert dps.registrations == 1 and DEVICE not in hub.devices
                # a refusing hub never makes a Dynamic device hammer DPS either: see the policy's unit test


@pytest.mark.parametrize("prefer", [True, False])
async def test_prefer_module_identity_cache_answers_known_modules_without_asking_the_hub(prefer: bool,
                                                                                        public_dir: Path) -> None:
    async with cloud() as (hub, dps, key):
        config = write_config(public_dir, dps, key, f"prefer_module_identity_cache = {str(prefer).lower()}")
        async with daemon(public_dir, config) as sock:
            status, created = await call(sock, "POST", "/identities/modules", {"type": "aziot", "moduleId": "cached"})
            assert status == 200, created
            before = hub.requests
            status, got = await call(sock, "GET", "/identities/modules/cached", query="&type=aziot")
            assert status == 200 and got["spec"]["genId"] == created["spec"]["genId"], got
            status, listed = await call(sock, "GET", "/identities/modules", query="&type=aziot")
            assert status == 200 and "cached" in {i["spec"]["moduleId"] for i in listed["identities"]}, listed
            assert (hub.requests == before) is prefer  # the hub is asked only when the cache is not preferred
            # a module the cache does not hold is still asked of the hub
            status, body = await call(sock, "GET", "/identities/modules/never-made", query="&type=aziot")
            assert status == 404, body
            assert hub.requests > before
