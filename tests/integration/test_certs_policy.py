"""Issuance by policy, attacked over certd's real socket by a local user whose principal only allows ``mod-*``
cert ids: a CSR asking for a CA certificate, for keyCertSign or for names its cert id may not carry is refused with
a 400 naming the extension; the leaf it can get is CA:FALSE, so nothing it signs chains to the local CA (checked with
``cryptography.x509.verification``); an EST-bound CSR is checked against the same policy before it is sent."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from edgeward.certs.service import log as certs_log
from edgeward.certs.tbs import tlv
from edgeward.certs.x509sign import handle_public_key, sign_csr
from edgeward.http.errors import HttpError
from edgeward.repeat_log import RepeatLog
from edgeward.runtime.edge_ca import EDGE_CA_CERT_ID, EDGE_CA_KEY_ID, EdgeCa
from edgeward.testing.est_server import EstServer
from tests.fixtures.certs import CertsEnv, serve_certs
from tests.fixtures.peers import as_uid_async

pytestmark = pytest.mark.asyncio(loop_scope="session")

MOD_UID = 3411  # a local user whose certd principal allows only mod-* cert ids
Q = "?api-version=2020-09-01"
CONFIG: dict[str, Any] = {
    "cert_issuance": {
        "local_ca": {"cert": "local-ca", "pk": "local-ca", "common_name": "Policy Test CA", "expiry_days": 2},
        "mod-*": {"method": "local_ca", "expiry_days": 1, "dns_names": ["*.mod.example"],
                  "common_names": ["mod-*", "m"]},
        "sub-ca": {"method": "local_ca", "expiry_days": 1, "ca": True},
        "web": {"method": "local_ca", "kind": "server", "dns_names": ["web.example"],
                "ip_addresses": ["10.1.0.0/16"]},
        "local-id-*": {"method": "local_ca", "expiry_days": 1},
        "aziot-edged-ca": {"method": "self_signed", "expiry_days": 1},  # a CA by default, as aziot-edged asks
        "free-*": {"method": "local_ca", "expiry_days": 1},  # no common_names: any CN, but not a local identity's
        "dn-*": {"method": "local_ca", "expiry_days": 1, "subject": {"CN": "dn", "OU": "a.edge1.EDGEWARD.local "}},
    },
    "localid": {"domain_name": "edgeward.local"},
    "principal": [{"uid": MOD_UID, "certs": ["mod-*", "free-*", "dn-*", "local-id-m"]}],
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[CertsEnv]:
    base = Path(tempfile.mkdtemp(prefix="edgeward-certs-policy-"))
    base.chmod(0o755)  # the other uid reaches the socket below it (pytest's temp dirs are 0700)
    try:
        async with serve_certs("software", request, base, CONFIG) as certs_env:
            certs_env.socket.parent.chmod(0o755)
            yield certs_env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def attack_csr(key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName] | None = None) -> str:
    """What an attacker wants: a CA certificate with keyCertSign and names of its choosing."""
    names = names or [x509.DNSName("agent.edge.local"), x509.DNSName("*.example.com")]
    return (x509.CertificateSigningRequestBuilder().subject_name(_name("agent.edge.local"))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def plain_csr(key: ec.EllipticCurvePrivateKey, cn: str, *extensions: x509.ExtensionType) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
    for value in extensions:
        builder = builder.add_extension(value, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def as_module(env: CertsEnv, cert_id: str, csr: str) -> tuple[int, dict[str, Any]]:
    """POST /certificates as the mod-* principal, the CSR as base64 of its PEM (what aziot's clients send)."""
    body = {"certId": cert_id, "csr": base64.b64encode(csr.encode()).decode()}
    return await as_uid_async(MOD_UID, env.socket, "POST", f"/certificates{Q}", body)


def _verify_client(root: x509.Certificate, leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
    verifier = PolicyBuilder().store(Store([root])).time(dt.datetime.now(dt.UTC)).build_client_verifier()
    verifier.verify(leaf, intermediates)


def _forge(issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A local identity's client certificate, as the holder of ``issuer_key`` would mint it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name("agent.edge.local")).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("agent.edge.local")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))


async def test_mod_principal_asking_certd_for_a_ca_certificate_gets_400_naming_basic_constraints(
        env: CertsEnv) -> None:
    status, body = await as_module(env, "mod-x", attack_csr(ec.generate_private_key(ec.SECP256R1())))
    assert status == 400, body
    assert body["message"] == ("basicConstraints CA:TRUE is not allowed for cert id mod-x: it is not configured "
                               "as a CA")
    status, _ = await as_uid_async(MOD_UID, env.socket, "GET", f"/certificates/mod-x{Q}")
    assert status == 400  # nothing was issued or stored (aziot-certd's "id not found" is a 400)


async def test_mod_principal_asking_for_key_cert_sign_or_foreign_names_gets_400_naming_the_extension(
        env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_sign = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                              encipher_only=False, decipher_only=False)
    cases = [
        (plain_csr(key, "m", cert_sign), "keyUsage keyCertSign is not allowed for cert id mod-y: it is not "
                                         "configured as a CA"),
        (plain_csr(key, "m", x509.SubjectAlternativeName([x509.DNSName("edgehub.example")])),
         "subjectAltName DNS:edgehub.example is not allowed for cert id mod-y: its dns_names allow *.mod.example"),
        (plain_csr(key, "m", x509.SubjectAlternativeName([x509.DNSName("*.x.mod.example")])),  # wildcards: literal
         "subjectAltName DNS:*.x.mod.example is not allowed for cert id mod-y"),
        (plain_csr(key, "m", x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])),
         "subjectAltName IP:10.1.2.3 is not allowed for cert id mod-y: its ip_addresses allow none"),
        (plain_csr(key, "m", x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://x/y")])),
         "subjectAltName UniformResourceIdentifier is not allowed for cert id mod-y: only DNS names and IP "
         "addresses can be configured"),
        (plain_csr(key, "m", x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])),
         "extendedKeyUsage serverAuth is not allowed for cert id mod-y: its kind is client (clientAuth)"),
        (plain_csr(key, "m", x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])),
         "extendedKeyUsage codeSigning is not allowed for cert id mod-y"),
        (plain_csr(key, "agent.edge.local"),  # a local identity's CN, from the CA that issues local identities
         "subject CN=agent.edge.local is not allowed for cert id mod-y: its common_names allow mod-*, m"),
    ]
    for csr, message in cases:
        status, body = await as_module(env, "mod-y", csr)
        assert status == 400 and body["message"].startswith(message), (message, body)


