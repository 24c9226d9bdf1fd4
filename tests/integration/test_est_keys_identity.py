"""EST over mutual TLS with a client key that never leaves the keys service (software, PKCS#11 on SoftHSM2, TPM on
swtpm), against the real EST server over loopback TLS: the tlslite-ng transport of ``EstClient`` with a
``KeysIdentity``, its server verification, and the HTTP behaviour it must share with the aiohttp path."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeward.certs.est import EstClient, EstError, KeysIdentity, keys_tls
from edgeward.certs.est import client as est_client
from edgeward.certs.x509sign import handle_public_key, sign_csr
from edgeward.keys.api import KeysApi
from edgeward.keys.model import EncryptMechanism, SignMechanism
from edgeward.testing.est_server import EstServer, generate_ca, generate_intermediate, issue_certificate
from tests.fixtures.keys import BACKENDS, KeysEnv, serve_keys

pytestmark = pytest.mark.asyncio(loop_scope="session")

DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
TLS_LOG = "edgeward.certs.est.keys_tls"


# helpers ------------------------------------------------------------------------------------------------------
class CountingKeys:
    """The keys API as the EST client sees it, counting the private-key operations it asks for."""

    def __init__(self, inner: KeysApi) -> None:
        self.inner = inner
        self.signs = 0

    async def get_key_pair_public_parameter(self, handle: str, name: str) -> str:
        return await self.inner.get_key_pair_public_parameter(handle, name)

    async def sign(self, handle: str, mechanism: SignMechanism) -> bytes:
        self.signs += 1
        return await self.inner.sign(handle, mechanism)

    async def encrypt(self, handle: str, mechanism: EncryptMechanism, plaintext: bytes) -> bytes:
        self.signs += 1
        return await self.inner.encrypt(handle, mechanism, plaintext)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def csr_builder(common_name: str = "device-1", san: str = "device-1.local") -> x509.CertificateSigningRequestBuilder:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )


async def keys_csr(
    env: KeysEnv, algorithm: str, common_name: str = "device-1"
) -> tuple[x509.CertificateSigningRequest, str]:
    """A CSR for a new key created in the keys service, signed there: (csr, key handle)."""
    handle = await env.client.create_key_pair_if_not_exists(env.new_id("est-id"), algorithm)
    public = await handle_public_key(env.client, handle)
    return await sign_csr(csr_builder(common_name), env.client, handle, public), handle


async def keys_identity(
    env: KeysEnv,
    ca: tuple[x509.Certificate, Any],
    algorithm: str = "ec-p256",
    common_name: str = "device-1",
) -> tuple[KeysIdentity, CountingKeys]:
    """The device's EST identity: a key in the keys service and a certificate for it issued by ``ca``."""
    csr, handle = await keys_csr(env, algorithm, common_name)
    cert = issue_certificate(csr, ca[0], ca[1], timedelta(days=1))
    counting = CountingKeys(env.client)
    return KeysIdentity([cert], counting, handle), counting


def spki(obj: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return obj.public_key().public_bytes(DER, SPKI)


class Tls12EstServer(EstServer):
    """The EST server with TLS 1.3 switched off, for the TLS 1.2 CertificateVerify paths."""

    def _tls_context(self) -> ssl.SSLContext:
        context = super()._tls_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context


@asynccontextmanager
async def est(tls: str = "1.3", **kwargs: Any) -> AsyncIterator[EstServer]:
    kind = Tls12EstServer if tls == "1.2" else EstServer
    server = kind(username="edge-device", password="pw-123", client_auth=ssl.CERT_OPTIONAL, **kwargs)
    async with server:
        yield server


def negotiated(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == TLS_LOG and "EST TLS to" in r.getMessage()]
    assert lines, "no handshake was logged"
    return lines[-1]


@pytest.fixture
async def software_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeysEnv]:
    async with serve_keys("software", request, tmp_path) as env:
        yield env


