"""Certificates and CSRs signed by a key that never leaves the keys service.

`cryptography` signs only with in-process keys, so a certificate's to-be-signed part is written by ``tbs`` and signed
through the keys API. A CSR is built with a throwaway key of the same algorithm (which yields the same
AlgorithmIdentifier), its public key replaced in the DER cryptography wrote, then signed through the keys API and
reassembled (three DER elements: no ASN.1 library is loaded for it).
ECDSA keys sign SHA-256 (P-256) or SHA-384 (P-384) digests; RSA keys sign PKCS#1 v1.5 SHA-256 through aziot's
RSA-PKCS1 private "encrypt", exactly as aziot's OpenSSL engine does.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..keys.api import KeysApi
from ..keys.model import EcdsaDigest, PublicKey, RsaPkcs1
from .tbs import TbsCertificate, der_elements, signature_algorithm, signed_certificate_der, spki_der, tlv

__all__ = ["IssuerKeyMismatch", "handle_public_key", "same_public_key", "sign_certificate", "sign_csr"]

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


@functools.cache
def _ecdsa(curve: str) -> ec.ECDSA:
    """Made once, not for every certificate checked, and not at import: making one imports cryptography's OpenSSL
    backend (its cffi binding table, ~0.3 MB), which a daemon that has not signed anything yet does not need."""
    return ec.ECDSA(hashes.SHA384() if curve == "secp384r1" else hashes.SHA256())


@functools.cache
def _throwaway(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "secp256r1":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "secp384r1":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - never used to sign anything kept; only its AlgorithmIdentifier


def _scheme(public: PublicKey) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, hashes.SHA256 | hashes.SHA384]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name == "secp384r1":
            return _throwaway("secp384r1"), hashes.SHA384()
        return _throwaway("secp256r1"), hashes.SHA256()
    return _throwaway("rsa"), hashes.SHA256()


def same_public_key(a: object, b: object) -> bool:
    """Whether two cryptography public keys are the same key (compared by SubjectPublicKeyInfo)."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not (hasattr(a, "public_bytes") and hasattr(b, "public_bytes")):
        return False
    return bool(a.public_bytes(*fmt) == b.public_bytes(*fmt))


async def handle_public_key(keys: KeysApi, handle: str) -> PublicKey:
    """The public key behind a key handle, rebuilt from the keys API's public parameters."""
    algorithm = await keys.get_key_pair_public_parameter(handle, "algorithm")
    if algorithm == "ECDSA":
        oid = base64.b64decode(await keys.get_key_pair_public_parameter(handle, "ec-curve-oid"))
        curve: ec.EllipticCurve = ec.SECP384R1() if oid == bytes.fromhex("06052b81040022") else ec.SECP256R1()
        point = base64.b64decode(await keys.get_key_pair_public_parameter(handle, "ec-point"))
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    n = int.from_bytes(base64.b64decode(await keys.get_key_pair_public_parameter(handle, "rsa-modulus")), "big")
    e = int.from_bytes(base64.b64decode(await keys.get_key_pair_public_parameter(handle, "rsa-exponent")), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


async def _sign_bytes(keys: KeysApi, handle: str, public: PublicKey, tbs: bytes) -> bytes:
    if isinstance(public, ec.EllipticCurvePublicKey):
        h = hashlib.sha384 if public.curve.name == "secp384r1" else hashlib.sha256
        return await keys.sign(handle, EcdsaDigest(h(tbs).digest()))
    return await keys.encrypt(handle, RsaPkcs1(), _SHA256_DIGEST_INFO + hashlib.sha256(tbs).digest())


class IssuerKeyMismatch(ValueError):
    """The issuer key's signature does not verify against the public key the certificate names as its issuer."""


def _verify(public: PublicKey, signature: bytes, tbs: bytes) -> None:
    """Never hand out a certificate the issuer key did not really sign (a misbehaving HSM, a swapped key)."""
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, tbs, _ecdsa(public.curve.name))
        else:
            public.verify(signature, tbs, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise IssuerKeyMismatch("the issuer key's signature does not verify against the issuer's public key") from None


async def sign_certificate(tbs: TbsCertificate, keys: KeysApi, issuer_handle: str,
                           issuer_public: PublicKey) -> x509.Certificate:
    algorithm = signature_algorithm(issuer_public)
    tbs_der = tbs.der(algorithm)
    signature = await _sign_bytes(keys, issuer_handle, issuer_public, tbs_der)
    _verify(issuer_public, signature, tbs_der)
    return x509.load_der_x509_certificate(signed_certificate_der(tbs_der, algorithm, signature))


async def sign_csr(builder: x509.CertificateSigningRequestBuilder, keys: KeysApi, handle: str,
                   public: PublicKey) -> x509.CertificateSigningRequest:
    """A CSR for the key behind ``handle``: the throwaway key's public key is replaced before signing."""
    throwaway, digest = _scheme(public)
    # CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING }
    # CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, attributes [0] }
    info_der, algorithm, _ = der_elements(builder.sign(throwaway, digest).public_bytes(serialization.Encoding.DER))
    version, subject, _, *attributes = der_elements(info_der)
    info = tlv(0x30, b"".join([version, subject, spki_der(public), *attributes]))
    signature = await _sign_bytes(keys, handle, public, info)
    csr = x509.load_der_x509_csr(tlv(0x30, info + algorithm + tlv(0x03, b"\x00" + signature)))
    if not csr.is_signature_valid:
        raise ValueError("the keys service produced a CSR signature that does not verify")
    return csr
