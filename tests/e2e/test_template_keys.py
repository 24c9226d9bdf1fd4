"""IoT Edge 1.5 template keys that only the golden config files covered, shown taking effect in the daemon
(``edgeward run -c config.toml``) as an operator writes them: a manually provisioned SAS device whose key is given
by ``device_id_pk`` (inline or as a file), and the edge CA from files, from the local CA, or quickstart with its
lifetime. Each result is read back over the real sockets, or from the IoT Hub emulator the device talked to."""

from __future__ import annotations

import base64
import datetime as dt
import os
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeward.certs.client import CertsClient
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, edge_ca_of, host_agent, logged, make_ca, self_signed_client, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

def lifetime(cert: x509.Certificate) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


@pytest.mark.parametrize("given", ["value", "file"])
async def test_manual_sas_device_id_pk_signs_the_devices_hub_requests(given: str, tmp_path: Path) -> None:
    """[provisioning] iothub_hostname, device_id, [provisioning.authentication] method = "sas" and device_id_pk
    ({ value } or { uri = file }): the module a host principal stands for is registered in the hub at start, which
    the hub emulator only allows with a SAS token signed by that device key."""
    async with HubEmulator() as hub:
        # a key file holds raw bytes, any of them: this key ends with one that reads as whitespace
        key = hub.add_device("sas-dev", key=os.urandom(31) + b"\n")
        (tmp_path / "hub-ca.pem").write_bytes(hub.ca_pem)
        if given == "value":
            pk = f'{{ value = "{base64.b64encode(key).decode()}" }}'
        else:
            key_file = tmp_path / "device-id.key"
            key_file.write_bytes(key)  # aziot-keyd reads a key file's bytes as the key itself
            key_file.chmod(0o600)
            pk = f'{{ uri = "file://{key_file}" }}'
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "sas-dev"

            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "sas-dev"

            [provisioning.authentication]
            method = "sas"
            device_id_pk = {pk}
        """) + host_agent(tmp_path / "hub-ca.pem", 3101))
        async with daemon(config, tmp_path):
            await until(lambda: "host-agent" in hub.modules_of("sas-dev"), tmp_path / "daemon.log")


async def test_a_wrong_device_id_pk_is_refused_by_the_hub_and_registers_nothing(tmp_path: Path) -> None:
    """The contrast that makes the test above mean something: another key for the same device gets nothing in."""
    async with HubEmulator() as hub:
        hub.add_device("sas-dev")
        (tmp_path / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "sas-dev"

            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "sas-dev"

            [provisioning.authentication]
            method = "sas"
            device_id_pk = {{ value = "{base64.b64encode(b"not-the-device-key-0123456789abc").decode()}" }}
        """) + host_agent(tmp_path / "hub-ca.pem", 3101))
        async with daemon(config, tmp_path):
            log = tmp_path / "daemon.log"
            await until(logged(log, "could not register the identity of host principal 'host-agent'"), log)
            assert "host-agent" not in hub.modules_of("sas-dev")


async def test_edge_ca_from_files_is_the_edge_ca_served(tmp_path: Path) -> None:
    """[edge_ca] cert and pk as file URIs: the edge CA the certs service serves is that certificate."""
    cert, _, cert_path, key_path = make_ca(tmp_path, "edge-ca", "Operator edge CA")
    config = tmp_path / "config.toml"
    config.write_text(f'hostname = "ca-files"\n\n[edge_ca]\ncert = "file://{cert_path}"\npk = "file://{key_path}"\n')
    async with daemon(config, tmp_path) as run:
        assert await edge_ca_of(run) == cert


