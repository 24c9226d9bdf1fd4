"""The TBSCertificate Edgeward writes itself is, byte for byte, the one cryptography's CertificateBuilder writes for the
same fields: every name, key type, serial, validity and extension set the issuers produce."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeward.certs.tbs import (
    EncodedExtension,
    EncodedName,
    TbsCertificate,
    extension_der,
    key_identifier,
    signature_algorithm,
    signed_certificate_der,
    spki_der,
    subject_key_identifier_der,
)

_SUBJECT_OIDS = [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                 NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME]  # UTF8String: any text


@functools.cache
def _key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


_ISSUER_KINDS = st.sampled_from(["p256", "p384", "rsa"])  # what x509sign signs with
_SUBJECT_KINDS = st.sampled_from(["p256", "p384", "rsa", "ed25519"])  # whatever a CSR may carry
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=64).filter(lambda t: len(t.encode()) <= 64)  # a CN is at most 64 bytes
_names = st.lists(st.tuples(st.sampled_from(_SUBJECT_OIDS), _text), min_size=1, max_size=4).map(
    lambda attrs: x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
_times = st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(9990, 12, 31),
                      timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]))
_lifetimes = st.timedeltas(min_value=dt.timedelta(seconds=1), max_value=dt.timedelta(days=3000))
_dns = st.from_regex(r"\A[a-z0-9*][a-z0-9.-]{0,60}\Z")
_general_names = st.lists(st.one_of(
    _dns.map(x509.DNSName),
    st.ip_addresses().map(x509.IPAddress),
    st.builds(lambda n: x509.IPAddress(ipaddress.ip_network(f"10.{n}.0.0/16")), st.integers(0, 255)),
), min_size=1, max_size=5, unique=True)
_usages = st.lists(st.sampled_from([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                   min_size=1, max_size=2, unique=True)


@st.composite
def _extensions(draw: st.DrawFn) -> list[tuple[x509.ExtensionType, bool]]:
    """The shapes issuance.py and policy.py produce, in any combination and order."""
    ca = draw(st.booleans())
    candidates: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=ca, path_length=draw(st.none() | st.integers(0, 300)) if ca else None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=draw(st.booleans()),
                       data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                       encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage(draw(_usages)), draw(st.booleans())),
        (x509.SubjectAlternativeName(draw(_general_names)), False),
        (x509.SubjectKeyIdentifier(draw(st.binary(min_size=20, max_size=20))), False),
        (x509.AuthorityKeyIdentifier(draw(st.binary(min_size=20, max_size=20)), None, None), False),
    ]
    return draw(st.permutations(candidates).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n])))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(issuer_kind=_ISSUER_KINDS, subject_kind=_SUBJECT_KINDS, issuer=_names, subject=_names,
       serial=st.integers(1, (1 << 159) - 1), not_before=_times, lifetime=_lifetimes,
       extensions=_extensions(), encoded=st.lists(st.booleans(), min_size=8, max_size=8))
def test_tbs_certificate_is_what_cryptography_writes(issuer_kind: str, subject_kind: str, issuer: x509.Name,
                                                     subject: x509.Name, serial: int, not_before: dt.datetime,
                                                     lifetime: dt.timedelta,
                                                     extensions: list[tuple[x509.ExtensionType, bool]],
                                                     encoded: list[bool]) -> None:
    """Whichever names and extensions are passed already encoded (as issuance passes the fixed ones)."""
    signer = _key(issuer_kind)
    not_after = not_before + lifetime
    subject_key = _key(subject_kind).public_key()
    builder = (x509.CertificateBuilder().issuer_name(issuer).subject_name(subject).public_key(subject_key)
               .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after))
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    expected = builder.sign(signer, hashes.SHA384() if issuer_kind == "p384" else hashes.SHA256())

    algorithm = signature_algorithm(signer.public_key())
    names: list[EncodedName] = [n.public_bytes() if pre else n for n, pre in zip((issuer, subject), encoded,
                                                                                 strict=False)]
    passed: list[EncodedExtension] = [extension_der(*e) if pre else e for e, pre in zip(extensions, encoded[2:],
                                                                                       strict=False)]
    tbs = TbsCertificate(serial, *names, not_before, not_after, spki_der(subject_key), passed).der(algorithm)

    assert tbs == expected.tbs_certificate_bytes
    assert signed_certificate_der(tbs, algorithm, expected.signature) == expected.public_bytes(
        serialization.Encoding.DER)


@settings(max_examples=50, deadline=None)
@given(kind=_SUBJECT_KINDS)
def test_key_identifier_is_cryptographys_subject_key_identifier(kind: str) -> None:
    public = _key(kind).public_key()
    assert key_identifier(spki_der(public)) == x509.SubjectKeyIdentifier.from_public_key(public).digest


@settings(max_examples=50, deadline=None)
@given(kind=_SUBJECT_KINDS)
def test_subject_key_identifier_der_is_the_extension_cryptography_writes(kind: str) -> None:
    public = _key(kind).public_key()
    assert subject_key_identifier_der(spki_der(public)) == extension_der(
        x509.SubjectKeyIdentifier.from_public_key(public), False)


def test_tbs_refuses_what_the_builder_refuses() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    spki = spki_der(_key("p256").public_key())
    now = dt.datetime.now(dt.UTC)
    algorithm = signature_algorithm(_key("p256").public_key())
    with pytest.raises(ValueError, match="serial"):
        TbsCertificate(0, name, name, now, now, spki, []).der(algorithm)
    with pytest.raises(ValueError, match="serial"):
        TbsCertificate(1 << 159, name, name, now, now, spki, []).der(algorithm)
    with pytest.raises(ValueError, match="1950"):
        TbsCertificate(1, name, name, dt.datetime(1949, 12, 31, 23, 59, 59), now, spki, []).der(algorithm)
