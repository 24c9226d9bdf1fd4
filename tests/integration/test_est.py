"""The EST client against a real EST server over loopback TLS: trust, basic auth, mutual TLS, re-enrollment, 202 +
Retry-After, failures with clear messages; and the PKCS#7 body parser, which reads what the network sends."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ssl
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeward.certs.est import (
    ClientIdentity,
    EstClient,
    EstError,
    base64_body,
    certs_only_pkcs7,
    order_chain,
    parse_certificates,
)
from edgeward.certs.est.client import _retry_after
from edgeward.testing.est_server import EstServer, ResponseFormat, generate_ca, generate_intermediate, issue_certificate

pytestmark = pytest.mark.asyncio(loop_scope="session")

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


# helpers ------------------------------------------------------------------------------------------------------
def make_csr(
    common_name: str = "device-1", key: ec.EllipticCurvePrivateKey | None = None, san: str | None = "device-1.local"
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(DER), key


def password_client(server: EstServer, **kwargs: object) -> EstClient:
    return EstClient(server.base_url, [server.ca_cert], server.username, server.password, **kwargs)  # type: ignore[arg-type]


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def spki(cert_or_key: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    public = cert_or_key.public_key()
    return public.public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def enrolled_identity(
    server: EstServer, tmp_path: Path, common_name: str = "device-1"
) -> tuple[x509.Certificate, ClientIdentity]:
    """A certificate enrolled with the password, and its key in a private file: the device's EST identity."""
    csr, key = make_csr(common_name)
    async with password_client(server) as client:
        leaf = (await client.simple_enroll(csr))[0]
    key_path = write_key(tmp_path / f"{common_name}.key.pem", key)
    return leaf, ClientIdentity(cert_chain_pem=leaf.public_bytes(PEM), key_pem_path=key_path)


# trust and cacerts ------------------------------------------------------------------------------------------
async def test_cacerts_returns_the_ca_over_verified_tls(est_server: EstServer) -> None:
    async with EstClient(est_server.base_url, [est_server.ca_cert]) as client:
        assert await client.cacerts() == [est_server.ca_cert]
    assert est_server.hits["cacerts"] == 1


async def test_label_segment_in_the_base_url_is_served(est_server: EstServer) -> None:
    async with EstClient(est_server.url("edge-ca"), [est_server.ca_cert]) as client:
        assert await client.cacerts() == [est_server.ca_cert]


async def test_client_trusting_another_ca_refuses_the_server_with_a_clear_error(est_server: EstServer) -> None:
    other_ca, _ = generate_ca("Some other CA")
    async with EstClient(est_server.base_url, [other_ca]) as client:
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    message = str(caught.value)
    assert "TLS verification" in message and est_server.base_url in message and "trusted certificates" in message
    assert caught.value.status is None
    assert est_server.hits["cacerts"] == 0  # nothing reached the handler


