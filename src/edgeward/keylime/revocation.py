"""Revocation notices from the verifier (``POST /notifications/revocation``): checked, recorded, acted on only
when the operator's configuration vouches for the key that signed them.

The verifier signs ``msg`` (a JSON string) with RSA-PSS (MGF1-SHA256, maximal salt, SHA-256) using the
RevocationNotifier key the tenant made (``keylime_tenant --cert``: its CA directory's ``RevocationNotifier``
certificate, which the tenant also puts in the payload it delivers to the agent).

Who may be believed: any holder of a client certificate from the verifier's CA can post ``/keys/ukey`` and
``/keys/vkey``, so a certificate that only a payload delivered proves nothing about the verifier. A notice is acted on
only when it verifies with ``revocation_cert`` from ``[edgeward.keylime]``: either the RevocationNotifier certificate
itself, or the tenant CA that issued it (then the payload's certificate is used if, and only if, that CA issued it
to the subject ``RevocationNotifier``). Without one, notices are checked against the payload's certificate for the
record only, and never acted on.

What is acted on, besides the signature: ``type == "revocation"`` (the verifier also sends ``comm_error``), naming
this agent (the verifier sends every notice to every agent it attests), not seen before, and not dated before the
floor (the last bootstrap pinned, or revocation cleared): a genuine old notice replayed after an operator cleared it
is recorded, not obeyed. Keylime dates a notice with ``time.asctime()``, the verifier's local time with no zone: it
is read at ``verifier_utc_offset`` (default UTC, as Keylime's containers and most servers run) and compared with the
floor less :data:`CLOCK_TOLERANCE` for the two clocks' skew. (It was compared with 13 h to spare, for any zone: a
notice captured up to 13 h before an operator re-enrolled or cleared the device was obeyed when replayed.) A
verifier west of its configured offset dates notices too early, so genuine ones just after an enrolment are
recorded as stale, saying to set the offset; east of it, older notices pass the floor by that many hours.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ..fsutil import atomic_write

__all__ = ["CLOCK_TOLERANCE", "Notice", "RevocationCertRefused", "Trust", "check_notice",
           "check_revocation_cert", "event_time", "load_trust", "notice_floor", "parse_utc_offset",
           "raise_notice_floor", "undelivered_warning"]

_FIELDS = ("type", "agent_id", "event_id", "severity_label", "event_time", "ip", "port")
_MAX_CONTEXT = 2000
_MAX_FIELD = 256
NOTIFIER_CN = "RevocationNotifier"  # the subject keylime's ca_util gives the key the tenant hands the verifier
CLOCK_TOLERANCE = 600.0  # the verifier's clock ahead of the device's by up to this is still within the floor
_OFFSET = re.compile(r"^([+-]?)(\d\d):(\d\d)$")
_FLOOR = "notice-floor.json"
_SETTING = "edgeward.keylime.revocation_cert"
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                       "Dec"), start=1)}


class RevocationCertRefused(ValueError):
    """The configured revocation certificate would let the wrong signers be believed; the message names the
    setting."""


@dataclass(frozen=True)
class Trust:
    """The certificate notices are checked against, and whether the operator vouches for it."""

    cert: x509.Certificate | None
    configured: bool
    source: str  # for the audit record: where the certificate came from

    @property
    def acts(self) -> bool:
        return self.cert is not None and self.configured


@dataclass(frozen=True)
class Notice:
    authenticated: bool  # the signature verifies with trust.cert
    trusted: bool  # ... and that certificate is one the operator configured (directly or through its CA)
    why: str  # how it was judged, for the audit record
    fields: dict[str, Any]

    def audit_detail(self) -> dict[str, Any]:
        return {"authenticated": self.authenticated, "trusted": self.trusted, "check": self.why, **self.fields}


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_revocation_cert(path: Path, verifier_ca: x509.Certificate) -> x509.Certificate:
    """The configured certificate, refused when it is the verifier's CA: every tenant, verifier and operator tool
    holds a certificate from that CA, so any of them could sign notices. Missing or unreadable: an error (the
    agent does not start), never a silent fall back to what a payload delivered."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise RevocationCertRefused(f"{_SETTING} = {str(path)!r} cannot be read as a PEM certificate ({e})") from None
    if cert.public_key() == verifier_ca.public_key():
        raise RevocationCertRefused(
            f"{_SETTING} = {str(path)!r} is the verifier's CA: every holder of a client certificate from it could "
            "sign revocation notices; configure the tenant's RevocationNotifier certificate or the tenant CA that "
            "issued it (keylime_tenant --cert <dir>: <dir>/cacert.crt)")
    return cert


def _issued_notifier(delivered: x509.Certificate, ca: x509.Certificate) -> str | None:
    """None if ``ca`` issued ``delivered`` to the RevocationNotifier, valid now; else why not."""
    names = delivered.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [NOTIFIER_CN]:
        return f"its subject is {delivered.subject.rfc4514_string()!r}, not CN={NOTIFIER_CN}"
    if _is_ca(delivered):
        return "it is a CA"
    try:
        delivered.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the configured revocation CA did not issue it"
    now = datetime.datetime.now(datetime.UTC)
    if not delivered.not_valid_before_utc <= now <= delivered.not_valid_after_utc:
        return "it is not valid now"
    return None


