"""EST enrollment through the certificates service against the project's real EST server over TLS on loopback:
trust configuration, basic auth, the issuing key in every key backend, renewal, and failures retried with backoff."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeward.certs.x509sign import handle_public_key, same_public_key, sign_csr
from edgeward.http.errors import HttpError
from edgeward.testing.est_server import EstServer, generate_ca
from tests.fixtures.certs import serve_certs
from tests.fixtures.keys import BACKENDS
from tests.integration.test_certs import csr_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client_csr() -> bytes:
    """What identityd asks for a device identity: no names, clientAuth."""
    return csr_for(ec.generate_private_key(ec.SECP256R1()), san=None, usage=ExtendedKeyUsageOID.CLIENT_AUTH)


def est_config(server: EstServer, ca_file: Path, password: str | None = None,
               auto_renew: dict[str, object] | None = None, lifetime_s: int | None = None) -> dict[str, object]:
    ca_file.write_bytes(server.ca_pem)
    device: dict[str, object] = {"method": "est", "common_name": "device-42"}
    if auto_renew:
        device["auto_renew"] = auto_renew
    if lifetime_s:
        device["expiry_seconds"] = lifetime_s
    return {
        "cert_issuance": {
            "est": {"trusted_certs": ["est-server-ca"], "urls": {"default": server.base_url},
                    "auth": {"username": server.username, "password": password or server.password}},
            "device-id": device,
        },
        "preloaded_certs": {"est-server-ca": f"file://{ca_file}"},
    }


@pytest.mark.parametrize("kind", BACKENDS)
async def test_est_enrollment_with_the_key_in_each_backend(
    kind: str, est_server: EstServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with serve_certs(kind, request, tmp_path, est_config(est_server, tmp_path / "ca.pem")) as env:
        handle = await env.keys.create_key_pair_if_not_exists("device-id", "ec-p256")
        public = await handle_public_key(env.keys, handle)
        csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-42")])), env.keys, handle, public)
        pem = await env.client.create_cert("device-id", csr.public_bytes(serialization.Encoding.PEM))
        chain = x509.load_pem_x509_certificates(pem.encode())
        assert same_public_key(chain[0].public_key(), public)
        chain[0].verify_directly_issued_by(est_server.ca_cert)
        assert est_server.enrollments == 1


async def test_est_refusals_surface_as_clear_errors(est_server: EstServer, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    doc = est_config(est_server, tmp_path / "ca.pem", password="wrong")
    async with serve_certs("software", request, tmp_path, doc) as env:
        with pytest.raises(HttpError) as e:
            await env.client.create_cert("device-id", client_csr())
        assert e.value.status == 502
        assert "EST enrollment of 'device-id'" in e.value.message and "401" in e.value.message


async def test_est_server_not_trusted_is_refused(est_server: EstServer, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    doc = est_config(est_server, tmp_path / "ca.pem")
    other_ca, _ = generate_ca("Some other CA")
    (tmp_path / "ca.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))  # trust the wrong CA
    async with serve_certs("software", request, tmp_path, doc) as env:
        with pytest.raises(HttpError) as e:
            await env.client.create_cert("device-id", client_csr())
        assert e.value.status == 502 and "certificate verify failed" in e.value.message.lower()
    assert est_server.enrollments == 0


async def test_est_renewal_retries_with_backoff_then_recovers(est_server: EstServer, request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    policy = {"rotate_key": True, "threshold": "50%", "retry": "1s"}
    doc = est_config(est_server, tmp_path / "ca.pem", auto_renew=policy)
    est_server.fail_next(2, 503, "maintenance")
    async with serve_certs("software", request, tmp_path, doc) as env:
        events = env.engine.subscribe()
        await env.engine.start()
        event = await asyncio.wait_for(events.get(), 30)
        (status,) = env.engine.status()
        assert status.renewals == 1 and status.failures == 0 and status.last_error is None
        assert event.rotated_key
        leaf = x509.load_pem_x509_certificates((await env.service.get_cert("device-id")).encode())[0]
        public = await handle_public_key(env.keys, await env.keys.load_key_pair("device-id"))
        assert same_public_key(leaf.public_key(), public)
        assert est_server.hits["simpleenroll"] == 3  # two injected failures, then success


async def test_est_down_is_reported_in_status_and_nothing_is_lost(request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    server = EstServer(username="u", password="p")
    async with server:
        doc = est_config(server, tmp_path / "ca.pem", auto_renew={"threshold": "50%", "retry": "1s"})
    # the server is stopped now: its port refuses connections
    async with serve_certs("software", request, tmp_path, doc) as env:
        await env.engine.start()
        for _ in range(200):
            (status,) = env.engine.status()
            if status.failures >= 2:
                break
            await asyncio.sleep(0.05)
        assert status.failures >= 2
        assert status.last_error is not None and server.base_url.split("/.well")[0] in status.last_error
        assert status.next_attempt is not None
        with pytest.raises(HttpError) as e:
            await env.service.get_cert("device-id")
        assert e.value.status == 404


@pytest.mark.parametrize("kind", BACKENDS)
async def test_bootstrap_identity_enrolls_the_est_identity_then_the_cert(
    kind: str, est_server: EstServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """No password: the bootstrap identity (key in the keys service) authenticates the enrollment of the EST
    identity over mutual TLS, and the EST identity then authenticates the enrollment of the device cert."""
    import datetime as dt

    from edgeward.testing.est_server import issue_certificate

    doc = est_config(est_server, tmp_path / "ca.pem")
    doc["cert_issuance"]["est"]["auth"] = {  # type: ignore[index]
        "bootstrap_identity_cert": "est-bootstrap", "bootstrap_identity_pk": "est-bootstrap",
        "identity_cert": "est-id", "identity_pk": "est-id"}
    async with serve_certs(kind, request, tmp_path, doc) as env:
        boot = await env.keys.create_key_pair_if_not_exists("est-bootstrap", "ec-p256")
        boot_public = await handle_public_key(env.keys, boot)
        boot_csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-42")])), env.keys, boot, boot_public)
        boot_cert = issue_certificate(boot_csr, est_server.ca_cert, est_server.ca_key, dt.timedelta(days=1))
        await env.client.import_cert("est-bootstrap", boot_cert.public_bytes(serialization.Encoding.PEM).decode())

        device = await env.keys.create_key_pair_if_not_exists("device-id", "ec-p256")
        device_public = await handle_public_key(env.keys, device)
        csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-42")])), env.keys, device, device_public)
        pem = await env.client.create_cert("device-id", csr.public_bytes(serialization.Encoding.PEM))
        leaf = x509.load_pem_x509_certificates(pem.encode())[0]
        assert same_public_key(leaf.public_key(), device_public)
        est_id = x509.load_pem_x509_certificates((await env.client.get_cert("est-id")).encode())[0]
        est_id.verify_directly_issued_by(est_server.ca_cert)
        est_id_public = await handle_public_key(env.keys, await env.keys.load_key_pair("est-id"))
        assert same_public_key(est_id.public_key(), est_id_public)
        assert est_server.enrollments == 2  # the EST identity, then the device cert
        # a second enrollment reuses the EST identity: no new bootstrap enrollment
        await env.client.create_cert("device-id", csr.public_bytes(serialization.Encoding.PEM))
        assert est_server.enrollments == 3


async def test_est_identity_renews_itself_by_reenrollment(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import datetime as dt

    from edgeward.testing.est_server import issue_certificate

    server = EstServer(username="u", password="p", client_auth=ssl.CERT_OPTIONAL,
                       cert_lifetime=dt.timedelta(seconds=4))
    async with server:
        doc = est_config(server, tmp_path / "ca.pem")
        est = doc["cert_issuance"]["est"]  # type: ignore[index]
        est["auth"] = {"identity_cert": "est-id", "identity_pk": "est-id"}
        est["identity_auto_renew"] = {"rotate_key": True, "threshold": "50%", "retry": "1s"}
        async with serve_certs("software", request, tmp_path, doc) as env:
            handle = await env.keys.create_key_pair_if_not_exists("est-id", "ec-p256")
            public = await handle_public_key(env.keys, handle)
            csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-42")])), env.keys, handle, public)
            first = issue_certificate(csr, server.ca_cert, server.ca_key, dt.timedelta(seconds=4))
            await env.client.import_cert("est-id", first.public_bytes(serialization.Encoding.PEM).decode())
            events = env.engine.subscribe()
            await env.engine.start()
            event = await asyncio.wait_for(events.get(), 20)
            assert event.cert_id == "est-id" and event.rotated_key
            assert server.reenrollments == 1
            renewed = x509.load_pem_x509_certificates((await env.client.get_cert("est-id")).encode())[0]
            new_public = await handle_public_key(env.keys, await env.keys.load_key_pair("est-id"))
            assert same_public_key(renewed.public_key(), new_public)
            assert not same_public_key(renewed.public_key(), public)
