"""Fast tests of the certificates service's pure parts."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from edgeward.certs.dn import DnError, NameValueError, name_values, subject_fields
from edgeward.certs.policy import IssuancePolicy, PolicyRefused, name_under
from edgeward.certs.renewal import next_renewal
from edgeward.certs.settings import RenewPolicy, parse_renew_amount
from edgeward.certs.store import CertStore
from edgeward.config.problems import ConfigError


def test_threshold_and_jitter() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=100))
            .sign(key, hashes.SHA256()))
    rng = random.Random(1)
    dues = {next_renewal(cert, RenewPolicy(threshold=parse_renew_amount("80%")), rng) for _ in range(50)}
    assert all(start + dt.timedelta(days=75) <= d <= start + dt.timedelta(days=80) for d in dues)
    assert len(dues) == 50  # jitter spreads a fleet
    due = next_renewal(cert, RenewPolicy(threshold=parse_renew_amount("10day")), random.Random(2))
    assert start + dt.timedelta(days=85) <= due <= start + dt.timedelta(days=90)
    for bad in ("0%", "100%", "soon", "-5min"):
        with pytest.raises(ValueError):
            parse_renew_amount(bad)


async def test_store_file_names_are_safe_for_any_id(tmp_path: Path) -> None:
    store = CertStore(tmp_path)
    ids = ["../../etc/passwd", "a/b", "A", "a", "\u00e9t\u00e9", ".hidden", "x" * 300, "nul\x00byte"]
    paths = {store.path(i) for i in ids}
    assert len(paths) == len(ids)
    for p in paths:
        assert p.parent == store.dir and not p.name.startswith(".") and len(p.name) < 120
    await store.put("../../etc/passwd", b"pem")
    assert store.get("../../etc/passwd") == b"pem" and store.get("a") is None


def test_policy_settings_are_checked_with_their_key_path(tmp_path: Path) -> None:
    from edgeward.certs.settings import parse_certs_settings

    doc = {"cert_issuance": {
        "a": {"method": "local_ca", "kind": "root"},
        "b": {"method": "self_signed", "ip_addresses": ["10.0.0.300"]},
        "c": {"method": "self_signed", "kind": "server", "path_len": 1},
        "d": {"kind": "client", "auto_renew": {"threshold": "80%"}},
        "e": {"dns_names": [5]},
    }}
    with pytest.raises(ConfigError) as e:
        parse_certs_settings(doc, tmp_path, tmp_path)
    text = str(e.value)
    for fragment in ("cert_issuance.a.kind", "cert_issuance.b.ip_addresses", "cert_issuance.c.path_len",
                     "cert_issuance.d.auto_renew", "cert_issuance.e.dns_names"):
        assert fragment in text, text


def test_policy_names_match_globs_case_insensitively_and_wildcards_only_literally() -> None:
    policy = IssuancePolicy("x", "server", dns_names=("*.Example.com", "exact.test"))
    assert policy.permits(x509.DNSName("a.b.example.COM"))
    assert policy.permits(x509.DNSName("*.example.com"))  # that very wildcard is configured
    assert not policy.permits(x509.DNSName("*.test"))
    assert not policy.permits(x509.DNSName("example.com"))
    assert not policy.permits(x509.DNSName("exact.test.evil"))
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.test")]), critical=False)
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with pytest.raises(PolicyRefused):
        policy.grant(csr)


def test_renewal_asks_only_for_what_the_policy_still_allows() -> None:
    """A narrowed policy must not make renewal fail forever: names and usages no longer allowed are dropped, a CA
    asks for its CA extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.mod.example"), x509.DNSName("gone.example")]),
                          critical=False)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    asked = dict((type(v), v) for v, _ in IssuancePolicy("m", "client", ("*.mod.example",)).renewal_request(old))
    assert list(asked[x509.SubjectAlternativeName]) == [x509.DNSName("a.mod.example")]
    assert list(asked[x509.ExtendedKeyUsage]) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = IssuancePolicy("c", "ca").renewal_request(None)
    assert [(type(v), c) for v, c in ca] == [(x509.BasicConstraints, True), (x509.KeyUsage, True)]
    assert IssuancePolicy("c", "ca").renewal_request(None)[0][0] == x509.BasicConstraints(ca=True, path_length=0)


def test_csr_with_a_duplicate_extension_is_a_400_not_a_500() -> None:
    """Two basicConstraints could mean CA:FALSE to one parser and CA:TRUE to the next: refused before any policy."""
    from asn1crypto import core as asn1_core
    from asn1crypto import csr as asn1_csr
    from cryptography.hazmat.primitives import serialization

    from edgeward.certs.errors import InvalidCsr
    from edgeward.certs.issuance import parse_csr

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    draft = asn1_csr.CertificationRequest.load(builder.sign(key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER))
    info = draft["certification_request_info"].copy()
    extensions = info["attributes"][0]["values"][0]
    extensions.append(extensions[0].copy())
    signature = key.sign(info.dump(force=True), ec.ECDSA(hashes.SHA256()))
    der = asn1_csr.CertificationRequest({"certification_request_info": info,
                                         "signature_algorithm": draft["signature_algorithm"],
                                         "signature": asn1_core.OctetBitString(signature)}).dump(force=True)
    with pytest.raises(InvalidCsr, match=r"csr extensions are not valid: Duplicate 2\.5\.29\.19"):
        parse_csr(der)


