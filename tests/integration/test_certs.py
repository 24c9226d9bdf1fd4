"""The certificates service over its real socket, with issuer keys on every key backend (software, PKCS#11 on
SoftHSM2, TPM on swtpm): issuance rules, the API's shapes, bad CSRs, preloaded certs, authorization."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from edgeward.certs.errors import CertNotFound
from edgeward.certs.x509sign import handle_public_key, sign_csr
from edgeward.http.errors import HttpError
from edgeward.http.peercred import Caller
from tests.fixtures.certs import CertsEnv, serve_certs
from tests.fixtures.keys import BACKENDS

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = {
    "cert_issuance": {
        "local_ca": {"cert": "local-ca", "pk": "local-ca", "common_name": "Test Local CA", "expiry_days": 2},
        "server": {"method": "local_ca", "expiry_days": 30, "kind": "server", "dns_names": ["*.local"]},
        "renamed": {"method": "local_ca", "common_name": "overridden.example", "expiry_days": 1, "kind": "server",
                    "dns_names": ["device-1.local"]},
        "root": {"method": "self_signed", "expiry_days": 10, "kind": "ca"},
        "root-other-key": {"method": "self_signed", "key_id": "root"},
        "mod-*": {"kind": "server", "dns_names": ["device-1.local"]},  # issuance policy only: an explicit issuer
    },
    "principal": [{"uid": 1234, "certs": ["mod-*"]}],
}


def _doc(base: Path) -> dict[str, object]:
    return CONFIG | {"preloaded_certs": {"from-file": f"file://{base / 'preloaded.pem'}",
                                         "bundle": ["local-ca", "root"]}}


@pytest_asyncio.fixture(scope="session", params=BACKENDS)
async def certs_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CertsEnv]:
    base = tmp_path_factory.mktemp(f"certs-{request.param}")
    async with serve_certs(request.param, request, base, _doc(base)) as env:
        yield env


@pytest_asyncio.fixture(scope="session")
async def software_certs(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CertsEnv]:
    """Wire-level tests need one key backend only."""
    base = tmp_path_factory.mktemp("certs-wire")
    async with serve_certs("software", request, base, _doc(base)) as env:
        yield env


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str = "device-1", san: str | None = "device-1.local",
            usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH) -> bytes:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")]))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def test_local_ca_issues_chains_that_verify_with_the_names_and_usage_the_policy_allows(
        certs_env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await certs_env.client.create_cert("server", csr_for(key))
    leaf, ca = x509.load_pem_x509_certificates(pem.encode())
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Local CA"
    assert leaf.public_key() == key.public_key()
    assert leaf.version == x509.Version.v3
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["device-1.local"]
    assert list(leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    # the leaf asked for 30 days but never outlives the 2-day CA
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    assert await certs_env.client.get_cert("server") == pem


async def test_common_name_override_and_expiry_days(certs_env: CertsEnv) -> None:
    pem = await certs_env.client.create_cert("renamed", csr_for(ec.generate_private_key(ec.SECP256R1())))
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "overridden.example"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Org"
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < lifetime <= dt.timedelta(days=1)


async def test_self_signed_uses_the_key_in_the_keys_service(certs_env: CertsEnv) -> None:
    handle = await certs_env.keys.create_key_pair_if_not_exists("root", "ec-p256")
    public = await handle_public_key(certs_env.keys, handle)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])
    csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(name), certs_env.keys, handle, public)
    pem = await certs_env.client.create_cert("root", csr.public_bytes(serialization.Encoding.DER))
    (cert,) = x509.load_pem_x509_certificates(pem.encode())
    cert.verify_directly_issued_by(cert)
    assert cert.public_key() == public
    with pytest.raises(HttpError) as e:
        await certs_env.client.create_cert("root", csr_for(ec.generate_private_key(ec.SECP256R1()), san=None))
    assert e.value.status == 400 and "must be requested for key 'root'" in e.value.message


async def test_caller_named_issuer_key_signs_and_must_match_its_cert(certs_env: CertsEnv) -> None:
    ca_handle = await certs_env.keys.create_key_pair_if_not_exists("root", "ec-p256")
    ca_public = await handle_public_key(certs_env.keys, ca_handle)
    csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])), certs_env.keys, ca_handle, ca_public)
    await certs_env.client.create_cert("root", csr.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await certs_env.client.create_cert("mod-leaf", csr_for(key, "module"), ("root", ca_handle))
    leaf, root = x509.load_pem_x509_certificates(pem.encode())
    leaf.verify_directly_issued_by(root)
    other = await certs_env.keys.create_key_pair_if_not_exists("not-the-ca", "ec-p256")
    with pytest.raises(HttpError) as e:
        await certs_env.client.create_cert("mod-leaf", csr_for(key), ("root", other))
    assert e.value.status == 400 and "not the key of issuer cert 'root'" in e.value.message
    with pytest.raises(HttpError) as e:
        await certs_env.client.create_cert("mod-leaf", csr_for(key), ("no-such-ca", ca_handle))
    assert e.value.status == 400 and "issuer cert 'no-such-ca' not found" in e.value.message


async def test_bad_csrs_are_refused_with_a_clear_400(software_certs: CertsEnv) -> None:
    certs_env = software_certs
    good = csr_for(ec.generate_private_key(ec.SECP256R1()))
    der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    tampered = der[:-3] + bytes([der[-3] ^ 0xFF]) + der[-2:]
    cases = [(b"garbage", "not a PKCS#10"), (tampered, "signature does not verify"),
             (b"A" * 70_000, "larger than"), (good, "no cert_issuance method configured")]
    for csr, fragment in cases:
        cert_id = "unconfigured" if fragment.startswith("no cert") else "server"
        with pytest.raises(HttpError) as e:
            await certs_env.client.create_cert(cert_id, csr)
        assert e.value.status == 400, e.value.message
        assert fragment in e.value.message


async def test_import_get_delete_and_preloaded_certs(certs_env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await certs_env.client.create_cert("server", csr_for(key))
    assert await certs_env.client.import_cert("imported/with:odd id", pem) == pem
    assert await certs_env.client.get_cert("imported/with:odd id") == pem
    await certs_env.client.delete_cert("imported/with:odd id")
    with pytest.raises(CertNotFound):
        await certs_env.client.get_cert("imported/with:odd id")
    await certs_env.client.delete_cert("imported/with:odd id")  # gone already: still done, as aziot-certd
    with pytest.raises(HttpError) as e:
        await certs_env.client.import_cert("x", "not pem")
    assert e.value.status == 400 and "pem:" in e.value.message

    leaf_only = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    Path(certs_env.service.settings.preloaded["from-file"].removeprefix("file://")).write_text(leaf_only)  # type: ignore[union-attr]
    assert await certs_env.client.get_cert("from-file") == leaf_only
    await certs_env.service.local_ca()
    bundle = x509.load_pem_x509_certificates((await certs_env.client.get_cert("bundle")).encode())
    assert [c.subject.rfc4514_string() for c in bundle] == ["CN=Test Local CA", "CN=root"]


async def test_writes_need_a_principal_reads_do_not(certs_env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await certs_env.client.create_cert("server", csr_for(key))
    module = certs_env.service.for_caller(Caller(pid=1, uid=1234, gid=1234))
    stranger = certs_env.service.for_caller(Caller(pid=1, uid=4321, gid=4321))
    assert await module.import_cert("mod-a", pem) == pem
    for call in (module.import_cert("server", pem), stranger.import_cert("mod-a", pem), stranger.delete_cert("mod-a"),
                 stranger.create_cert("mod-b", csr_for(key), None)):
        with pytest.raises(HttpError) as e:
            await call
        assert e.value.status == 401 and "is not authorized for cert" in e.value.message
    assert await stranger.get_cert("mod-a") == pem


async def test_wire_shapes(software_certs: CertsEnv) -> None:
    import aiohttp

    certs_env = software_certs
    csr = base64.b64encode(csr_for(ec.generate_private_key(ec.SECP256R1()))).decode()
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(certs_env.socket))) as s:
        async with s.post("http://certd/certificates?api-version=2020-09-01", json={"certId": "server", "csr": csr}) as r:
            body = await r.json()
            assert r.status == 201 and set(body) == {"pem"} and body["pem"].startswith("-----BEGIN CERTIFICATE-----")
        async with s.get("http://certd/certificates/server?api-version=2020-09-01") as r:
            assert r.status == 200 and set(await r.json()) == {"pem"}
        async with s.post("http://certd/certificates?api-version=2021-05-01", json={}) as r:
            assert r.status == 400 and "unsupported api-version" in (await r.json())["message"]
        async with s.post("http://certd/certificates?api-version=2020-09-01", json={"certId": "x"}) as r:
            assert r.status == 422 and "csr" in (await r.json())["message"]
        async with s.delete("http://certd/certificates/server?api-version=2020-09-01") as r:
            assert r.status == 204


async def test_local_identities_default_to_the_local_ca(software_certs: CertsEnv) -> None:
    """identityd's local identities ("local-id-<module>") need no issuance entry when a local CA is configured."""
    pem = await software_certs.client.create_cert("local-id-agent",
                                                  csr_for(ec.generate_private_key(ec.SECP256R1()), san=None))
    leaf, ca = x509.load_pem_x509_certificates(pem.encode())
    assert ca.subject.rfc4514_string() == "CN=Test Local CA"
    leaf.verify_directly_issued_by(ca)
    with pytest.raises(HttpError) as none:
        await software_certs.client.create_cert("other-id", csr_for(ec.generate_private_key(ec.SECP256R1())))
    assert none.value.status == 400 and "no cert_issuance method" in none.value.message


async def test_deletes_and_issues_of_many_ids_leave_no_lock_behind(software_certs: CertsEnv) -> None:
    """Attack (session-13 review, brk13a a02): a principal deleting ids that do not exist, each a new one, grew the
    daemon by ~1.1 MB/s from one connection: one lock per cert id ever named stayed for the daemon's life."""
    key = ec.generate_private_key(ec.SECP256R1())
    for i in range(300):
        await software_certs.client.delete_cert(f"absent-{i}")
    await software_certs.client.create_cert("server", csr_for(key))
    assert len(software_certs.service._locks) == 0
