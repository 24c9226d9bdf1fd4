"""``verifier_ca``: the one certificate every client of the agent API must chain to, checked before it is trusted.

The TLS context would take a file of many certificates, or a leaf, or an expired CA, and admit whatever chains to
any of them: a bundle copied from the wrong place (a system store) would let every holder of a certificate from a
public CA fetch quotes, deliver payload keys and post revocation notices. So the file must hold exactly one
certificate, a CA (basicConstraints CA=TRUE), valid now; anything else stops the agent's start, naming the setting.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

__all__ = ["VerifierCaRefused", "check_verifier_ca"]

_SETTING = "edgeward.keylime.verifier_ca"
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class VerifierCaRefused(ValueError):
    """The configured verifier CA is not one currently valid CA certificate; the message names the setting."""


def _refuse(path: Path, why: str) -> VerifierCaRefused:
    return VerifierCaRefused(f"{_SETTING} = {str(path)!r}: expected exactly one CA certificate (PEM, "
                             f"basicConstraints CA=TRUE, valid now), the verifier's cv_ca/cacert.crt; {why}")


def check_verifier_ca(path: Path, now: datetime.datetime | None = None) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _refuse(path, f"it cannot be read ({e.strerror or e})") from None
    count = data.count(_PEM_BEGIN)
    if count != 1:
        raise _refuse(path, f"the file holds {count} certificates")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise _refuse(path, f"it does not parse ({e})") from None
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise _refuse(path, f"{cert.subject.rfc4514_string()!r} is not a CA (no basicConstraints CA=TRUE)")
    now = now or datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise _refuse(path, f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise _refuse(path, f"it expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return cert