# re-enrollment over mutual TLS, per backend ----------------------------------------------------------------
@pytest.mark.parametrize("kind", BACKENDS)
async def test_reenroll_over_mutual_tls_with_an_identity_key_held_by_the_keys_service(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    caplog.set_level(logging.DEBUG, logger=TLS_LOG)
    async with serve_keys(kind, request, tmp_path) as env, est() as server:
        identity, counting = await keys_identity(env, (server.ca_cert, server.ca_key))
        new_csr, _ = await keys_csr(env, "ec-p256")  # the renewed certificate gets a new key, same subject and SAN
        # no password: the TLS client certificate, signed for by the keys service, authenticates
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            started = time.perf_counter()
            renewed = await client.simple_reenroll(new_csr.public_bytes(DER))
            record_property("reenroll_seconds", round(time.perf_counter() - started, 3))
    assert server.reenrollments == 1 and server.enrollments == 0
    assert spki(renewed[0]) == spki(new_csr)
    assert renewed[0].subject == identity.cert_chain[0].subject
    renewed[0].verify_directly_issued_by(server.ca_cert)
    assert counting.signs == 1  # one CertificateVerify, signed by the keys service
    assert "TLS 1.3" in negotiated(caplog)


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "rsa-2048"])
async def test_reenroll_with_every_key_type_over_tls_1_2_and_1_3(
    software_env: KeysEnv, algorithm: str, tls: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=TLS_LOG)
    async with est(tls) as server:
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key), algorithm)
        new_csr, _ = await keys_csr(software_env, algorithm)
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            renewed = await client.simple_reenroll(new_csr.public_bytes(DER))
    assert server.reenrollments == 1 and spki(renewed[0]) == spki(new_csr)
    assert counting.signs == 1
    assert f"TLS {tls}" in negotiated(caplog)


async def test_tls_1_2_rsa_pkcs1_v15_client_signature_goes_through_rsa_pkcs1_encrypt(
    software_env: KeysEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """tlslite prefers RSA-PSS; a client restricted to PKCS#1 v1.5 signs the DigestInfo with aziot's RSA-PKCS1."""
    original = keys_tls._handshake_settings

    def pkcs1_only(key: Any) -> Any:
        settings = original(key)
        settings.rsaSchemes = ["pkcs1"]
        return settings

    monkeypatch.setattr(keys_tls, "_handshake_settings", pkcs1_only)
    caplog.set_level(logging.DEBUG, logger=TLS_LOG)
    async with est("1.2") as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key), "rsa-2048")
        calls: list[str] = []
        inner_encrypt = identity.keys.encrypt

        async def encrypt(handle: str, mechanism: EncryptMechanism, plaintext: bytes) -> bytes:
            calls.append(type(mechanism).__name__)
            return await inner_encrypt(handle, mechanism, plaintext)

        monkeypatch.setattr(identity.keys, "encrypt", encrypt)
        new_csr, _ = await keys_csr(software_env, "rsa-2048")
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            await client.simple_reenroll(new_csr.public_bytes(DER))
    assert calls == ["RsaPkcs1"] and server.reenrollments == 1
    assert "TLS 1.2" in negotiated(caplog)