def load_trust(configured: Path | None, delivered: Path) -> Trust:
    """What notices are checked against: the configured certificate (a RevocationNotifier certificate: itself;
    a CA: the payload's certificate if it issued it), else the payload's, believed for the record only."""
    payload_cert = x509.load_pem_x509_certificate(delivered.read_bytes()) if delivered.exists() else None
    if configured is None:
        if payload_cert is None:
            return Trust(None, False, "no RevocationNotifier certificate is known")
        return Trust(payload_cert, False, f"the payload's certificate, which {_SETTING} does not vouch for")
    cert = x509.load_pem_x509_certificate(configured.read_bytes())
    if not _is_ca(cert):
        return Trust(cert, True, _SETTING)
    if payload_cert is None:
        return Trust(None, False, f"no payload has delivered a certificate issued by the CA in {_SETTING}")
    refused = _issued_notifier(payload_cert, cert)
    if refused is not None:
        return Trust(payload_cert, False, f"the payload's certificate, refused by the CA in {_SETTING}: {refused}")
    return Trust(payload_cert, True, f"the payload's certificate, issued by the CA in {_SETTING}")


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


def check_notice(body: Any, trust: Trust) -> Notice:
    """Judge one notice. Raises ValueError only for a body that is no notice at all (answered 400)."""
    if not isinstance(body, dict) or not isinstance(body.get("msg"), str):
        raise ValueError("a revocation notice is {\"msg\": <JSON text>, \"signature\": <base64>}")
    msg: str = body["msg"]
    signature = body.get("signature") or ""
    fields = _fields(msg)
    if not isinstance(signature, str) or not signature:
        return Notice(False, False, "unsigned", fields)
    if trust.cert is None:
        return Notice(False, False, f"signed, but {trust.source} to check it", fields)
    key = trust.cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return Notice(False, False, f"the key of {trust.source} is not RSA", fields)
    try:
        key.verify(base64.b64decode(signature, validate=True), msg.encode(),
                   padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
                   hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return Notice(False, False, f"the signature does not verify with {trust.source}", fields)
    if not trust.configured:
        return Notice(True, False, f"signature verified with {trust.source}: recorded, never acted on", fields)
    return Notice(True, True, f"signature verified with {trust.source}", fields)


def parse_utc_offset(raw: object) -> int | None:
    """``verifier_utc_offset`` in minutes: "+HH:MM" / "-HH:MM", or an integer of minutes; from -12:00 to +14:00.
    None if it is neither."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        minutes = raw
    elif isinstance(raw, str) and (m := _OFFSET.match(raw)) and int(m[3]) < 60:
        minutes = (-1 if m[1] == "-" else 1) * (int(m[2]) * 60 + int(m[3]))
    else:
        return None
    return minutes if -12 * 60 <= minutes <= 14 * 60 else None


def event_time(fields: dict[str, Any], utc_offset_minutes: int = 0) -> float | None:
    """The notice's ``event_time`` (``time.asctime()``: "Thu Dec  3 06:01:02 2026", the verifier's local time) as
    seconds since the epoch, for a verifier ``utc_offset_minutes`` east of UTC; None if it is not that. Parsed by
    hand: strptime's month names follow the locale."""
    raw = fields.get("event_time")
    parts = raw.split() if isinstance(raw, str) else []
    if len(parts) != 5 or parts[1] not in _MONTHS:
        return None
    try:
        hh, mm, ss = (int(x) for x in parts[3].split(":"))
        local = calendar.timegm((int(parts[4]), _MONTHS[parts[1]], int(parts[2]), hh, mm, ss, 0, 0, 0))
        return float(local - 60 * utc_offset_minutes)
    except (ValueError, OverflowError):
        return None


def notice_floor(home: Path) -> float:
    """The time before which a notice is history: the last bootstrap pinned or revocation cleared (0: none)."""
    try:
        doc = json.loads((home / _FLOOR).read_bytes())
    except FileNotFoundError:
        return 0.0
    except ValueError:
        return time.time()  # unreadable: only notices from now on are believed
    since = doc.get("since") if isinstance(doc, dict) else None
    return float(since) if isinstance(since, (int, float)) else time.time()


def raise_notice_floor(home: Path, since: float, why: str) -> None:
    """Move the floor up to ``since`` (never down)."""
    if since > notice_floor(home):
        atomic_write(home / _FLOOR, json.dumps({"since": since, "why": why}).encode())


def undelivered_warning(configured: Path | None, home: Path) -> str | None:
    """The settings warning for a revocation_cert that is a CA when no payload has delivered a RevocationNotifier
    certificate it issued: then no notice is acted on (the bootstrap never completed, or has not yet). None when
    the certificate is not a CA, cannot be read (the agent's start refuses it), or the state is not readable here."""
    if configured is None:
        return None
    try:
        if not _is_ca(x509.load_pem_x509_certificate(configured.read_bytes())):
            return None
        trust = load_trust(configured, home / "revocation-cert.pem")
    except (OSError, ValueError):
        return None
    if trust.acts:
        return None
    return (f"{_SETTING}: a CA, and {trust.source}: revocation notices are recorded and never acted on until an "
            "enrolment delivers the RevocationNotifier certificate it issued (keylime_tenant -c add ... --cert <dir> "
            "--verify; --verify fails if the bootstrap does not complete)")
