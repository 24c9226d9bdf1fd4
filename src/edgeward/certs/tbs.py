"""The DER of a TBSCertificate (RFC 5280 4.1), written here because cryptography's CertificateBuilder only writes a
certificate signed by an in-process key: getting the to-be-signed bytes from it took a throwaway-key ECDSA signature
and the builder's copies per issuance (about a third of a local-CA issuance's CPU). The bytes are exactly those the
builder writes for the same fields (a property test compares them), so certificates do not change.

Names, public keys and extension values are still encoded by cryptography (``public_bytes``); only the frame around
them (lengths, version, serial, validity, the signature AlgorithmIdentifier) is written here. What stays the same from
one issuance to the next (the issuer's name, the extensions a cert id's policy fixes, the issuer's key identifier)
can be passed already encoded, and a CSR's subject as the CSR carries it, so a local CA does not encode them again
for every certificate.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ..keys.model import PublicKey

__all__ = ["EncodedExtension", "EncodedName", "TbsCertificate", "der_elements", "element_length", "extension_der",
           "key_identifier",
           "signature_algorithm", "signed_certificate_der", "spki_der", "subject_key_identifier_der", "tlv"]

EncodedName = x509.Name | bytes  # bytes: the Name's DER
EncodedExtension = tuple[x509.ExtensionType, bool] | bytes  # (value, critical), or the whole Extension's DER

# AlgorithmIdentifier of the issuer's signature, as cryptography writes them: no parameters for ECDSA, NULL for RSA.
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
_VERSION_3 = bytes.fromhex("a003020102")
_CRITICAL = bytes.fromhex("0101ff")
_UTC_TIME_EARLIEST = 1950
_UTC_TIME_UNTIL = 2050  # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050
_SKI_OID = "2.5.29.14"


def signature_algorithm(issuer_public: PublicKey) -> bytes:
    """The AlgorithmIdentifier of what ``x509sign`` signs with the issuer's key: ECDSA with SHA-256 (P-256) or
    SHA-384 (P-384), RSA PKCS#1 v1.5 with SHA-256."""
    if isinstance(issuer_public, ec.EllipticCurvePublicKey):
        return _ECDSA_SHA384 if issuer_public.curve.name == "secp384r1" else _ECDSA_SHA256
    return _RSA_SHA256


@dataclass(frozen=True)
class TbsCertificate:
    """A v3 certificate's signed fields. Names are x509.Name, as the certificate will carry them, or their DER;
    times are UTC (naive ones are taken as UTC) and lose their fractions of a second, as with the builder; ``spki``
    is the subject's SubjectPublicKeyInfo DER (``spki_der``), which its key identifier is also taken from."""

    serial_number: int
    issuer: EncodedName
    subject: EncodedName
    not_valid_before: dt.datetime
    not_valid_after: dt.datetime
    spki: bytes
    extensions: Sequence[EncodedExtension]  # in order; DER from ``extension_der`` or ``subject_key_identifier_der``

    def der(self, algorithm: bytes) -> bytes:
        """The TBSCertificate signed by a key of ``algorithm`` (``signature_algorithm``)."""
        if not 0 < self.serial_number < 1 << 159:
            raise ValueError("a serial number is positive and at most 159 bits (RFC 5280 4.1.2.2)")
        parts = [_VERSION_3, _integer(self.serial_number), algorithm, _name(self.issuer),
                 _tlv(0x30, _time(self.not_valid_before) + _time(self.not_valid_after)),
                 _name(self.subject), self.spki]
        if self.extensions:
            encoded = b"".join(e if isinstance(e, bytes) else extension_der(*e) for e in self.extensions)
            parts.append(_tlv(0xA3, _tlv(0x30, encoded)))
        return _tlv(0x30, b"".join(parts))


def signed_certificate_der(tbs: bytes, algorithm: bytes, signature: bytes) -> bytes:
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }."""
    return _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))


def spki_der(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_identifier(spki: bytes) -> bytes:
    """RFC 5280 4.2.1.2 method 1 (SHA-1 of the subjectPublicKey bits), what SubjectKeyIdentifier.from_public_key
    gives, taken from the SubjectPublicKeyInfo DER."""
    at = _header_length(spki, 0)
    at += _header_length(spki, at) + _content_length(spki, at)  # past the AlgorithmIdentifier
    bits = spki[at + _header_length(spki, at) + 1:]  # the BIT STRING's content after its unused-bits octet
    return hashlib.sha1(bits, usedforsecurity=False).digest()


def extension_der(value: x509.ExtensionType, critical: bool) -> bytes:
    """Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }."""
    body = _oid(value.oid.dotted_string) + (_CRITICAL if critical else b"") + _tlv(0x04, value.public_bytes())
    return _tlv(0x30, body)


def subject_key_identifier_der(spki: bytes) -> bytes:
    """The non-critical subjectKeyIdentifier extension of the key ``spki``: what ``extension_der`` writes for
    ``x509.SubjectKeyIdentifier(key_identifier(spki))``, without building the object for every certificate."""
    return _tlv(0x30, _oid(_SKI_OID) + _tlv(0x04, _tlv(0x04, key_identifier(spki))))


def _name(name: EncodedName) -> bytes:
    return name if isinstance(name, bytes) else name.public_bytes()


@functools.cache
def _oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER's DER (the few OIDs of extensions: remembered)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        groups = [(arc >> shift) & 0x7F for shift in range(7 * ((arc.bit_length() - 1) // 7 if arc else 0), -1, -7)]
        out += bytes(0x80 | g for g in groups[:-1]) + bytes(groups[-1:])  # base 128, high bit on all but the last
    return _tlv(0x06, bytes(out))


def _integer(n: int) -> bytes:
    """A non-negative INTEGER (serial numbers are positive): big-endian, a leading zero when the top bit is set."""
    return _tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _time(when: dt.datetime) -> bytes:
    t = when.astimezone(dt.UTC) if when.tzinfo is not None else when
    if t.year < _UTC_TIME_EARLIEST:
        raise ValueError(f"{t} is before 1950, which X.509 validity cannot carry")  # as the builder refuses it
    digits = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if t.year < _UTC_TIME_UNTIL:
        return _tlv(0x17, f"{t.year % 100:02d}{digits}".encode())
    return _tlv(0x18, f"{t.year:04d}{digits}".encode())


def der_elements(der: bytes) -> list[bytes]:
    """The elements (whole, tag and length included) inside the constructed DER element ``der`` (a SEQUENCE):
    enough to take a structure cryptography wrote apart and put it back together with one element changed."""
    at = _header_length(der, 0)
    end = at + _content_length(der, 0)
    if end != len(der):
        raise ValueError("not one DER element")
    out = []
    while at < end:
        size = element_length(der, at)
        out.append(der[at:at + size])
        at += size
    if at != end:
        raise ValueError("DER element overruns its container")
    return out


def element_length(der: bytes, at: int = 0) -> int:
    """The whole length (tag, length octets, content) the DER element at ``at`` declares."""
    return _header_length(der, at) + _content_length(der, at)


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: ``tag`` (one octet), the definite length, ``content``."""
    return _tlv(tag, content)


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + content


def _header_length(der: bytes, at: int) -> int:
    """Tag plus length octets of the element at ``at`` (one-byte tags: all X.509 uses here)."""
    first = der[at + 1]
    return 2 if first < 0x80 else 2 + (first & 0x7F)


def _content_length(der: bytes, at: int) -> int:
    first = der[at + 1]
    if first < 0x80:
        return first
    return int.from_bytes(der[at + 2:at + 2 + (first & 0x7F)], "big")