async def test_keys_service_key_signs_what_tlslite_asks_in_the_form_it_expects(software_env: KeysEnv) -> None:
    """The adapter alone, as tlslite calls it from its thread: DER ECDSA over a digest, RSA-PSS over a digest,
    PKCS#1 v1.5 over a DigestInfo; each checked with cryptography against the certificate's key."""
    ca = generate_ca()
    loop = asyncio.get_running_loop()
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"handshake transcript")
    h = digest.finalize()

    ec_identity, _ = await keys_identity(software_env, ca, "ec-p256")
    ec_public = ec_identity.cert_chain[0].public_key()
    assert isinstance(ec_public, ec.EllipticCurvePublicKey)
    ec_key = keys_tls._KeysServiceKey(ec_identity, ec_public, loop, 10)
    assert ec_key.key_type == "ecdsa" and ec_key.private_key.curve.baselen == 32
    signature = await asyncio.to_thread(ec_key.sign, bytearray(h), None, "sha256", None)
    ec_public.verify(bytes(signature), h, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert await asyncio.to_thread(ec_key.verify, signature, bytearray(h), None, "sha256", None)
    assert not await asyncio.to_thread(ec_key.verify, signature, bytearray(b"\x00" * 32), None, "sha256", None)

    rsa_identity, _ = await keys_identity(software_env, ca, "rsa-2048")
    rsa_public = rsa_identity.cert_chain[0].public_key()
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    rsa_key = keys_tls._KeysServiceKey(rsa_identity, rsa_public, loop, 10)
    assert rsa_key.key_type == "rsa" and rsa_key.n == rsa_public.public_numbers().n
    pss = await asyncio.to_thread(rsa_key.sign, bytearray(h), "pss", "sha256", 32)
    rsa_public.verify(bytes(pss), h, padding.PSS(padding.MGF1(hashes.SHA256()), 32), utils.Prehashed(hashes.SHA256()))
    assert await asyncio.to_thread(rsa_key.verify, pss, bytearray(h), "pss", "sha256", 32)
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + h
    pkcs1 = await asyncio.to_thread(rsa_key.sign, bytearray(digest_info), "pkcs1", None, 0)
    rsa_public.verify(bytes(pkcs1), h, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    assert await asyncio.to_thread(rsa_key.verify, pkcs1, bytearray(digest_info), "pkcs1", None, 0)


# refusals -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
async def test_client_certificate_not_issued_by_the_est_ca_is_refused(software_env: KeysEnv, tls: str) -> None:
    async with est(tls) as server:
        identity, _ = await keys_identity(software_env, generate_ca("Rogue CA"))
        new_csr, _ = await keys_csr(software_env, "ec-p256")
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            with pytest.raises(EstError) as caught:
                await client.simple_reenroll(new_csr.public_bytes(DER))
    message = str(caught.value)
    assert server.base_url in message and "client certificate" in message
    assert caught.value.status is None
    assert server.reenrollments == 0 and server.hits["simplereenroll"] == 0


async def test_server_certificate_not_from_a_trusted_ca_is_refused_before_the_key_signs(
    software_env: KeysEnv,
) -> None:
    async with est() as server:
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        other_ca, _ = generate_ca("Some other CA")
        async with EstClient(server.base_url, [other_ca], "edge-device", "pw-123", client_identity=identity) as client:
            with pytest.raises(EstError) as caught:
                await client.cacerts()
    message = str(caught.value)
    assert "TLS verification" in message and server.base_url in message
    assert "not issued by any of the trusted certificates" in message and "trusted certificates" in message
    assert caught.value.status is None
    assert counting.signs == 0  # the key was never used for an unverified server
    assert server.hits["cacerts"] == 0


async def test_server_certificate_for_another_host_is_refused(software_env: KeysEnv) -> None:
    # the server listens on 127.0.0.2; its certificate names 127.0.0.1 and localhost (and "127.0.0.2" only as DNS)
    async with est(host="127.0.0.2") as server:
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            with pytest.raises(EstError) as caught:
                await client.cacerts()
    message = str(caught.value)
    assert "TLS verification" in message and "not valid for 127.0.0.2" in message and "127.0.0.1" in message
    assert counting.signs == 0 and server.hits["cacerts"] == 0


async def test_dns_name_in_the_url_is_checked_against_dns_san(software_env: KeysEnv) -> None:
    async with est() as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        url = f"https://localhost:{server.port}/.well-known/est"
        async with EstClient(url, [server.ca_cert], client_identity=identity) as client:
            assert await client.cacerts() == [server.ca_cert]


async def test_server_that_does_not_ask_for_a_client_certificate_never_gets_a_signature(software_env: KeysEnv) -> None:
    async with EstServer() as server:  # client_auth=CERT_NONE
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            assert await client.cacerts() == [server.ca_cert]
    assert counting.signs == 0


async def test_identity_certificate_for_another_key_than_the_handle_is_a_clear_error(software_env: KeysEnv) -> None:
    async with est() as server:
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        other_handle = await software_env.client.create_key_pair_if_not_exists(software_env.new_id("other"), "ec-p256")
        swapped = KeysIdentity(identity.cert_chain, counting, other_handle)
        async with EstClient(server.base_url, [server.ca_cert], client_identity=swapped) as client:
            with pytest.raises(EstError, match="not for the key behind the configured key handle"):
                await client.cacerts()
    assert counting.signs == 0 and server.hits["cacerts"] == 0


async def test_keys_identity_needs_a_certificate_and_trust(software_env: KeysEnv) -> None:
    ca, _ = generate_ca()
    url = "https://127.0.0.1:1/.well-known/est"
    with pytest.raises(EstError, match="no certificate"):
        EstClient(url, [ca], client_identity=KeysIdentity([], software_env.client, "h"))
    with pytest.raises(EstError, match="no trusted certificates"):
        EstClient(url, [], client_identity=KeysIdentity([ca], software_env.client, "h"))


async def test_keys_identity_repr_hides_the_key_handle(software_env: KeysEnv) -> None:
    ca, _ = generate_ca()
    identity = KeysIdentity([ca], software_env.client, "sr=secret-handle&sig=mac")
    assert "secret-handle" not in repr(identity) and "sig=mac" not in repr(identity)


# the HTTP behaviour shared with the aiohttp path ---------------------------------------------------------------
async def test_basic_auth_and_202_retry_after_over_the_keys_transport(software_env: KeysEnv) -> None:
    """A server that does not ask for a client certificate: the password is what authenticates."""
    async with EstServer(username="edge-device", password="pw-123") as server:
        identity, counting = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        csr, _ = await keys_csr(software_env, "ec-p256", "device-2")
        server.pending_next(1, retry_after=1)
        async with EstClient(
            server.base_url, [server.ca_cert], "edge-device", "pw-123", client_identity=identity
        ) as client:
            started = time.monotonic()
            issued = await client.simple_enroll(csr.public_bytes(DER))
            waited = time.monotonic() - started
            assert await client.csrattrs() is None
        async with EstClient(
            server.base_url, [server.ca_cert], "edge-device", "wrong", client_identity=identity
        ) as client:
            with pytest.raises(EstError) as caught:
                await client.simple_enroll(csr.public_bytes(DER))
    assert spki(issued[0]) == spki(csr)
    assert server.hits["simpleenroll"] == 3 and server.enrollments == 1
    assert 0.9 <= waited < 10
    assert caught.value.status == 401 and "refused the configured credentials" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert counting.signs == 0


async def test_server_errors_map_like_the_aiohttp_path(software_env: KeysEnv) -> None:
    async with est() as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        csr, _ = await keys_csr(software_env, "ec-p256", "device-3")
        server.fail_next(1, 503, "CA backend unavailable")
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            with pytest.raises(EstError) as caught:
                await client.simple_enroll(csr.public_bytes(DER))
            assert caught.value.status == 503 and "CA backend unavailable" in str(caught.value)
            assert server.base_url + "/simpleenroll" in str(caught.value)
            with pytest.raises(EstError) as caught:
                await client.simple_reenroll(b"\x30\x03not a csr at all")
            assert caught.value.status == 400 and "PKCS#10" in str(caught.value)
            # the client certificate authenticates simpleenroll too, without a password
            assert spki((await client.simple_enroll(csr.public_bytes(DER)))[0]) == spki(csr)


async def test_response_size_is_capped(software_env: KeysEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(est_client, "MAX_RESPONSE_BYTES", 200)
    async with est() as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            with pytest.raises(EstError, match="sent more than 200 bytes"):
                await client.cacerts()


async def test_slow_server_times_out_with_the_url_named(software_env: KeysEnv) -> None:
    async with est(delay=3.0) as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity, timeout=1.0) as client:
            started = time.monotonic()
            with pytest.raises(EstError) as caught:
                await client.cacerts()
            assert time.monotonic() - started < 2.5
    assert "did not answer within 1 s" in str(caught.value) and server.base_url in str(caught.value)


async def test_cancelling_a_request_in_flight_ends_it_promptly(software_env: KeysEnv) -> None:
    async with est(delay=5.0) as server:
        identity, _ = await keys_identity(software_env, (server.ca_cert, server.ca_key))
        async with EstClient(server.base_url, [server.ca_cert], client_identity=identity) as client:
            task = asyncio.create_task(client.cacerts())
            for _ in range(200):
                if server.hits["cacerts"] == 1:
                    break
                await asyncio.sleep(0.01)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=2)
            assert time.monotonic() - started < 1
    assert server.hits["cacerts"] == 1


async def test_unreachable_server_is_named(software_env: KeysEnv) -> None:
    async with est() as server:
        url, ca, key = server.base_url, server.ca_cert, server.ca_key
    identity, _ = await keys_identity(software_env, (ca, key))
    async with EstClient(url, [ca], client_identity=identity, timeout=5) as client:
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    assert "could not connect" in str(caught.value) and url in str(caught.value)


# the server-chain check on its own -----------------------------------------------------------------------------
def _server_leaf(
    ca: x509.Certificate, ca_key: Any, names: list[x509.GeneralName], lifetime: timedelta = timedelta(days=1)
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "est")]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return issue_certificate(csr, ca, ca_key, lifetime)