async def test_leaf_issued_to_a_mod_principal_cannot_sign_anything_that_chains_to_the_local_ca(
        env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = plain_csr(key, "mod-z", x509.SubjectAlternativeName([x509.DNSName("a.mod.example")]),
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]))
    status, body = await as_module(env, "mod-z", csr)
    assert status == 201, body
    leaf, ca = x509.load_pem_x509_certificates(body["pem"].encode())
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and not basic.value.ca and basic.value.path_length is None
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["a.mod.example"]
    _verify_client(ca, leaf, [])  # the leaf itself is a good client certificate

    forged = _forge(leaf, key)
    forged.verify_directly_issued_by(leaf)  # signed by the leaf's key: only the chain rules can refuse it
    with pytest.raises(VerificationError):
        _verify_client(ca, forged, [leaf])


async def test_cert_id_configured_as_a_ca_gets_a_ca_that_issues_leaves_only(env: CertsEnv) -> None:
    """The control: the same verifier accepts a chain through a cert id configured with ``ca = true``, whose
    pathLen 0 (the default) stops a CA below it."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await env.client.create_cert("sub-ca", plain_csr(key, "Sub CA").encode())
    sub, ca = x509.load_pem_x509_certificates(pem.encode())
    basic = sub.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    assert sub.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    _verify_client(ca, _forge(sub, key), [sub])
    # the mod principal may not name the CA's id either
    status, body = await as_module(env, "sub-ca", attack_csr(key))
    assert status == 401, body


async def test_caller_named_issuer_must_be_a_ca(env: CertsEnv) -> None:
    """aziot's ``issuer`` form: a leaf whose key the caller holds in keyd is no issuer."""
    handle = await env.keys.create_key_pair_if_not_exists("policy-leaf", "ec-p256")
    public = await handle_public_key(env.keys, handle)
    csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(_name("leaf")), env.keys, handle,
                         public)
    await env.client.create_cert("local-id-leaf", csr.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(HttpError) as e:
        await env.client.create_cert("web", plain_csr(ec.generate_private_key(ec.SECP256R1()), "w").encode(),
                                     ("local-id-leaf", handle))
    assert e.value.status == 400 and e.value.message == (
        "issuer cert 'local-id-leaf' is not a CA certificate (basicConstraints CA:TRUE)")


async def test_server_cert_ids_carry_configured_names_and_server_auth_only(env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("web.example"), x509.IPAddress(ipaddress.ip_address("10.1.9.9"))]
    pem = await env.client.create_cert("web", plain_csr(key, "web", x509.SubjectAlternativeName(names)).encode())
    leaf, ca = x509.load_pem_x509_certificates(pem.encode())
    assert list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == names
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("web.example"))
    verifier.verify(leaf, [])
    with pytest.raises(HttpError) as e:
        await env.client.create_cert("web", plain_csr(key, "web", x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("10.2.0.1"))])).encode())
    assert e.value.status == 400 and e.value.message == (
        "subjectAltName IP:10.2.0.1 is not allowed for cert id web: its ip_addresses allow 10.1.0.0/16")


