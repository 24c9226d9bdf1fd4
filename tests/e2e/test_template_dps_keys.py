"""IoT Edge 1.5's DPS keys given as files, as an operator writes them in config.toml, taking effect in the daemon
(``edgeward run``) against the DPS and IoT Hub emulators over real TLS: ``symmetric_key = { uri = "file://..." }``
(the key file's bytes are the key, as aziot-keyd reads it) and ``payload = { uri = "file://...json" }`` (the JSON
document DPS receives with the registration)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, logged, until

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]

REG = "reg-files"


class RecordingDps(DpsEmulator):
    """The DPS emulator, keeping the payload of each registration it authenticated."""

    def __init__(self, hub: HubEmulator) -> None:
        super().__init__(hub, polls_before_assigned=1, retry_after=0)
        self.payloads: list[Any] = []

    async def _register(self, request: web.Request) -> web.Response:
        before = self.registrations
        response = await super()._register(request)
        if self.registrations > before:
            self.payloads.append((await request.json()).get("payload"))
        return response


@pytest.mark.parametrize("key_ok", [True, False], ids=["its-key", "another-key"])
async def test_dps_symmetric_key_file_and_payload_file_reach_dps(key_ok: bool, tmp_path: Path) -> None:
    hub = HubEmulator()
    dps = RecordingDps(hub)
    # a key file holds raw bytes, any of them: this key starts with one that reads as whitespace
    key = dps.add_individual_enrollment(REG, key=b" " + os.urandom(31), device_id="dps-files")
    async with hub:
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        key_file = tmp_path / "device-id.key"
        key_file.write_bytes(key if key_ok else os.urandom(32))
        key_file.chmod(0o600)
        payload = {"site": "plant-4", "line": 7}
        (tmp_path / "payload.json").write_text(json.dumps(payload))
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "dps-files"

            [provisioning]
            source = "dps"
            global_endpoint = "{dps.endpoint}"
            id_scope = "{dps.scope_id}"
            payload = {{ uri = "file://{tmp_path / 'payload.json'}" }}

            [provisioning.attestation]
            method = "symmetric_key"
            registration_id = "{REG}"
            symmetric_key = {{ uri = "file://{key_file}" }}

            [edgeward.identity]
            cloud_trust_bundle = "file://{tmp_path / 'cloud-ca.pem'}"
        """))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path):
            if key_ok:
                await until(lambda: bool(dps.payloads), log)
                assert dps.payloads == [payload]
            else:
                await until(logged(log, "DPS answered 401"), log)
                assert dps.registrations == 0 and dps.payloads == []
