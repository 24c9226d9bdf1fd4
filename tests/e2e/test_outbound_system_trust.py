"""The daemon started as `python -m edgeward run` (aiohttp imported with empty default trust) must still reach EST, DPS
and IoT Hub when NO trust is configured, when the system store (here SSL_CERT_FILE) is what vouches for the servers;
and must refuse when the system store does not hold their CA (from a review of the lean-aiohttp entry)."""

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


def _env(bundle: Path) -> dict[str, str]:
    return {**os.environ, "SSL_CERT_FILE": str(bundle), "SSL_CERT_DIR": str(bundle.parent / "none")}


async def test_dps_and_hub_with_system_trust_only(tmp_path: Path) -> None:
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=1, retry_after=0)
    key = dps.add_individual_enrollment("reg-sys", key=os.urandom(32), device_id="dps-sys")
    async with hub:
        bundle = tmp_path / "system.pem"
        bundle.write_bytes(hub.ca_pem)
        key_file = tmp_path / "k.key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "dps-sys"
            [provisioning]
            source = "dps"
            global_endpoint = "{dps.endpoint}"
            id_scope = "{dps.scope_id}"
            [provisioning.attestation]
            method = "symmetric_key"
            registration_id = "reg-sys"
            symmetric_key = {{ uri = "file://{key_file}" }}
            [[principal]]
            uid = 3106
            name = "host-agent"
            idtype = ["module"]
        """))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path, _env(bundle)):
            await until(registered(hub, "dps-sys"), log)


@pytest.mark.parametrize("system_holds_est_ca", [True, False], ids=["est-ca-in-system", "est-ca-missing"])
async def test_est_without_trusted_certs_uses_the_system_store(system_holds_est_ca: bool, est_server: EstServer,
                                                                tmp_path: Path) -> None:
    async with HubEmulator() as hub:
        hub.add_x509_device("est-sys", ca=est_server.ca_cert)
        bundle = tmp_path / "system.pem"
        bundle.write_bytes(hub.ca_pem + (est_server.ca_pem if system_holds_est_ca else b""))
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "est-sys"
            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "est-sys"
            [provisioning.authentication]
            method = "x509"
            identity_cert = {{ method = "est", common_name = "est-sys" }}
            [cert_issuance.est.auth]
            username = "{est_server.username}"
            password = "{est_server.password}"
            [cert_issuance.est.urls]
            default = "{est_server.base_url}"
            [[principal]]
            uid = 3106
            name = "host-agent"
            idtype = ["module"]
        """))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path, _env(bundle)):
            if system_holds_est_ca:
                await until(registered(hub, "est-sys"), log)
            else:
                await until(logged(log, "provisioning failed"), log)
                assert "TLS verification of the EST server" in log.read_text(), log.read_text()
    assert est_server.enrollments == (1 if system_holds_est_ca else 0)
