"""IoT Edge 1.5's device identity certificate issued over EST, as an operator writes it in config.toml, taking effect
in the daemon (``edgeward run``) against the real EST server and the DPS / IoT Hub emulators' mutual TLS: manual
``[provisioning.authentication] identity_cert = { method = "est", ... }`` and DPS
``[provisioning.attestation.identity_cert] method = "est"``. The hub and DPS trust only certificates the EST
server's CA issued, so the device gets in only with the certificate EST issued to it."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.est_server import EstServer
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, logged, registered, until

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]


def est_settings(server: EstServer, base: Path, password_ok: bool) -> str:
    """The shared ``[cert_issuance.est]`` tables: the server's CA, its password (or a wrong one) and its URL."""
    ca = base / "est-ca.pem"
    ca.write_bytes(server.ca_pem)
    password = server.password if password_ok else "wrong-password"
    return textwrap.dedent(f"""
        [cert_issuance.est]
        trusted_certs = ["file://{ca}"]

        [cert_issuance.est.auth]
        username = "{server.username}"
        password = "{password}"

        [cert_issuance.est.urls]
        default = "{server.base_url}"

        [edgeward.identity]
        cloud_trust_bundle = "file://{base / 'cloud-ca.pem'}"

        [[principal]]
        uid = 3106
        name = "host-agent"
        idtype = ["module"]
    """)


@pytest.mark.parametrize("password_ok", [True, False], ids=["its-password", "wrong-password"])
async def test_manual_x509_identity_cert_issued_over_est_authenticates_the_device_to_the_hub(
        password_ok: bool, est_server: EstServer, tmp_path: Path) -> None:
    """The hub knows the device only by the EST CA (certificateAuthority with the device id as CN): the host
    principal's module is registered only over TLS with a certificate EST issued; with a wrong EST password nothing
    is issued and nothing gets in."""
    async with HubEmulator() as hub:
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        hub.add_x509_device("est-x509", ca=est_server.ca_cert)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "est-x509"

            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "est-x509"

            [provisioning.authentication]
            method = "x509"
            identity_cert = {{ method = "est", common_name = "est-x509" }}
        """) + est_settings(est_server, tmp_path, password_ok))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path):
            if password_ok:
                await until(registered(hub, "est-x509"), log)
            else:
                await until(logged(log, "provisioning failed"), log)
                assert "refused the configured credentials (401)" in log.read_text(), log.read_text()
                assert "host-agent" not in hub.modules_of("est-x509")
    assert est_server.enrollments == (1 if password_ok else 0), log.read_text()


@pytest.mark.parametrize("password_ok", [True, False], ids=["its-password", "wrong-password"])
async def test_dps_x509_identity_cert_issued_over_est_registers_the_device(
        password_ok: bool, est_server: EstServer, tmp_path: Path) -> None:
    """DPS has a group enrollment for the EST CA: the registration succeeds only with a certificate EST issued
    (CN = the registration id), and the hub then registers the host principal's module; with a wrong EST password
    nothing is issued and DPS sees no registration."""
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=1, retry_after=0)
    dps.add_x509_group_enrollment(est_server.ca_cert)
    async with hub:
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "dps-est"

            [provisioning]
            source = "dps"
            global_endpoint = "{dps.endpoint}"
            id_scope = "{dps.scope_id}"

            [provisioning.attestation]
            method = "x509"
            registration_id = "dps-est"

            [provisioning.attestation.identity_cert]
            method = "est"
            common_name = "dps-est"
        """) + est_settings(est_server, tmp_path, password_ok))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path):
            if password_ok:
                await until(registered(hub, "dps-est"), log)
                assert dps.registrations == 1
                assert len(dps.registered_certs) == 1
                dps.registered_certs[0].verify_directly_issued_by(est_server.ca_cert)
            else:
                await until(logged(log, "provisioning failed"), log)
                assert "refused the configured credentials (401)" in log.read_text(), log.read_text()
                assert dps.registrations == 0 and "dps-est" not in hub.devices
    assert est_server.enrollments == (1 if password_ok else 0), log.read_text()