async def test_edge_ca_issued_by_the_local_ca_has_the_configured_name_and_lifetime(tmp_path: Path) -> None:
    """[cert_issuance.local_ca] cert and pk as files, [edge_ca] method = "local_ca" with common_name and
    expiry_days: the edge CA is signed by that local CA and carries that name and lifetime."""
    local, _, cert_path, key_path = make_ca(tmp_path, "local-ca", "Operator local CA")
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "ca-local"

        [cert_issuance.local_ca]
        cert = "file://{cert_path}"
        pk = "file://{key_path}"

        [edge_ca]
        method = "local_ca"
        common_name = "Plant 9 edge CA"
        expiry_days = 12
    """))
    async with daemon(config, tmp_path) as run:
        ca = await edge_ca_of(run)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Plant 9 edge CA"
    assert ca.issuer == local.subject
    ca.verify_directly_issued_by(local)
    assert abs(lifetime(ca) - dt.timedelta(days=12)) < dt.timedelta(hours=1)


async def test_quickstart_edge_ca_lives_auto_generated_edge_ca_expiry_days(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('hostname = "ca-quick"\n\n[edge_ca]\nauto_generated_edge_ca_expiry_days = 9\n')
    async with daemon(config, tmp_path) as run:
        ca = await edge_ca_of(run)
    assert ca.issuer == ca.subject
    assert abs(lifetime(ca) - dt.timedelta(days=9)) < dt.timedelta(hours=1)


@pytest.mark.parametrize("retries", [0, 2])
async def test_watchdog_gives_up_on_the_agent_after_max_retries(retries: int, tmp_path: Path) -> None:
    """[watchdog] max_retries: an agent that cannot be created (its executable is missing) is tried once plus
    max_retries times, then the watchdog stops trying and says so."""
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "wd"

        [agent]
        name = "edgeAgent"
        type = "docker"

        [agent.config]
        image = "{tmp_path / 'missing-edge-agent'}"

        [watchdog]
        max_retries = {retries}

        [edgeward.runtime]
        watchdog_seconds = 1
    """))
    log = tmp_path / "daemon.log"
    async with daemon(config, tmp_path):
        await until(logged(log, f"watchdog: giving up after {retries} attempts"), log)
        assert log.read_text().count("watchdog: could not keep the edge agent running") == retries + 1




@pytest.mark.parametrize("given", ["files", "local_ca"])
async def test_manual_x509_identity_authenticates_the_device_to_the_hub(given: str, tmp_path: Path) -> None:
    """[provisioning.authentication] method = "x509" with identity_cert/identity_pk files, or identity_cert issued
    by the local CA with a full subject: the hub emulator (mutual TLS) registers the host principal's module only
    for that certificate, and the issued one carries the configured DN."""
    async with HubEmulator() as hub:
        (tmp_path / "hub-ca.pem").write_bytes(hub.ca_pem)
        if given == "files":
            cert, cert_path, key_path = self_signed_client(tmp_path, "x509-dev")
            hub.add_x509_device("x509-dev", cert=cert)
            identity = f'identity_cert = "file://{cert_path}"\nidentity_pk = "file://{key_path}"\n'
            local_ca = ""
        else:
            ca, _, ca_path, ca_key_path = make_ca(tmp_path, "local-ca", "Operator local CA")
            hub.add_x509_device("x509-dev", ca=ca)
            identity = ('identity_cert = { method = "local_ca", subject = { L = "McMurdo", ST = "Antarctica", '
                        'CN = "x509-dev" } }\n')
            local_ca = f'\n[cert_issuance.local_ca]\ncert = "file://{ca_path}"\npk = "file://{ca_key_path}"\n'
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "x509-dev"

            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "x509-dev"

            [provisioning.authentication]
            method = "x509"
        """) + identity + local_ca + host_agent(tmp_path / "hub-ca.pem", 3102))
        async with daemon(config, tmp_path) as run:
            await until(lambda: "host-agent" in hub.modules_of("x509-dev"), tmp_path / "daemon.log")
            if given == "local_ca":
                certs = CertsClient(run / "certd.sock")
                try:
                    issued = x509.load_pem_x509_certificates((await certs.get_cert("device-id")).encode())[0]
                finally:
                    await certs.close()
                assert issued.subject.get_attributes_for_oid(NameOID.LOCALITY_NAME)[0].value == "McMurdo"
                assert issued.subject.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)[0].value == "Antarctica"
                issued.verify_directly_issued_by(ca)