async def test_client_ignores_the_environment_ca_bundle(
    est_server: EstServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the environment trusts the EST CA, a client configured with another CA must not connect."""
    bundle = tmp_path / "env-bundle.pem"
    bundle.write_bytes(est_server.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    async with EstClient(est_server.base_url, [generate_ca("Unrelated")[0]]) as client:
        with pytest.raises(EstError, match="TLS verification"):
            await client.cacerts()


# enrollment with basic auth ---------------------------------------------------------------------------------
async def test_enroll_with_basic_auth_issues_a_v3_cert_for_the_csr(est_server: EstServer) -> None:
    csr, key = make_csr("device-1", san="device-1.local")
    async with password_client(est_server) as client:
        certs = await client.simple_enroll(csr)
    leaf = certs[0]
    assert spki(leaf) == spki(key)
    assert leaf.version == x509.Version.v3
    assert leaf.subject.rfc4514_string() == "CN=device-1"
    assert leaf.issuer == est_server.ca_cert.subject
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    leaf.verify_directly_issued_by(est_server.ca_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["device-1.local"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    skid = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert skid == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    akid = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_skid = est_server.ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert akid.key_identifier == ca_skid.digest
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc) == timedelta(days=30)
    assert est_server.enrollments == 1 and est_server.issued == [leaf]


async def test_cert_lifetime_in_seconds_is_exact(est_server: EstServer) -> None:
    est_server.cert_lifetime = timedelta(seconds=5)
    async with password_client(est_server) as client:
        leaf = (await client.simple_enroll(make_csr()[0]))[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(seconds=5)
    assert abs(leaf.not_valid_before_utc - datetime.now(UTC)) < timedelta(seconds=5)


async def test_enroll_without_credentials_is_refused_and_names_authentication(est_server: EstServer) -> None:
    async with EstClient(est_server.base_url, [est_server.ca_cert]) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(make_csr()[0])
    assert caught.value.status == 401
    assert "requires authentication" in str(caught.value) and "username and password" in str(caught.value)
    assert est_server.enrollments == 0


async def test_enroll_with_a_wrong_password_says_the_credentials_were_refused(est_server: EstServer) -> None:
    async with EstClient(est_server.base_url, [est_server.ca_cert], est_server.username, "wrong") as client:
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(make_csr()[0])
    assert caught.value.status == 401 and "refused the configured credentials" in str(caught.value)
    assert "wrong" not in str(caught.value)


async def test_client_repr_never_shows_the_password() -> None:
    client = EstClient("https://est.example/.well-known/est", None, "user", "s3cret-pw")
    assert "s3cret-pw" not in repr(client) and "user" in repr(client)


async def test_client_refuses_plain_http_and_credentials_in_the_url() -> None:
    with pytest.raises(EstError, match="https"):
        EstClient("http://est.example/.well-known/est", None)
    with pytest.raises(EstError, match="credentials"):
        EstClient("https://u:p@est.example/.well-known/est", None)
    with pytest.raises(EstError, match="no trusted certificates"):
        EstClient("https://est.example/.well-known/est", [])


# mutual TLS -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_location", ["separate-file", "in-chain-pem"])
async def test_mutual_tls_enrollment_and_reenrollment_with_the_client_cert(
    est_server: EstServer, tmp_path: Path, key_location: str
) -> None:
    current, identity = await enrolled_identity(est_server, tmp_path)
    if key_location == "in-chain-pem":
        assert identity.key_pem_path is not None
        identity = ClientIdentity(cert_chain_pem=identity.cert_chain_pem + identity.key_pem_path.read_bytes())
    # no password at all: the TLS client certificate authenticates
    async with EstClient(est_server.base_url, [est_server.ca_cert], client_identity=identity) as client:
        other = (await client.simple_enroll(make_csr("device-2")[0]))[0]
        assert other.subject.rfc4514_string() == "CN=device-2"
        new_csr, new_key = make_csr("device-1", san="device-1.local")  # re-key, same subject and SAN
        renewed = await client.simple_reenroll(new_csr)
    assert spki(renewed[0]) == spki(new_key)
    assert renewed[0].subject == current.subject and renewed[0].serial_number != current.serial_number
    assert est_server.enrollments == 2 and est_server.reenrollments == 1


async def test_reenroll_without_a_client_certificate_is_forbidden(est_server: EstServer) -> None:
    async with password_client(est_server) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_reenroll(make_csr()[0])
    assert caught.value.status == 403 and "client certificate" in str(caught.value)
    assert est_server.reenrollments == 0


async def test_reenroll_must_keep_the_subject_of_the_current_certificate(est_server: EstServer, tmp_path: Path) -> None:
    _, identity = await enrolled_identity(est_server, tmp_path)
    async with EstClient(est_server.base_url, [est_server.ca_cert], client_identity=identity) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_reenroll(make_csr("someone-else")[0])
    assert caught.value.status == 400 and "subject" in str(caught.value)


async def test_server_requiring_a_client_cert_refuses_a_client_without_one() -> None:
    server = EstServer(client_auth=ssl.CERT_REQUIRED)
    async with server, EstClient(server.base_url, [server.ca_cert]) as client:  # entered in order: server first
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    assert server.base_url in str(caught.value) and "client certificate" in str(caught.value)


async def test_client_cert_from_an_untrusted_ca_is_refused_in_the_handshake(
    est_server: EstServer, tmp_path: Path
) -> None:
    rogue_ca, rogue_key = generate_ca("Rogue CA")
    csr, key = make_csr("device-1")
    rogue_leaf = issue_certificate(x509.load_der_x509_csr(csr), rogue_ca, rogue_key, timedelta(days=1))
    identity = ClientIdentity(rogue_leaf.public_bytes(PEM), write_key(tmp_path / "rogue.key.pem", key))
    async with EstClient(est_server.base_url, [est_server.ca_cert], client_identity=identity) as client:
        with pytest.raises(EstError):
            await client.simple_reenroll(csr)
    assert est_server.reenrollments == 0


async def test_client_identity_with_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    ca, _ = generate_ca()
    identity = ClientIdentity(ca.public_bytes(PEM), tmp_path / "absent.key.pem")
    with pytest.raises(EstError, match="cannot load the EST client certificate"):
        EstClient("https://127.0.0.1:1/.well-known/est", [ca], client_identity=identity)


# 202 + Retry-After -------------------------------------------------------------------------------------------
async def test_202_with_retry_after_is_waited_out_and_retried(est_server: EstServer) -> None:
    est_server.pending_next(1, retry_after=1)
    async with password_client(est_server) as client:
        started = time.monotonic()
        certs = await client.simple_enroll(make_csr()[0])
        waited = time.monotonic() - started
    assert certs and est_server.hits["simpleenroll"] == 2 and est_server.enrollments == 1
    assert 0.9 <= waited < 5


async def test_retry_after_beyond_the_budget_fails_at_once(est_server: EstServer) -> None:
    est_server.pending_next(1, retry_after=120)
    async with password_client(est_server, max_retry_after=10.0) as client:
        started = time.monotonic()
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(make_csr()[0])
    assert time.monotonic() - started < 2
    assert caught.value.status == 202 and "max_retry_after" in str(caught.value)
    assert est_server.hits["simpleenroll"] == 1


async def test_waiting_for_retry_after_can_be_cancelled(est_server: EstServer) -> None:
    est_server.pending_next(1, retry_after=60)
    async with password_client(est_server) as client:
        task = asyncio.create_task(client.simple_enroll(make_csr()[0]))
        for _ in range(200):
            if est_server.hits["simpleenroll"] == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the client read the 202 and start waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=2)
    assert est_server.hits["simpleenroll"] == 1 and est_server.enrollments == 0


async def test_retry_after_accepts_seconds_and_http_dates() -> None:
    url = "https://est.example/.well-known/est/simpleenroll"
    assert _retry_after("7", url) == 7.0
    assert _retry_after("0", url) == 1.0  # never a tight loop
    in_ten = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= _retry_after(in_ten, url) <= 10.5
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert _retry_after(past, url) == 1.0
    for bad in (None, "", "soon", "-5"):
        with pytest.raises(EstError):
            _retry_after(bad, url)


# failures -----------------------------------------------------------------------------------------------------
async def test_injected_server_error_is_an_est_error_with_status_and_server_text(est_server: EstServer) -> None:
    est_server.fail_next(1, 500, "CA backend unavailable")
    async with password_client(est_server) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(make_csr()[0])
        assert caught.value.status == 500
        assert "500" in str(caught.value) and "CA backend unavailable" in str(caught.value)
        assert est_server.base_url + "/simpleenroll" in str(caught.value)
        assert await client.simple_enroll(make_csr()[0])  # only the next request failed
    assert est_server.enrollments == 1


async def test_long_server_text_is_truncated(est_server: EstServer) -> None:
    est_server.fail_next(1, 503, "x" * 5000)
    async with password_client(est_server) as client:
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    assert caught.value.status == 503 and len(str(caught.value)) < 500


async def test_garbage_csr_is_refused_with_400(est_server: EstServer) -> None:
    async with password_client(est_server) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(b"\x30\x03not a csr at all")
    assert caught.value.status == 400 and "PKCS#10" in str(caught.value)
    assert est_server.enrollments == 0


async def test_csr_with_a_broken_signature_is_refused_with_400(est_server: EstServer) -> None:
    csr = bytearray(make_csr()[0])
    csr[-3] ^= 0x01  # inside the signature
    async with password_client(est_server) as client:
        with pytest.raises(EstError) as caught:
            await client.simple_enroll(bytes(csr))
    assert caught.value.status == 400


async def test_slow_server_times_out_with_the_url_named() -> None:
    async with EstServer(delay=2.0) as server, EstClient(server.base_url, [server.ca_cert], timeout=0.3) as client:
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    assert "did not answer within 0.3 s" in str(caught.value) and server.base_url in str(caught.value)


async def test_unreachable_server_is_named() -> None:
    async with EstServer() as server:
        url, ca = server.base_url, server.ca_cert
    async with EstClient(url, [ca], timeout=5) as client:
        with pytest.raises(EstError) as caught:
            await client.cacerts()
    assert url in str(caught.value) and caught.value.status is None


# csrattrs ------------------------------------------------------------------------------------------------------
async def test_csrattrs_absent_is_none_and_configured_is_returned(est_server: EstServer) -> None:
    async with password_client(est_server) as client:
        assert await client.csrattrs() is None
        attrs = bytes.fromhex("300c06082b06010505070107")  # a tiny DER SEQUENCE standing in for CsrAttrs
        est_server.csrattrs = attrs
        assert await client.csrattrs() == attrs


# response formats and the parser -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pkcs7-base64", "pkcs7-der", "pem", "der-base64"])
async def test_client_tolerates_every_response_form_seen_in_the_field(
    est_server: EstServer, fmt: ResponseFormat
) -> None:
    est_server.response_format = fmt
    csr, key = make_csr()
    async with password_client(est_server) as client:
        assert await client.cacerts() == [est_server.ca_cert]
        leaf = (await client.simple_enroll(csr))[0]
    assert spki(leaf) == spki(key)


async def test_server_answers_base64_certs_only_pkcs7_with_the_rfc_7030_headers(est_server: EstServer) -> None:
    """Checked with a bare TLS client, not ours, so the server's wire form is what RFC 7030 says."""
    context = ssl.create_default_context(cadata=est_server.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        async with session.get(est_server.base_url + "/cacerts", ssl=context) as resp:
            body = await resp.read()
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
            assert resp.headers["Content-Transfer-Encoding"] == "base64"
        async with session.post(
            est_server.base_url + "/simpleenroll",
            data=base64.b64encode(make_csr()[0]),
            headers={
                "Content-Type": "text/plain",
                "Authorization": aiohttp.encode_basic_auth(est_server.username or "", est_server.password or ""),
            },
            ssl=context,
        ) as resp:
            assert resp.status == 415
    assert all(len(line) <= 76 for line in body.splitlines())
    assert parse_certificates(body) == [est_server.ca_cert]


def _chain() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    root, root_key = generate_ca("Root")
    inter, inter_key = generate_intermediate(root, root_key)
    leaf_csr = x509.load_der_x509_csr(make_csr("leaf")[0])
    leaf = issue_certificate(leaf_csr, inter, inter_key, timedelta(days=1))
    return leaf, inter, root


async def test_parser_reads_pkcs7_in_every_encoding_and_orders_the_chain() -> None:
    leaf, inter, root = _chain()
    der = certs_only_pkcs7([root, leaf, inter])
    pem_p7 = b"-----BEGIN PKCS7-----\n" + base64_body(der) + b"-----END PKCS7-----\n"
    for body in (der, base64_body(der), base64_body(der, None), base64_body(der, 76).replace(b"\n", b"\r\n"), pem_p7):
        assert order_chain(parse_certificates(body)) == [leaf, inter, root]
    pem_certs = b"".join(c.public_bytes(PEM) for c in (inter, leaf))
    assert parse_certificates(pem_certs) == [inter, leaf]
    assert parse_certificates(base64.b64encode(leaf.public_bytes(DER))) == [leaf]
    assert parse_certificates(leaf.public_bytes(DER)) == [leaf]


async def test_raw_der_ending_in_a_whitespace_byte_is_read_whole() -> None:
    """A DER certificate's last byte is its signature's, so one in 40 or so is a whitespace byte: it is part of the
    certificate, not padding to trim (a trailing newline after the DER still is)."""
    root, root_key = generate_ca("Root")
    csr = x509.load_der_x509_csr(make_csr("leaf")[0])
    for _ in range(2000):
        leaf = issue_certificate(csr, root, root_key, timedelta(days=1))
        der = leaf.public_bytes(DER)
        if der[-1:] in (b" ", b"\t", b"\r", b"\n", b"\v", b"\f"):
            break
    else:
        pytest.fail("no certificate ending in a whitespace byte in 2000 tries")
    assert parse_certificates(der) == [leaf]
    assert parse_certificates(der + b"\r\n") == [leaf]
    p7 = certs_only_pkcs7([leaf, root])
    assert set(parse_certificates(p7 + b"\n")) == {leaf, root}


async def test_a_certificate_with_a_duplicated_extension_is_an_est_error() -> None:
    """Found by the corrupted-PKCS#7 property: one flipped byte turns the authority key identifier's OID into the
    subject key identifier's, and the parse raised cryptography's DuplicateExtension instead of an EstError."""
    leaf, _, _ = _chain()
    der = leaf.public_bytes(DER)
    aki_oid, ski_oid = bytes.fromhex("0603551d23"), bytes.fromhex("0603551d0e")
    assert der.count(aki_oid) == 1 and ski_oid in der
    with pytest.raises(EstError, match="malformed certificate"):
        parse_certificates(der.replace(aki_oid, ski_oid))


async def test_order_chain_refuses_an_answer_without_the_requested_key() -> None:
    leaf, inter, _ = _chain()
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(EstError, match="no certificate for the requested key"):
        order_chain([inter, leaf], stranger)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \r\n",
        b"<html>502 Bad Gateway</html>",
        b"-----BEGIN PKCS7-----\nAAAA\n-----END PKCS7-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"\x30\x00",
        b"TUlJQg==",
    ],
)
async def test_parser_turns_garbage_into_est_error(body: bytes) -> None:
    with pytest.raises(EstError):
        parse_certificates(body)


_VALID_P7 = certs_only_pkcs7(list(_chain()))


@pytest.mark.filterwarnings("ignore::UserWarning")  # cryptography notes BER fallbacks and odd serials
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
async def test_parser_property_arbitrary_bytes_raise_only_est_error(body: bytes) -> None:
    for candidate in (
        body,
        base64.b64encode(body),
        b"-----BEGIN PKCS7-----\n" + base64_body(body) + b"-----END PKCS7-----",
    ):
        try:
            certs = parse_certificates(candidate)
        except EstError:
            continue
        assert certs and all(isinstance(c, x509.Certificate) for c in certs)


@pytest.mark.filterwarnings("ignore::UserWarning")  # cryptography notes BER fallbacks and odd serials
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID_P7) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, len(_VALID_P7)),
)
async def test_parser_property_corrupted_pkcs7_raises_only_est_error(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_VALID_P7)
    for where, value in flips:
        data[where] = value
    for candidate in (bytes(data[:cut] or data), base64_body(bytes(data))):
        try:
            parse_certificates(candidate)
        except EstError:
            pass


async def test_server_certificate_names_loopback() -> None:
    server = EstServer()
    san = server.server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert IPv4Address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
