"""PEM chains in and out: the wire carries raw PEM text, leaf first."""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["MAX_PEM_BYTES", "PemError", "chain_to_pem", "parse_chain"]

MAX_PEM_BYTES = 256 * 1024


class PemError(ValueError):
    pass


def parse_chain(pem: bytes | str) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_PEM_BYTES:
        raise PemError(f"PEM is larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise PemError(f"not a PEM certificate chain: {e}") from None
    if not certs:
        raise PemError("no certificate in PEM")
    for n, cert in enumerate(certs, 1):
        try:
            cert.extensions  # noqa: B018 - parsed now: a malformed or duplicated extension is the PEM's fault
        except (ValueError, x509.DuplicateExtension) as e:
            raise PemError(f"certificate {n} of the chain has invalid extensions: {e}") from None
    return certs


def chain_to_pem(certs: list[x509.Certificate]) -> str:
    """Leaf first. The issuers' PEM is remembered: a local CA's chain follows every certificate it issues."""
    if not certs:
        return ""
    return _pem(certs[0]) + "".join(_issuer_pem(c) for c in certs[1:])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@functools.lru_cache(maxsize=32)
def _issuer_pem(cert: x509.Certificate) -> str:  # certificates hash and compare by their DER
    return _pem(cert)
