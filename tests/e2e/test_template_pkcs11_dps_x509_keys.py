"""IoT Edge 1.5's DPS X.509 attestation with the identity key in a PKCS#11 token, as an operator writes it in
config.toml (``[provisioning.attestation] identity_pk = "pkcs11:..."``), taking effect in the daemon
(``edgeward run``) against the DPS and IoT Hub emulators' mutual TLS: the key file is imported into a SoftHSM2 token
and deleted, so the TLS client signature DPS and the hub check can only come from the token."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, host_agent, logged, pkcs11_keys, self_signed_client, until
from tests.fixtures.softhsm import make_token

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]


@pytest.mark.parametrize("key_ok", [True, False], ids=["its-key", "another-key"])
async def test_dps_x509_identity_key_in_a_pkcs11_token_registers_the_device(key_ok: bool, tmp_path: Path) -> None:
    """DPS registers the enrolled certificate only over a TLS connection whose client key is the certificate's, and
    the hub then registers the host principal's module; with another key in the token under that URI, nothing gets
    in (no registration, no module)."""
    hsm = make_token(tmp_path / "hsm", label="dps-keys")
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=1, retry_after=0)
    cert, cert_path, key_path = self_signed_client(tmp_path, "dps-hsm-x509", days=1)
    reg_id = dps.add_x509_enrollment(cert, device_id="dps-hsm-device")
    if not key_ok:
        (tmp_path / "other").mkdir()
        _, _, key_path = self_signed_client(tmp_path / "other", "dps-hsm-x509", days=1)
    uri = hsm.import_key(key_path, "dps-id-key", "0b03")
    async with hub:
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "dps-hsm-x509"\n\n{pkcs11_keys(hsm)}' + textwrap.dedent(f"""
            [provisioning]
            source = "dps"
            global_endpoint = "{dps.endpoint}"
            id_scope = "{dps.scope_id}"

            [provisioning.attestation]
            method = "x509"
            registration_id = "{reg_id}"
            identity_cert = "file://{cert_path}"
            identity_pk = "{uri}"
        """) + host_agent(tmp_path / "cloud-ca.pem", 3105))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path, env=hsm.env()):
            if key_ok:
                await until(lambda: "host-agent" in hub.modules_of("dps-hsm-device"), log)
                assert dps.registrations == 1 and dps.registered_certs == [cert]
            else:
                await until(logged(log, "provisioning failed"), log)
                assert "is not for the key" in log.read_text(), log.read_text()
                assert dps.registrations == 0 and "dps-hsm-device" not in hub.devices
    assert not key_path.exists()  # only the token held the key
