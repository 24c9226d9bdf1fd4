"""The self-measurement (audit record, PCR 23) is taken once, as `run` starts, and code imported later runs unmeasured:
a file changed on disk after the start would take effect with the recorded digest still naming the pristine code. So
a device that uses EST and the hub loads their clients with the services, before the measurement, even on a restart
that finds its certificate and has nothing to enroll (found by a review of loading them lazily)."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.est_server import EstServer
from edgeward.testing.hub_emulator import HubEmulator
from tests.e2e.test_serve_imports import modules_when_ready

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]


async def test_est_client_is_part_of_what_the_start_measured(est_server: EstServer, tmp_path: Path) -> None:
    async with HubEmulator() as hub:
        hub.add_x509_device("est-m", ca=est_server.ca_cert)
        (tmp_path / "est-ca.pem").write_bytes(est_server.ca_pem)
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "est-m"
            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "est-m"
            [provisioning.authentication]
            method = "x509"
            identity_cert = {{ method = "est", common_name = "est-m" }}
            [cert_issuance.est]
            trusted_certs = ["file://{tmp_path / 'est-ca.pem'}"]
            [cert_issuance.est.auth]
            username = "{est_server.username}"
            password = "{est_server.password}"
            [cert_issuance.est.urls]
            default = "{est_server.base_url}"
            [edgeward.identity]
            cloud_trust_bundle = "file://{tmp_path / 'cloud-ca.pem'}"
        """))
        state = tmp_path / "state"
        args = ["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(state / "run")]
        loop = asyncio.get_running_loop()
        for start in ("first", "second"):
            (tmp_path / start).mkdir()
        log = tmp_path / "first" / "daemon.log"
        await loop.run_in_executor(None, modules_when_ready, args, tmp_path / "first", log)
        assert est_server.enrollments == 1, log.read_text()
        second = await loop.run_in_executor(None, modules_when_ready, args, tmp_path / "second")
    # the restart found its certificate: the EST client (which handles the EST password and the renewal's CSR) is
    # not loaded, so the renewal will run whatever client.py holds then, not what the measurement covered
    unmeasured = [m for m in ("edgeward.certs.est.client", "edgeward.certs.est.pkcs7", "edgeward.identity.cloud",
                              "edgeward.identity.hub", "edgeward.certs.est.keys_tls") if m not in second]
    assert unmeasured == []
    assert "edgeward.identity.dps" not in second  # provisioned manually: the DPS client is not this device's code