async def test_local_identities_are_client_certs_or_server_certs_on_request_never_cas(env: CertsEnv) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await env.client.create_cert("local-id-agent", plain_csr(key, "agent.edge.local").encode())
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    server = plain_csr(key, "agent.edge.local", x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]))
    leaf = x509.load_pem_x509_certificates((await env.client.create_cert("local-id-agent", server.encode()))
                                           .encode())[0]
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(HttpError) as e:
        await env.client.create_cert("local-id-agent", attack_csr(key).encode())
    assert e.value.status == 400 and "basicConstraints CA:TRUE is not allowed for cert id local-id-agent" in (
        e.value.message)


async def test_est_bound_csr_outside_the_policy_is_refused_before_anything_is_sent(
        est_server: EstServer, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(est_server.ca_pem)
    doc = {"cert_issuance": {
        "est": {"trusted_certs": ["est-server-ca"], "urls": {"default": est_server.base_url},
                "auth": {"username": est_server.username, "password": est_server.password}},
        "mod-est": {"method": "est"},
    }, "preloaded_certs": {"est-server-ca": f"file://{tmp_path / 'ca.pem'}"}}
    async with serve_certs("software", request, tmp_path, doc) as certs_env:
        before = dict(est_server.hits)
        with pytest.raises(HttpError) as e:
            await certs_env.client.create_cert("mod-est", attack_csr(ec.generate_private_key(ec.SECP256R1()))
                                               .encode())
        assert e.value.status == 400 and e.value.message == (
            "basicConstraints CA:TRUE is not allowed for cert id mod-est: it is not configured as a CA")
        assert dict(est_server.hits) == before  # the EST server never saw it
        pem = await certs_env.client.create_cert("mod-est", plain_csr(ec.generate_private_key(ec.SECP256R1()),
                                                                      "m").encode())
        assert not x509.load_pem_x509_certificates(pem.encode())[0].extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca


async def test_edge_ca_is_a_ca_and_its_workload_leaves_follow_the_leaf_rules(env: CertsEnv) -> None:
    """aziot-edged's edge CA CSR (CA:TRUE, keyCertSign) is honoured for its well-known id; the server and identity
    certs the workload API mints in-process from it are CA:FALSE leaves with the usage of their kind."""
    handle = await env.keys.create_key_pair_if_not_exists(EDGE_CA_KEY_ID, "ec-p256")
    public = await handle_public_key(env.keys, handle)
    ca_request = (x509.CertificateSigningRequestBuilder().subject_name(_name("Edge CA"))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                  .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                               key_encipherment=False, data_encipherment=False, key_agreement=False,
                                               key_cert_sign=True, crl_sign=False, encipher_only=False,
                                               decipher_only=False), critical=True))
    csr = await sign_csr(ca_request, env.keys, handle, public)
    (edge_ca,) = x509.load_pem_x509_certificates(
        (await env.client.create_cert(EDGE_CA_CERT_ID, csr.public_bytes(serialization.Encoding.PEM))).encode())
    basic = edge_ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0

    edge = EdgeCa(env.keys, env.client)
    server = await edge.issue("edgehub", server=True, dns_names=("edgehub.local", "10.0.0.7"))
    identity = await edge.issue("mod-a", server=False)
    for issued, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (identity, ExtendedKeyUsageOID.CLIENT_AUTH)):
        leaf, ca = x509.load_pem_x509_certificates(issued.certificate_pem.encode())
        assert ca == edge_ca
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert basic.critical and not basic.value.ca
        key_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert key_usage.critical and key_usage.value.digital_signature and not key_usage.value.key_cert_sign
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    leaf = x509.load_pem_x509_certificates(server.certificate_pem.encode())[0]
    assert list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.DNSName("edgehub.local"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))]
    PolicyBuilder().store(Store([edge_ca])).build_server_verifier(x509.DNSName("edgehub.local")).verify(leaf, [])
    leaf = x509.load_pem_x509_certificates(identity.certificate_pem.encode())[0]
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


