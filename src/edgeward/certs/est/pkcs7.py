"""EST bodies <-> certificates: the one place that reads what an EST server sends back.

RFC 7030 answers ``/cacerts``, ``/simpleenroll`` and ``/simplereenroll`` with a certs-only PKCS#7 (a degenerate
SignedData), base64-encoded with ``Content-Transfer-Encoding: base64``. Servers in the field deviate: some send raw
DER, some PEM certificates, some a single base64 DER certificate. The body is sniffed rather than trusted to match its
headers, because the headers are the part servers most often get wrong. Anything unreadable becomes an
:class:`EstError`, whatever the input: the body comes from the network.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7

from ..tbs import element_length

__all__ = [
    "EstError",
    "base64_body",
    "certs_only_pkcs7",
    "decode_base64_body",
    "order_chain",
    "parse_certificates",
]

_DER_SEQUENCE = 0x30
_PEM_MARK = b"-----BEGIN "
_WHITESPACE = b" \t\r\n\v\f"
# What the parsers may raise on hostile input. Anything else escaping them is a bug worth seeing, not hiding.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
    x509.DuplicateExtension,  # two extensions of one kind: one parser could read the first, the next the second
)


class EstError(Exception):
    """An EST exchange failed; the message says what to check (URL, trust, credentials, server answer).

    ``status`` is the EST server's HTTP status when it answered, ``None`` when it could not be reached or its answer
    could not be read. It is the *EST server's* status, so callers must not echo it as their own.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def parse_certificates(body: bytes) -> list[x509.Certificate]:
    """The certificates in an EST response body, in the order the body holds them.

    A DER PKCS#7 keeps its certificates in a SET, which DER sorts by encoding: the order says nothing about which is
    the leaf. Use :func:`order_chain` before treating the result as a chain.

    Accepted: base64 certs-only PKCS#7 (line breaks allowed), raw DER PKCS#7, PEM ``PKCS7`` or ``CERTIFICATE`` blocks,
    a base64 or raw DER single certificate. Raises :class:`EstError` for anything else, including an empty bundle.
    """
    data = body.lstrip(_WHITESPACE)
    # Raw DER ends where its outer length says, and its last bytes may be anything, whitespace included: only what
    # follows that end is trimmed. Text (base64, PEM) loses its trailing whitespace.
    data = _der_exact(data) if data[:1] == bytes([_DER_SEQUENCE]) else data.rstrip(_WHITESPACE)
    if not data:
        raise EstError("the EST response body is empty; expected a certs-only PKCS#7")
    if _PEM_MARK in data:
        certs = _from_pem(data)
    elif data[0] == _DER_SEQUENCE:
        certs = _from_der(data)
    else:
        certs = _from_der(decode_base64_body(data))
    if not certs:
        raise EstError("the EST response holds no certificate")
    return [_checked(cert) for cert in certs]


def order_chain(certs: Sequence[x509.Certificate], leaf_key: PublicKeyTypes | None = None) -> list[x509.Certificate]:
    """``certs`` as a chain: leaf first, then each certificate's issuer when present, then whatever is left over.

    With ``leaf_key`` (the public key of the CSR that was enrolled), the leaf is the certificate for that key, and its
    absence is an :class:`EstError`: a server that answers with someone else's certificate must not be believed.
    Without it, the leaf is a certificate that issued none of the others. Duplicates are dropped.
    """
    unique = list(dict.fromkeys(certs))  # Certificate hashes and compares by its DER encoding
    if not unique:
        return []
    if leaf_key is None:
        leaf = next((c for c in unique if not any(_issued(c, o) for o in unique if o is not c)), unique[0])
    else:
        wanted = _spki(leaf_key)
        found = [c for c in unique if _spki(c.public_key()) == wanted]
        if not found:
            raise EstError("the EST server answered with no certificate for the requested key")
        leaf = found[0]
    chain = [leaf]
    rest = [c for c in unique if c is not leaf]
    while True:
        issuer = next((c for c in rest if _issued(c, chain[-1])), None)
        if issuer is None:
            break
        chain.append(issuer)
        rest.remove(issuer)
    return chain + rest


def decode_base64_body(body: bytes) -> bytes:
    """Decode a ``Content-Transfer-Encoding: base64`` body: MIME line breaks and spaces allowed, nothing else."""
    compact = bytes(b for b in body if b not in _WHITESPACE)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EstError("the EST response is neither base64 nor DER nor PEM; expected a base64 certs-only PKCS#7") from e


def certs_only_pkcs7(certs: Sequence[x509.Certificate]) -> bytes:
    """A DER certs-only PKCS#7 holding ``certs``: what an EST server answers (base64 it for the wire)."""
    if not certs:
        raise ValueError("a certs-only PKCS#7 needs at least one certificate")
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


def base64_body(der: bytes, line_length: int | None = 64) -> bytes:
    """Base64 for a ``Content-Transfer-Encoding: base64`` body; ``line_length=None`` gives one line.

    RFC 2045 allows lines of up to 76 characters; 64 is what OpenSSL-based EST servers send.
    """
    text = base64.b64encode(der)
    if line_length is None:
        return text
    return b"\n".join(text[i : i + line_length] for i in range(0, len(text), line_length)) + b"\n"


def _der_exact(data: bytes) -> bytes:
    """``data`` up to the end of its outer DER element when only whitespace follows it; else as it is (the parser
    then says what is wrong)."""
    if len(data) < 2:
        return data
    end = element_length(data)
    if end <= len(data) and not data[end:].strip(_WHITESPACE):
        return data[:end]
    return data


def _from_pem(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN PKCS7-----" in data:
        return _attempt(pkcs7.load_pem_pkcs7_certificates, data, "PEM PKCS#7")
    if b"-----BEGIN CERTIFICATE-----" in data:
        return _attempt(x509.load_pem_x509_certificates, data, "PEM certificate")
    raise EstError("the EST response is PEM but holds neither a PKCS7 nor a CERTIFICATE block")


def _from_der(der: bytes) -> list[x509.Certificate]:
    """A certs-only PKCS#7 first (what RFC 7030 specifies), then a lone certificate (what some servers send)."""
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except _PARSE_ERRORS as as_pkcs7:
        try:
            return [x509.load_der_x509_certificate(der)]
        except _PARSE_ERRORS:
            raise EstError(f"the EST response is not a certs-only PKCS#7 ({_reason(as_pkcs7)})") from as_pkcs7


def _attempt(load: Callable[[bytes], list[x509.Certificate]], data: bytes, what: str) -> list[x509.Certificate]:
    try:
        return load(data)
    except _PARSE_ERRORS as e:
        raise EstError(f"the EST response is not a valid {what} ({_reason(e)})") from e


def _checked(cert: x509.Certificate) -> x509.Certificate:
    """Touch the fields every caller reads, so a malformed certificate fails here and not deep in the renewal logic
    (cryptography parses some of them lazily)."""
    try:
        _ = (cert.subject, cert.issuer, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)
        cert.public_key()
        _ = list(cert.extensions)
    except _PARSE_ERRORS as e:
        raise EstError(f"the EST response holds a malformed certificate ({_reason(e)})") from e
    return cert


def _issued(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """By name only: enough to order a bundle. Whether the signatures hold is the caller's verification to do."""
    return cert.issuer == issuer.subject and cert.subject != issuer.subject


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__
