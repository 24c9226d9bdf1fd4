"""IoT Edge 1.5's manual X.509 device identity with its key in a PKCS#11 token, as an operator writes it in
config.toml (``identity_pk = "pkcs11:..."``), taking effect in the daemon (``edgeward run``) against the hub
emulator's mutual TLS: the key file is imported into a SoftHSM2 token and deleted, so the TLS client signature the
hub checks can only come from the token."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, host_agent, logged, pkcs11_keys, self_signed_client, until
from tests.fixtures.softhsm import make_token

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]





@pytest.mark.parametrize("key_ok", [True, False], ids=["its-key", "another-key"])
async def test_manual_x509_identity_key_in_a_pkcs11_token_authenticates_the_device_to_the_hub(
        key_ok: bool, tmp_path: Path) -> None:
    """The hub emulator registers the host principal's module only over a TLS connection whose client key is the
    certificate's; with another key in the token under that URI, nothing gets in (the daemon refuses to pair the
    certificate with a key that is not its own)."""
    hsm = make_token(tmp_path / "hsm", label="identity-keys")
    async with HubEmulator() as hub:
        (tmp_path / "hub-ca.pem").write_bytes(hub.ca_pem)
        cert, cert_path, key_path = self_signed_client(tmp_path, "hsm-x509", days=1)
        hub.add_x509_device("hsm-x509", cert=cert)
        if not key_ok:
            (tmp_path / "other").mkdir()
            _, _, key_path = self_signed_client(tmp_path / "other", "hsm-x509", days=1)
        uri = hsm.import_key(key_path, "device-id-key", "0b01")
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "hsm-x509"\n\n{pkcs11_keys(hsm)}' + textwrap.dedent(f"""
            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "hsm-x509"

            [provisioning.authentication]
            method = "x509"
            identity_cert = "file://{cert_path}"
            identity_pk = "{uri}"
        """) + host_agent(tmp_path / "hub-ca.pem", 3104))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path, env=hsm.env()):
            if key_ok:
                await until(lambda: "host-agent" in hub.modules_of("hsm-x509"), log)
            else:
                # the daemon reads the token key's public half, finds it is not the certificate's and asks for a new
                # certificate, which nothing is configured to issue: the device fails closed before any hub call,
                # saying the cause (cert and key are not a pair), not only the re-issue's failure
                await until(logged(log, "provisioning failed"), log)
                assert "is not for the key" in log.read_text(), log.read_text()
                assert "host-agent" not in hub.modules_of("hsm-x509")
        assert not key_path.exists()  # only the token held the key