@pytest.mark.parametrize("kind", ["ca", "server", "client", "identity"])
def test_policy_extensions_der_are_its_extensions_encoded(kind: str) -> None:
    """The encodings issuance remembers per kind are those of the extensions the policy decides, names included."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgeward.certs.policy import Grant
    from edgeward.certs.tbs import extension_der

    policy = IssuancePolicy("c", kind, dns_names=("*.local",), path_len=2 if kind == "ca" else 0)
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key(),
            rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()]
    grants = [Grant(), Grant((x509.DNSName("a.local"),), (ExtendedKeyUsageOID.SERVER_AUTH,)),
              Grant((), (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH))]
    for public in keys:
        for grant in grants:
            for _ in range(2):  # the second time from what was remembered
                assert policy.extensions_der(public, grant) == [
                    extension_der(value, critical) for value, critical in policy.extensions(public, grant)]


def test_a_csr_is_read_as_pem_der_or_base64_of_either_and_anything_else_is_a_400() -> None:
    import base64

    from cryptography.hazmat.primitives import serialization

    from edgeward.certs.errors import InvalidCsr
    from edgeward.certs.issuance import parse_csr

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(key, hashes.SHA256()))
    pem, der = csr.public_bytes(serialization.Encoding.PEM), csr.public_bytes(serialization.Encoding.DER)
    for form in (pem, der, base64.b64encode(pem), base64.b64encode(der), b"text before it\n" + pem):
        assert parse_csr(form) == csr
    for junk in (b"", b"garbage", b"0" * 40, base64.b64encode(b"0" * 40), b"-----BEGIN nothing", der[:-1]):
        with pytest.raises(InvalidCsr, match="not a PKCS#10"):
            parse_csr(junk)


DOMAIN = "edgeward.local"
LOCAL_ID = "agent.edge1.edgeward.local"
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


@given(st.text(max_size=20), st.characters(exclude_categories=("Cs",)).filter(lambda c: c.lower() not in _HOST_CHARS),
       st.text(max_size=20))
def test_a_name_under_the_domain_is_found_whatever_surrounds_it_past_a_separator(
        before: str, separator: str, after: str) -> None:
    """Any character that is not a host name's ends a name, as NUL ends a C string (one that NFKC maps to host name
    characters, a non-ASCII letter, a format character too, for a reader that does not map): what comes before or
    after it cannot hide the local identity's name."""
    assert name_under(before + separator + LOCAL_ID + separator + after, DOMAIN) is not None
    assert name_under(before + separator + LOCAL_ID.upper() + "." + separator + after, DOMAIN) is not None


def test_name_under_reads_names_as_unicode_aware_and_lax_readers_do() -> None:
    for text in (LOCAL_ID, "EDGEWARD.LOCAL.", "a@" + LOCAL_ID, f"https://{LOCAL_ID}:443/x",
                 LOCAL_ID.replace(".local", "\uff0elocal"), LOCAL_ID.replace(".local", "\u3002local"),
                 LOCAL_ID.replace(".local", "\uff61local"), LOCAL_ID.replace("local", "\uff4c\uff4f\uff43al"),
                 LOCAL_ID.replace("local", "lo\u00adcal"), LOCAL_ID.replace("local", "lo\u200dcal"),
                 LOCAL_ID.upper().replace("LOCAL", "\uff2c\uff2f\uff23\uff21\uff2c"), LOCAL_ID + "\u3382",
                 "x.xn--edgeward-.local"):
        assert name_under(text, DOMAIN) is not None, text
    assert name_under("a.xn--bcher-kva.example", "bücher.example") == "a.bücher.example"
    assert name_under("a.bücher.example", "xn--bcher-kva.example") is not None
    for text in ("edgeward.local.example.com", "xedgeward.local", "edgeward-local", "Zürich Lab", "東京 工場",
                 "free-1.example", ""):
        assert name_under(text, DOMAIN) is None, text


def test_subject_values_are_read_from_the_der_with_their_bytes_and_non_strings_refused() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.USER_ID, "b"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "汯捡", _type=x509.name._ASN1Type.BMPString)])
    values = name_values(name.public_bytes())
    assert [(v.field, v.text, v.raw) for v in values] == [("CN", "a", b"a"), ("UID", "b", b"b"),
                                                          ("CN", "汯捡", b"loca")]
    integer_cn = bytes.fromhex("300c310a300806035504030201ff")
    with pytest.raises(NameValueError, match="subject CN: not a directory string"):
        name_values(integer_cn)
    with pytest.raises(NameValueError, match="malformed"):
        name_values(integer_cn[:-1])
    with pytest.raises(DnError, match="no control characters"):  # a configured subject = { ... } likewise
        subject_fields({"CN": "edge\x00x"})