async def test_no_cert_id_but_local_identities_carries_a_name_under_the_local_identity_domain(env: CertsEnv) -> None:
    """Local identities are recognised by name (<module>.<hostname>.<domain>) and issued by the local CA: a principal
    allowed another cert id of the same CA must not get a client cert with such a name, as CN or as a SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    for csr in (plain_csr(key, "agent.edge1.edgeward.local"), plain_csr(key, "EDGEWARD.LOCAL.")):
        status, body = await as_module(env, "free-1", csr)
        assert status == 400 and "belong to local identities" in body["message"], body
    status, body = await as_module(env, "free-1", plain_csr(key, "free-1.example"))
    assert status == 201, body


LOCAL_ID = "agent.edge1.edgeward.local"  # a local identity's name (<module>.<hostname>.<domain>)


def _attrs_csr(key: ec.EllipticCurvePrivateKey, attrs: list[tuple[x509.ObjectIdentifier, str]],
               *extensions: x509.ExtensionType) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in attrs]))
    for value in extensions:
        builder = builder.add_extension(value, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _encoded_cn_csr(key: ec.EllipticCurvePrivateKey, tag: int, content: bytes) -> str:
    """A CSR whose CN is ``content`` under the ASN.1 ``tag`` as written (cryptography's builder re-encodes)."""
    subject = tlv(0x30, tlv(0x31, tlv(0x30, bytes.fromhex("0603550403") + tlv(tag, content))))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    info = tlv(0x30, bytes.fromhex("020100") + subject + spki + bytes.fromhex("a000"))
    signature = key.sign(info, ec.ECDSA(hashes.SHA256()))
    der = tlv(0x30, info + bytes.fromhex("300a06082a8648ce3d040302") + tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()


async def test_a_local_identity_name_cannot_be_smuggled_into_another_cert_id(env: CertsEnv) -> None:
    """The name of a local identity spelled so a lower()/rstrip(".") comparison of the CN misses it but a verifier
    reads it (h/brk12a c01): a C verifier's X509_NAME_get_text_by_NID stops at a NUL, and copies a BMPString's
    bytes as they are; trailing blanks are trimmed by many; UTS-46 maps the ideographic and fullwidth full stops to
    "." and drops the soft hyphen; OU, UID, emailAddress and serialNumber are read as names too. Each is a 400."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn, ou, uid, email, serial = (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.USER_ID,
                                  NameOID.EMAIL_ADDRESS, NameOID.SERIAL_NUMBER)
    cases = {
        "NUL": _attrs_csr(key, [(cn, LOCAL_ID + "\x00.free.example")]),
        "trailing space": _attrs_csr(key, [(cn, LOCAL_ID + " ")]),
        "trailing tab": _attrs_csr(key, [(cn, LOCAL_ID + "\t")]),
        "leading space": _attrs_csr(key, [(cn, " " + LOCAL_ID)]),
        "fullwidth full stop": _attrs_csr(key, [(cn, LOCAL_ID.replace(".local", "\uff0elocal"))]),
        "ideographic full stop": _attrs_csr(key, [(cn, LOCAL_ID.replace(".local", "\u3002local"))]),
        "fullwidth letters": _attrs_csr(key, [(cn, LOCAL_ID.replace("local", "\uff4c\uff4f\uff43al"))]),
        "soft hyphen": _attrs_csr(key, [(cn, LOCAL_ID.replace("local", "lo\u00adcal"))]),
        "OU": _attrs_csr(key, [(cn, "free-ok"), (ou, LOCAL_ID)]),
        "UID": _attrs_csr(key, [(cn, "free-ok"), (uid, LOCAL_ID.upper())]),
        "emailAddress": _attrs_csr(key, [(cn, "free-ok"), (email, "a@" + LOCAL_ID)]),
        "serialNumber": _attrs_csr(key, [(cn, "free-ok"), (serial, LOCAL_ID)]),
        "second CN": _attrs_csr(key, [(cn, "free-ok"), (cn, LOCAL_ID)]),
        "URL in O": _attrs_csr(key, [(cn, "free-ok"), (NameOID.ORGANIZATION_NAME, f"https://{LOCAL_ID}/x")]),
        # UTF-16 code units whose bytes spell the name: cryptography decodes CJK, C reads the name
        "BMPString bytes": _encoded_cn_csr(key, 0x1E, LOCAL_ID.encode()),
        "T61String": _encoded_cn_csr(key, 0x14, LOCAL_ID.encode()),
        "OCTET STRING": _encoded_cn_csr(key, 0x04, LOCAL_ID.encode()),
    }
    for label, csr in cases.items():
        status, body = await as_module(env, "free-2", csr)
        assert status == 400, (label, body)
        assert "belong to local identities" in body["message"] or "not allowed for cert id free-2" in body[
            "message"], (label, body)
    status, body = await as_module(env, "free-2", cases["BMPString bytes"])
    assert "(subject CN, as its bytes read) is not allowed for cert id free-2" in body["message"], body
    # a DNS name a glob allows, with a NUL before the allowed suffix (the null-prefix trick on a SAN)
    san = x509.SubjectAlternativeName([x509.DNSName(LOCAL_ID + "\x00.mod.example")])
    status, body = await as_module(env, "mod-n", _attrs_csr(key, [(cn, "mod-n")], san))
    assert status == 400 and "is not allowed for cert id mod-n" in body["message"], body
    # a configured subject (dn-*: OU "a.edge1.EDGEWARD.local ") is what the certificate carries: refused as well
    status, body = await as_module(env, "dn-1", plain_csr(key, "dn-1"))
    assert status == 400 and "belong to local identities" in body["message"], body


async def test_names_that_merely_mention_the_local_identity_domain_or_are_local_identities_are_issued(
        env: CertsEnv) -> None:
    """What the check leaves alone: names outside the domain (one that only starts like it, a longer label, the
    domain followed by more labels), ordinary non-ASCII text, and local-id-* ids themselves."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn, org = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME
    for attrs in ([(cn, "free-3.example"), (org, "Contoso Plant Ops")],
                  [(cn, "edgeward.local.example.com")], [(cn, "free-3.xedgeward.local")],
                  [(cn, "Zürich Lab"), (org, "東京 工場")]):
        status, body = await as_module(env, "free-3", _attrs_csr(key, attrs))
        assert status == 201, (attrs, body)
    status, body = await as_module(env, "local-id-m", plain_csr(key, "m.edge1.edgeward.local"))
    assert status == 201, body


async def test_subjects_with_control_characters_are_refused_for_every_cert_id(env: CertsEnv) -> None:
    """aziot-certd copies a CSR's subject as it is; no aziot client asks for a control character in one, and a NUL
    or newline makes a name mean one thing to a C verifier or a log reader and another to Edgeward."""
    key = ec.generate_private_key(ec.SECP256R1())
    for value in ("mod-1\x00admin", "mod-1\nadmin", "mod-1\x7f", "mod-1\x85"):
        status, body = await as_module(env, "free-4", _attrs_csr(key, [(NameOID.COMMON_NAME, value)]))
        assert status == 400 and body["message"].startswith("subject CN with a control character is not allowed "
                                                             "for cert id free-4"), (value, body)
    status, body = await as_module(env, "free-4", _encoded_cn_csr(key, 0x02, b"\x01"))  # not a string at all
    assert status == 400 and "subject CN" in body["message"], body


async def test_a_principal_reissuing_certs_in_a_loop_cannot_push_the_log_past_a_bounded_rate(
        env: CertsEnv, caplog: pytest.LogCaptureFixture) -> None:
    """h/brk12a r04: re-issuing its own certs made certd write an INFO line each, ~300 a second. Now the first line
    of a cert id an interval is at INFO, within a budget over all cert ids (a caller inventing ids gets no more),
    the rest at DEBUG; one summary at the interval's end says how many, for which ids."""
    env.service.issued_log = RepeatLog(certs_log, "issued cert", budget=5)  # the default budget is 60
    await env.service.local_ca()  # created before, so its line is not counted here
    caplog.set_level(logging.DEBUG, logger="edgeward.certs")
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(30):
        status, body = await as_module(env, "free-log", plain_csr(key, "free-log"))
        assert status == 201, body
    for i in range(12):
        await env.client.create_cert(f"free-log{i}", plain_csr(key, f"free-log{i}").encode())
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(info) == 5 and info[0].startswith(f"issued cert 'free-log' for uid {MOD_UID}, valid until "), info
    assert sum(r.getMessage().startswith("issued cert") for r in caplog.records) == 42  # the rest at DEBUG
    env.service.issued_log.flush()  # the interval's end
    summary = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO][5:]
    assert len(summary) == 1 and summary[0].startswith("37 more 'issued cert' lines in the last"), summary
    assert "'free-log' 29" in summary[0] and "and 4 more keys" in summary[0], summary


async def test_a_subject_too_large_to_be_a_name_is_refused_before_its_names_are_read(env: CertsEnv) -> None:
    """Attack (session-13 review, brk13a a06): CSRs just under the body limit whose subject is 8 OU attributes of
    non-ASCII text split by dots and xn-- labels cost ~230 ms each of the local-identity name check, on the event
    loop, stalling every service; they were issued. A subject is bounded (attributes, characters each and in all,
    far above any name a device asks for) and refused with a 400 that says which bound."""
    key = ec.generate_private_key(ec.SECP256R1())
    ou, cn = NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME
    text = "é.xn--a" * 1000
    status, body = await as_module(env, "free-5", _attrs_csr(key, [(ou, text)] * 3))
    assert status == 400 and "subject OU of 7000 characters" in body["message"], body
    status, body = await as_module(env, "free-5", _attrs_csr(key, [(ou, "é.xn--a" * 30)] * 8))
    assert status == 400 and "a subject of 1680 characters" in body["message"], body
    status, body = await as_module(env, "free-5", _attrs_csr(key, [(cn, "free-5")] + [(ou, "team")] * 16))
    assert status == 400 and "a subject of 17 attributes" in body["message"], body
    # what devices ask for passes: a module id as long as IoT Hub allows (128) and a full DN
    full = [(cn, "m" * 128), (ou, "é" * 64), (NameOID.ORGANIZATION_NAME, "Contoso Plant Operations"),
            (NameOID.LOCALITY_NAME, "Zürich"), (NameOID.STATE_OR_PROVINCE_NAME, "ZH"), (NameOID.COUNTRY_NAME, "CH")]
    status, body = await as_module(env, "free-5", _attrs_csr(key, full))
    assert status == 201, body
