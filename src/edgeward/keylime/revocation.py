"""Revocation notices from the verifier (``POST /notifications/revocation``): checked, recorded, acted on only
when authentic.

The verifier signs ``msg`` (a JSON string) with RSA-PSS (MGF1-SHA256, maximal salt, SHA-256) using the
RevocationNotifier key, whose certificate reaches the agent in the tenant's payload (or is configured). A notice
with no signature (the tenant added the agent without a ``--cert`` payload), or one that does not verify, is
recorded as unauthenticated and nothing is done about it: anyone who can reach the agent API could have sent it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["Notice", "check_notice", "load_revocation_cert"]

_FIELDS = ("type", "agent_id", "event_id", "severity_label", "event_time", "ip", "port")
_MAX_CONTEXT = 2000
_MAX_FIELD = 256


@dataclass(frozen=True)
class Notice:
    authenticated: bool
    why: str  # how it was judged, for the audit record
    fields: dict[str, Any]

    def audit_detail(self) -> dict[str, Any]:
        return {"authenticated": self.authenticated, "check": self.why, **self.fields}


def load_revocation_cert(configured: Path | None, delivered: Path) -> x509.Certificate | None:
    """The configured certificate when one is configured (missing: an error, never a silent fall back to what a
    payload delivered), else the one the payload delivered, if any."""
    if configured is not None:
        return x509.load_pem_x509_certificate(configured.read_bytes())
    if delivered.exists():
        return x509.load_pem_x509_certificate(delivered.read_bytes())
    return None


def _fields(msg: str) -> dict[str, Any]:
    try:
        doc = json.loads(msg)
    except ValueError:
        return {"unparsed": msg[:_MAX_CONTEXT]}
    if not isinstance(doc, dict):
        return {"unparsed": msg[:_MAX_CONTEXT]}
    # every field bounded: an unauthenticated notice is still recorded, and must not make a megabyte record
    out: dict[str, Any] = {k: doc[k] if isinstance(doc[k], int) else doc[k][:_MAX_FIELD]
                           for k in _FIELDS if isinstance(doc.get(k), (str, int))}
    context = doc.get("context")
    if isinstance(context, str):
        out["context"] = context[:_MAX_CONTEXT]
    return out


def check_notice(body: Any, cert: x509.Certificate | None) -> Notice:
    """Judge one notice. Raises ValueError only for a body that is no notice at all (answered 400)."""
    if not isinstance(body, dict) or not isinstance(body.get("msg"), str):
        raise ValueError("a revocation notice is {\"msg\": <JSON text>, \"signature\": <base64>}")
    msg: str = body["msg"]
    signature = body.get("signature") or ""
    fields = _fields(msg)
    if not isinstance(signature, str) or not signature:
        return Notice(False, "unsigned", fields)
    if cert is None:
        return Notice(False, "signed, but no RevocationNotifier certificate is known to check it", fields)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return Notice(False, "the RevocationNotifier certificate's key is not RSA", fields)
    try:
        key.verify(base64.b64decode(signature, validate=True), msg.encode(),
                   padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
                   hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return Notice(False, "the signature does not verify with the RevocationNotifier certificate", fields)
    return Notice(True, "signature verified", fields)