async def test_server_chain_check_names_each_reason() -> None:
    root, root_key = generate_ca("Root")
    inter, inter_key = generate_intermediate(root, root_key)
    leaf = _server_leaf(inter, inter_key, [x509.DNSName("*.est.example"), x509.DNSName("est.example")])
    now = datetime.now(UTC)
    check = keys_tls._verify_server_chain

    def ders(*certs: x509.Certificate) -> list[bytes]:
        return [c.public_bytes(DER) for c in certs]

    assert check(ders(leaf, inter), [root], "est.example", now) is None
    assert check(ders(leaf, inter), [root], "a.est.example", now) is None
    assert check(ders(leaf), [inter], "EST.example", now) is None  # an intermediate as the anchor
    missing = check(ders(leaf), [root], "est.example", now)
    assert missing is not None and "not issued by any of the trusted certificates" in missing.reason
    wildcard_depth = check(ders(leaf, inter), [root], "a.b.est.example", now)
    assert wildcard_depth is not None and "not valid for a.b.est.example" in wildcard_depth.reason
    expired = check(ders(leaf, inter), [root], "est.example", now + timedelta(days=2))
    assert expired is not None and "expired" in expired.reason
    early = check(ders(leaf, inter), [root], "est.example", now - timedelta(hours=1))
    assert early is not None and "not valid before" in early.reason
    # a certificate that is not a CA cannot vouch for another one, even with the right name and key
    not_ca = issue_certificate(_not_ca_csr(inter_key), root, root_key, timedelta(days=10))
    not_a_ca = check(ders(leaf, not_ca), [root], "est.example", now)
    assert not_a_ca is not None and "not issued by any of the trusted certificates" in not_a_ca.reason


def _not_ca_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate")]))
        .sign(key, hashes.SHA256())
    )
