"""What makes issuance quick must not make it wrong: a certificate is on disk when its answer arrives, a failed
write is reported and leaves the old certificate, the remembered local CA follows a replaced CA key or CA
certificate, and issuers with RSA keys (long DER lengths) still produce certificates that verify."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeward import groupcommit
from edgeward.certs import service as certs_service
from edgeward.certs.issuance import self_signed_ca
from edgeward.certs.x509sign import handle_public_key, sign_certificate, sign_csr
from edgeward.http.errors import HttpError
from tests.fixtures.certs import CertsEnv, serve_certs
from tests.fixtures.flushes import count_flushes
from tests.integration.test_certs import csr_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = {
    "cert_issuance": {
        "local_ca": {"cert": "store-ca", "pk": "store-ca", "common_name": "Store Test CA", "expiry_days": 2},
        "leaf-*": {"method": "local_ca", "expiry_days": 1, "kind": "server", "dns_names": ["device-1.local"]},
        "rsa-root-*": {"method": "self_signed", "kind": "ca"},
        "issued-*": {"kind": "server", "dns_names": ["device-1.local"]},
    },
}


@pytest_asyncio.fixture(scope="module")
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CertsEnv]:
    async with serve_certs("software", request, tmp_path_factory.mktemp("certs-store"), CONFIG) as e:
        yield e


async def test_each_answer_is_already_on_disk_and_a_burst_shares_flushes(env: CertsEnv,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    flushes = count_flushes(monkeypatch)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_for(key)
    store = env.service.store

    async def issue(cert_id: str) -> None:
        pem = await env.client.create_cert(cert_id, csr)
        assert store.path(cert_id).read_text() == pem  # on disk before the caller heard of it

    await env.client.create_cert("leaf-warm", csr)  # the local CA exists before the burst
    flushes.clear()
    await asyncio.gather(*(issue(f"leaf-{i}") for i in range(24)))
    assert sum(flushes) == 24 and len(flushes) < 24


async def test_a_failed_write_is_reported_and_the_old_certificate_stays(env: CertsEnv,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    old = await env.client.create_cert("leaf-full-disk", csr)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(groupcommit, "atomic_write", full)
    with pytest.raises(HttpError) as e:
        await env.client.create_cert("leaf-full-disk", csr)
    assert e.value.status == 507 and "no space left" in e.value.message
    monkeypatch.undo()
    assert await env.client.get_cert("leaf-full-disk") == old


async def test_the_remembered_local_ca_follows_a_replaced_key(env: CertsEnv) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    before = x509.load_pem_x509_certificates((await env.client.create_cert("leaf-a", csr)).encode())
    ca_id = env.service.settings.local_ca.cert  # type: ignore[union-attr]
    await env.keys.delete_key_pair(await env.keys.load_key_pair(ca_id))
    after = x509.load_pem_x509_certificates((await env.client.create_cert("leaf-b", csr)).encode())
    assert after[1].public_key() != before[1].public_key()  # a new key, so a new CA certificate
    after[0].verify_directly_issued_by(after[1])


async def test_the_remembered_local_ca_follows_a_certificate_replaced_on_disk(
        env: CertsEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certs_service, "LOCAL_CA_RECHECK_SECONDS", 0.0)
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    await env.client.create_cert("leaf-c", csr)
    ca = await env.service.local_ca()
    reissued = await sign_certificate(self_signed_ca("Store Test CA, reissued", ca.public, 2),
                                      env.keys, ca.handle, ca.public)
    env.service.store.path("store-ca").write_bytes(
        reissued.public_bytes(serialization.Encoding.PEM))  # an operator's out-of-band replacement
    chain = x509.load_pem_x509_certificates((await env.client.create_cert("leaf-d", csr)).encode())
    assert chain[1] == reissued
    chain[0].verify_directly_issued_by(reissued)


@pytest.mark.parametrize("key_type", ["rsa-2048", "rsa-4096"])
async def test_rsa_issuers_sign_certificates_that_verify(env: CertsEnv, key_type: str) -> None:
    root_id = f"rsa-root-{key_type}"
    handle = await env.keys.create_key_pair_if_not_exists(root_id, key_type)
    public = await handle_public_key(env.keys, handle)
    root_csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, root_id)])), env.keys, handle, public)
    root = x509.load_pem_x509_certificate((await env.client.create_cert(
        root_id, root_csr.public_bytes(serialization.Encoding.PEM))).encode())
    root.verify_directly_issued_by(root)
    pem = await env.client.create_cert(f"issued-{key_type}", csr_for(ec.generate_private_key(ec.SECP256R1())),
                                       (root_id, handle))
    leaf, issuer = x509.load_pem_x509_certificates(pem.encode())
    assert issuer == root
    leaf.verify_directly_issued_by(root)



async def test_an_imported_certificate_with_a_duplicated_extension_is_refused(env: CertsEnv) -> None:
    """Two extensions of one kind mean one thing to one parser and another to the next, and cryptography will not
    read such a certificate's extensions at all (used as an issuer later, it would fail deep in an issuance): the
    import refuses it with a 400, as a CSR with a duplicated extension is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dup-ext CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    der = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(ski, critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    aki_oid, ski_oid = bytes.fromhex("0603551d23"), bytes.fromhex("0603551d0e")
    assert der.count(aki_oid) == 1
    pem = x509.load_der_x509_certificate(der.replace(aki_oid, ski_oid)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(HttpError) as refused:
        await env.client.import_cert("dup-ext-ca", pem.decode())
    assert refused.value.status == 400 and "extension" in str(refused.value), str(refused.value)
    with pytest.raises(HttpError) as missing:
        await env.client.get_cert("dup-ext-ca")
    assert missing.value.status == 404


async def test_a_corrupt_stored_cert_read_again_and_again_logs_once(env: CertsEnv,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A caller that may read a cert id can ask for it in a loop: a corrupt file is one error line (and a summary),
    not a line per request."""
    path = env.service.store.path("corrupt-on-disk")
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    caplog.set_level("ERROR", logger="edgeward.certs.service")
    for _ in range(50):
        with pytest.raises(HttpError) as e:
            await env.client.get_cert("corrupt-on-disk")
        assert e.value.status == 404
    lines = [r for r in caplog.records if "corrupt-on-disk" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
