"""X.509 device identities against the DPS and IoT Hub emulators over real mutual TLS, the private key always in the
keys service: a certificate file with a preloaded key file, a key created in a PKCS#11 token with its certificate
issued by the certs service, refusals (401, unknown CA), renewal of the identity certificate re-registering with DPS,
and module identities managed in the hub with the device certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.certs.x509sign import handle_public_key, same_public_key
from edgeward.identity.compose import dps_registrar_for, hub_factory_for
from edgeward.identity.settings import parse_identity_settings
from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.est_server import generate_ca
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.certs import CertsEnv
from tests.fixtures.identity import IdentityEnv, serve_identity

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub)
    async with hub:
        yield hub, dps


def device_files(base: Path, cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
                 ) -> tuple[x509.Certificate, Path, Path]:
    """A device key and certificate (self-signed, or issued by ``issuer``) written as PEM files."""
    base.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))
    cert_path, key_path = base / f"{cn}.cert.pem", base / f"{cn}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, cert_path, key_path


def dps_config(dps: DpsEmulator, base: Path, identity_cert: str, registration_id: str | None = None,
               **extra: Any) -> dict[str, Any]:
    (base / "cloud-ca.pem").write_bytes(dps.hub.ca_pem)
    attestation: dict[str, Any] = {"method": "x509", "identity_cert": identity_cert, "identity_pk": "device-id"}
    if registration_id is not None:
        attestation["registration_id"] = registration_id
    return {"hostname": "edge-x509",
            "provisioning": {"source": "dps", "global_endpoint": dps.endpoint, "id_scope": dps.scope_id,
                             "attestation": attestation},
            "edgeward": {"identity": {"cloud_trust_bundle": f"file://{base / 'cloud-ca.pem'}"}}, **extra}


def serve(request: pytest.FixtureRequest, base: Path, doc: dict[str, Any], **kwargs: Any) -> Any:
    settings = parse_identity_settings(doc, base / "state", base / "run")
    return serve_identity(request, base, doc, hub_factory_for(settings), dps_registrar_for(settings), **kwargs)


async def module_round_trip(env: IdentityEnv, hub: HubEmulator, device_id: str, module_id: str) -> None:
    """Create, read and delete a module identity: each a registry call the hub authenticates by the device cert."""
    before = hub.requests
    created = await env.service.create_module(module_id)
    assert created.gen_id == hub.modules_of(device_id)[module_id].generation_id
    assert (await env.service.get_module(module_id)).gen_id == created.gen_id
    await env.service.delete_module(module_id)
    assert module_id not in hub.modules_of(device_id)
    assert hub.requests - before >= 5  # get, create, get, update, get, delete reached the hub


async def test_dps_x509_individual_enrollment_with_cert_file_and_preloaded_key_file(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, dps = cloud
    cert, cert_path, key_path = device_files(tmp_path / "device", "x509-dev-1")
    dps.add_x509_enrollment(cert, device_id="edge-x509-1")
    doc = dps_config(dps, tmp_path, f"file://{cert_path}")  # no registration_id: the cert's CN is used
    async with serve(request, tmp_path, doc, keys_extra={"preloaded_keys": {"device-id": f"file://{key_path}"}}) as env:
        device = env.service.device
        assert (device.hub, device.device_id, device.auth, device.source) == (hub.hostname, "edge-x509-1", "x509",
                                                                              "dps")
        assert dps.registered_certs == [cert]  # DPS saw the device cert in the TLS handshake
        identity = await env.service.device_identity()
        assert identity.auth_type == "x509" and identity.key_handle is not None
        # aziot-identity-common-http's DPS answer: the registration id is the cert's CN, payload always present
        async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(env.socket))) as s,
                    s.get("http://identityd/identities/provisioning?api-version=2022-08-01") as r):
            assert r.status == 200
            assert await r.json() == {"source": "dps", "auth": "x509", "endpoint": dps.endpoint,
                                      "scope_id": dps.scope_id, "registration_id": "x509-dev-1", "payload": None}
        await module_round_trip(env, hub, "edge-x509-1", "x509-module")


async def test_dps_x509_group_enrollment_key_in_pkcs11_cert_issued_by_certs_then_renewal_reprovisions(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, dps = cloud
    doc = dps_config(dps, tmp_path, "device-id", registration_id="grp-dev-7", cert_issuance={
        "local_ca": {"cert": "device-ca", "pk": "device-ca"},
        "device-id": {"method": "local_ca", "auto_renew": {"rotate_key": True, "threshold": "80%"}},
    })

    async def enroll_the_local_ca(certs_env: CertsEnv) -> None:
        chain = (await certs_env.service.local_ca()).chain
        dps.add_x509_group_enrollment(chain[0])

    async with serve(request, tmp_path, doc, kind="pkcs11", prepare=enroll_the_local_ca,
                     follow_renewals=True) as env:
        keys = env.certs_env.keys
        assert env.certs_env.keys_env.kind == "pkcs11"
        device = env.service.device
        assert (device.device_id, device.auth, dps.registrations) == ("grp-dev-7", "x509", 1)
        first = dps.registered_certs[0]
        assert first.subject.rfc4514_string() == "CN=grp-dev-7"
        # the certificate DPS saw is for the key the token holds (it never left the keys service)
        assert same_public_key(first.public_key(), await handle_public_key(keys, await keys.load_key_pair("device-id")))
        await module_round_trip(env, hub, "grp-dev-7", "grp-module")

        # renewal (with a new key) re-registers with DPS using the new certificate
        managed = next(m for m in env.certs_env.engine.managed if m.cert_id == "device-id")
        await env.certs_env.engine.renew(managed)
        async with asyncio.timeout(10):
            while dps.registrations < 2:
                await asyncio.sleep(0.02)  # the identity service reacts to the renewal event in its own task
        renewed = dps.registered_certs[1]
        assert renewed.serial_number != first.serial_number
        assert not same_public_key(renewed.public_key(), first.public_key())
        assert same_public_key(renewed.public_key(),
                               await handle_public_key(keys, await keys.load_key_pair("device-id")))
        await module_round_trip(env, hub, "grp-dev-7", "after-renewal")


async def test_dps_x509_refusals_are_clear_and_only_transient_ones_retried(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    _hub, dps = cloud
    verified_ca = generate_ca("a CA verified in DPS but in no enrollment")
    dps.trust_ca(verified_ca[0])
    _, cert_path, key_path = device_files(tmp_path / "a", "not-enrolled", issuer=verified_ca)
    doc = dps_config(dps, tmp_path / "a", f"file://{cert_path}")
    async with serve(request, tmp_path / "a", doc,
                     keys_extra={"preloaded_keys": {"device-id": f"file://{key_path}"}}) as env:
        with pytest.raises(Exception, match=r"DPS answered 401 .*no X.509 enrollment matches the certificate"):
            _ = env.service.device
        assert env.service._retry_task is None  # a refusal is not retried

    # a certificate from a CA DPS never heard of does not get through the TLS handshake: reported, and retried
    _, cert_path, key_path = device_files(tmp_path / "b", "unknown-ca", issuer=generate_ca("unknown CA"))
    doc = dps_config(dps, tmp_path / "b", f"file://{cert_path}")
    async with serve(request, tmp_path / "b", doc,
                     keys_extra={"preloaded_keys": {"device-id": f"file://{key_path}"}}) as env:
        with pytest.raises(Exception, match=r"TLS handshake with the DPS at https://127\.[0-9.]+(:[0-9]+)?/.* failed .*trusts the CA of the client") as e:
            _ = env.service.device
        assert getattr(e.value, "status", None) == 503
        assert env.service.next_attempt_in is not None
    assert dps.registrations == 0


async def test_manual_x509_device_manages_its_modules_over_mutual_tls(
    request: pytest.FixtureRequest, tmp_path: Path, cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, _dps = cloud
    cert, cert_path, key_path = device_files(tmp_path / "device", "edge-manual")
    hub.add_x509_device("edge-manual", cert=cert)
    (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
    doc = {"hostname": "edge-manual",
           "provisioning": {"source": "manual", "iothub_hostname": hub.hostname, "device_id": "edge-manual",
                            "authentication": {"method": "x509", "identity_cert": f"file://{cert_path}",
                                               "identity_pk": "device-id"}},
           "edgeward": {"identity": {"cloud_trust_bundle": f"file://{tmp_path / 'cloud-ca.pem'}"}}}
    keys_extra = {"preloaded_keys": {"device-id": f"file://{key_path}"}}
    async with serve(request, tmp_path, doc, keys_extra=keys_extra) as env:
        assert env.service.device.auth == "x509"
        await module_round_trip(env, hub, "edge-manual", "manual-module")
        # the hub refuses the certificate once it is no longer the device's: a 401 from the hub, reported as 502
        other, _, _ = device_files(tmp_path / "other", "edge-manual")
        hub.add_x509_device("edge-manual", cert=other)
        with pytest.raises(Exception, match=r"answered 401 .*thumbprint is not the device's") as e:
            await env.service.create_module("refused")
        assert getattr(e.value, "status", None) == 502


async def test_x509_identity_ids_must_be_ids_not_uris(tmp_path: Path) -> None:
    from edgeward.config.problems import ConfigError

    doc = {"provisioning": {"source": "dps", "global_endpoint": "https://dps.example", "id_scope": "0ne1",
                            "attestation": {"method": "x509", "identity_cert": "pkcs11:object=c",
                                            "identity_pk": "file:///k.pem"}}}
    with pytest.raises(ConfigError) as e:
        parse_identity_settings(doc, tmp_path, tmp_path)
    assert "provisioning.attestation.identity_cert" in str(e.value)
    assert "[preloaded_keys]" in str(e.value)
