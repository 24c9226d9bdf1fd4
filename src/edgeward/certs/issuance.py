"""Building X.509 v3 certificates from CSRs: subject rules, validity capped by the issuer, extensions from the cert
id's issuance policy (``policy``), SKID/AKID.

Signing goes through the keys service (``x509sign``), so an issuer on PKCS#11 or a TPM works like a software one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from ..keys.api import KeysApi
from ..keys.model import PublicKey
from .errors import InvalidCsr
from .policy import Grant, IssuancePolicy
from .tbs import (
    EncodedExtension,
    EncodedName,
    TbsCertificate,
    der_elements,
    extension_der,
    key_identifier,
    spki_der,
    subject_key_identifier_der,
)
from .x509sign import sign_certificate

__all__ = ["IssuerRef", "issue", "parse_csr", "self_signed_ca", "sign_leaf"]

MAX_CSR_BYTES = 64 * 1024
BACKDATE = dt.timedelta(minutes=1)  # tolerate small clock differences between the device and its peers


@dataclass(frozen=True)
class IssuerRef:
    """Who signs: the issuer's certificate (None when self-signed) and its key."""

    cert: x509.Certificate | None
    key_handle: str
    public_key: PublicKey

    @functools.cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """Worked out once per issuer (the local CA's is kept with it): every certificate it signs names the same."""
        ski = x509.SubjectKeyIdentifier(key_identifier(spki_der(self.public_key)))
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    @functools.cached_property
    def authority_key_identifier_der(self) -> bytes:
        return extension_der(self.authority_key_identifier, False)

    @functools.cached_property
    def name_der(self) -> bytes | None:
        """The issuer certificate's subject, encoded once (None: self-signed, the issuer is the subject)."""
        return self.cert.subject.public_bytes() if self.cert is not None else None


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR as PEM, DER, or base64 of either (aziot clients send base64 of the PEM); its signature must verify."""
    if len(data) > MAX_CSR_BYTES:
        raise InvalidCsr(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    candidates = [data]
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(data, validate=True))
    csr = None
    for blob in candidates:
        for loader in _loaders(blob):
            try:
                csr = loader(blob)
                break
            except ValueError:
                continue
        if csr is not None:
            break
    if csr is None:
        raise InvalidCsr("csr is not a PKCS#10 certificate signing request (PEM or DER)")
    try:
        valid = csr.is_signature_valid
    except Exception as e:  # unsupported key types surface here
        raise InvalidCsr(f"csr signature cannot be checked: {e}") from None
    if not valid:
        raise InvalidCsr("csr signature does not verify: it was not signed by the key it names")
    try:
        csr.extensions  # noqa: B018 - parsed now: a duplicate or malformed extension is the caller's error
    except (ValueError, x509.DuplicateExtension) as e:
        # two basicConstraints, say, could mean one thing to one parser and another to the next
        raise InvalidCsr(f"csr extensions are not valid: {e}") from None
    return csr


def _loaders(blob: bytes) -> list[Callable[[bytes], x509.CertificateSigningRequest]]:
    """The loaders that can take ``blob``: PEM has its BEGIN line, DER starts with a SEQUENCE (0x30); a loader
    that cannot is not tried (each failed try raises, which costs more than the check)."""
    loaders: list[Callable[[bytes], x509.CertificateSigningRequest]] = []
    if b"-----BEGIN" in blob:
        loaders.append(x509.load_pem_x509_csr)
    if blob[:1] == b"\x30":
        loaders.append(x509.load_der_x509_csr)
    return loaders


def _subject(csr: x509.CertificateSigningRequest, common_name: str | None,
             subject: x509.Name | None = None, csr_subject_der: bytes | None = None) -> EncodedName:
    if subject is not None:  # the configured DN replaces the CSR's whole (as aziot-certd's subject does)
        return subject
    if common_name is None:  # the CSR's subject as the CSR carries it (what OpenSSL, so aziot-certd, copies)
        if csr_subject_der is not None:  # as the policy read it (Grant.subject_der)
            return csr_subject_der
        # CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, attributes [0] }
        return der_elements(csr.tbs_certrequest_bytes)[1]
    try:
        rest = [a for a in csr.subject if a.oid != NameOID.COMMON_NAME]
    except ValueError as e:  # a string cryptography does not take (the policy read the DER and let it through)
        raise InvalidCsr(f"csr subject cannot be copied: {e}") from None
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name), *rest])


def self_signed_ca(common_name: str, public_key: PublicKey, days: int) -> TbsCertificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    spki = spki_der(public_key)
    ski = x509.SubjectKeyIdentifier(key_identifier(spki))
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), True),
        (ski, False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False),
    ]
    return TbsCertificate(x509.random_serial_number(), name, name, now - BACKDATE, now + dt.timedelta(days=days),
                          spki, extensions)


async def issue(keys: KeysApi, csr: x509.CertificateSigningRequest, issuer: IssuerRef, lifetime: dt.timedelta, *,
                policy: IssuancePolicy, grant: Grant, common_name: str | None = None,
                subject: x509.Name | None = None) -> x509.Certificate:
    """Sign a certificate for ``csr`` as ``policy`` allowed it (``grant``: ``policy.grant(csr, common_name)``,
    which refuses a CSR asking for more, 400, before anything is signed): the CSR gives its public key, its subject
    (CN overridden by ``common_name``, all of it by a configured ``subject``) and the names granted; everything
    else comes from the policy."""
    public_key = csr.public_key()
    return await sign_leaf(keys, _subject(csr, common_name, subject, grant.subject_der), public_key,
                           policy.extensions_der(public_key, grant), issuer=issuer, lifetime=lifetime)


async def sign_leaf(keys: KeysApi, subject: EncodedName, public_key: CertificatePublicKeyTypes,
                    extensions: Sequence[EncodedExtension], *, issuer: IssuerRef,
                    lifetime: dt.timedelta) -> x509.Certificate:
    """Sign exactly ``extensions`` (plus SKID/AKID); notAfter never passes the issuer's notAfter."""
    now = dt.datetime.now(dt.UTC)
    not_after = now + lifetime
    if issuer.cert is not None:
        not_after = min(not_after, issuer.cert.not_valid_after_utc)
        if not_after <= now:
            raise InvalidCsr("the issuer certificate has expired; renew it first")
    spki = spki_der(public_key)
    extensions = [*extensions, subject_key_identifier_der(spki), issuer.authority_key_identifier_der]
    tbs = TbsCertificate(x509.random_serial_number(), issuer.name_der or subject,
                         subject, now - min(BACKDATE, lifetime / 10),  # short-lived certs keep their renewal math
                         not_after, spki, extensions)
    return await sign_certificate(tbs, keys, issuer.key_handle, issuer.public_key)

