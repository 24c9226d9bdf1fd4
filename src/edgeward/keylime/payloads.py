"""``/keys/ukey``, ``/keys/vkey`` and ``/keys/verify``: the tenant's bootstrap key, received and checked; its
payload decrypted and stored, never run.

The tenant splits a key K into U (sent by the tenant) and V (sent by the verifier once the device attested), each
RSA-OAEP-encrypted to the payload key; K = U xor V, confirmed by HMAC-SHA384(K, uuid) == auth_tag. The payload is
AES-256-GCM under K (iv 16 bytes, then ciphertext, then the 16-byte tag). A Keylime agent would unzip it and run its
``autorun.sh``: this one keeps the zip (0600) and reads exactly one thing out of it, in memory,
``RevocationNotifier-cert.crt``, the certificate revocation notices are signed with.

Pinned: any holder of a client certificate from the verifier's CA may post these routes, not only this device's
tenant and verifier. So the first pair of halves that combines into the key its auth_tag names is pinned
(``bootstrap-pin.json``: digests of U and V, never the halves): from then on a ``ukey`` answers 409 unread and a
``vkey`` 409 unless it is the pinned V again (the verifier re-sends V after it restarts), until an operator runs
``edgeward attest keylime-reset-bootstrap`` (recorded in the audit log by the daemon, as a revocation's clearing
is). ``keylime_tenant -c update`` posts a new U, so it needs that reset first; a runtime policy kept by name
(``-c updateruntimepolicy``) changes with no bootstrap at all. Until the first pair arrives, whoever posts first
wins: a pin taken by someone else shows as the verifier's V refused (its agent FAILED at the verifier) and is undone
by the same reset.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import pwd
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..fsutil import atomic_write, remove_durably
from .revocation import raise_notice_floor

if TYPE_CHECKING:
    from ..attest.audit import AuditLog

__all__ = ["RESET_COMMAND", "BootstrapPinned", "PayloadError", "Payloads", "current_pin", "request_reset"]

log = logging.getLogger(__name__)
_OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 -- Keylime's wire format
REVOCATION_CERT_NAME = "RevocationNotifier-cert.crt"
MAX_PAYLOAD = 8 << 20
RESET_COMMAND = "edgeward attest keylime-reset-bootstrap"
_PIN, _RESET = "bootstrap-pin.json", "bootstrap-reset.json"
PINNED, RESET = "keylime.bootstrap_pinned", "keylime.bootstrap_reset"


class PayloadError(ValueError):
    """A key half or payload that does not decrypt or check: answered 400, nothing stored."""


class BootstrapPinned(Exception):
    """A bootstrap key is pinned: answered 409, nothing read or stored."""

    def __init__(self) -> None:
        super().__init__(f"this agent's bootstrap key is pinned to its first enrolment; an operator on the device "
                         f"resets it with `{RESET_COMMAND}` (before keylime_tenant -c update)")


class Payloads:
    def __init__(self, home: Path, key: rsa.RSAPrivateKey, agent_uuid: str, audit: AuditLog | None = None) -> None:
        self.home = home
        self._key = key
        self._uuid = agent_uuid
        self._audit = audit
        self._u: bytes | None = None
        self._v: bytes | None = None
        self._auth_tag: str | None = None
        self._payload: bytes | None = None
        self._k: bytes | None = None

    def __repr__(self) -> str:
        return f"Payloads(home={self.home}, bootstrapped={self._k is not None})"

    def _decrypt_half(self, body: Any) -> bytes:
        try:
            half = self._key.decrypt(base64.b64decode(body["encrypted_key"], validate=True), _OAEP)
        except (KeyError, TypeError, ValueError) as e:
            raise PayloadError(f"encrypted_key does not decrypt with this agent's payload key ({e})") from None
        if len(half) != 32:
            raise PayloadError("a bootstrap key half is 32 bytes")
        return half

    def pinned(self) -> bool:
        """Whether a bootstrap is pinned, after taking up an operator's reset request if there is one. A pin file
        that cannot be read is a pin (fail closed: the reset rewrites it)."""
        try:
            pin = _read(self.home / _PIN)
        except (OSError, ValueError):
            return True
        if pin is None:
            return False
        try:
            reset = _read(self.home / _RESET)
        except (OSError, ValueError):
            return True
        if reset is None or reset.get("pin") != pin.get("u_sha256") or self._audit is None:
            return True
        self._audit.append(RESET, None, {"pinned_at": pin.get("time"), "requested_at": reset.get("time"),
                                         "by_uid": reset.get("uid"), "by_user": reset.get("user")})
        raise_notice_floor(self.home, float(reset.get("time") or time.time()), "bootstrap reset")
        remove_durably(self.home / _PIN)
        remove_durably(self.home / _RESET)
        self._u = self._v = self._k = self._payload = None
        self._auth_tag = None
        log.warning("keylime: the bootstrap key pinned at enrolment was reset by %s; the next tenant's U and "
                    "verifier's V are taken", reset.get("user"))
        return False

    def ukey(self, body: Any) -> None:
        if self.pinned():
            raise BootstrapPinned
        half = self._decrypt_half(body)
        tag = body.get("auth_tag")
        if not isinstance(tag, str):
            raise PayloadError("auth_tag is missing")
        payload = body.get("payload")
        if payload is not None and not isinstance(payload, str):
            raise PayloadError("payload must be base64 text")
        self._u, self._auth_tag = half, tag
        self._payload = base64.b64decode(payload) if payload else None
        self._combine()

    def vkey(self, body: Any) -> None:
        half = self._decrypt_half(body)
        if self.pinned():
            pin = current_pin(self.home) or {}
            if hmac.compare_digest(str(pin.get("v_sha256")), hashlib.sha256(half).hexdigest()):
                return  # the pinned V again: the verifier re-sends it after a restart of its own
            raise BootstrapPinned
        self._v = half
        self._combine()

    def _combine(self) -> None:
        if self._u is None or self._v is None or self._auth_tag is None:
            return
        k = bytes(a ^ b for a, b in zip(self._u, self._v, strict=True))
        expected = hmac.new(k, self._uuid.encode(), hashlib.sha384).hexdigest()
        if not hmac.compare_digest(expected, self._auth_tag):
            log.warning("keylime: U and V do not combine into the key the tenant's auth_tag names; waiting for others")
            return
        self._pin()
        self._k = k
        if self._payload:
            self._store(k, self._payload)

    def _pin(self) -> None:
        """Durably, before the verifier hears 200 for its V."""
        assert self._u is not None and self._v is not None
        now = time.time()
        pin = {"u_sha256": hashlib.sha256(self._u).hexdigest(), "v_sha256": hashlib.sha256(self._v).hexdigest(),
               "time": now,
               "payload_sha256": hashlib.sha256(self._payload).hexdigest() if self._payload else None}
        atomic_write(self.home / _PIN, json.dumps(pin).encode())
        raise_notice_floor(self.home, now, "bootstrap pinned")
        if self._audit is not None:
            self._audit.append(PINNED, None, pin)
        log.info("keylime: bootstrap key pinned; further ukey/vkey posts answer 409 until `%s`", RESET_COMMAND)

    def _store(self, k: bytes, blob: bytes) -> None:
        if len(blob) < 33 or len(blob) > MAX_PAYLOAD:
            log.warning("keylime: payload of %d bytes ignored", len(blob))
            return
        try:
            data = AESGCM(k).decrypt(blob[:16], blob[16:], None)
        except InvalidTag:
            log.warning("keylime: the payload does not decrypt with the bootstrap key; ignored")
            return
        atomic_write(self.home / "payload.zip", data)  # kept for the operator; never extracted, never run
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                cert = _bounded_member(archive, REVOCATION_CERT_NAME)
        except zipfile.BadZipFile:
            log.warning("keylime: the payload is not a zip archive; stored as it is")
            return
        except ValueError as e:
            log.warning("keylime: %s; the payload is stored, its certificate not used", e)
            return
        if cert is not None:
            x509.load_pem_x509_certificate(cert)  # must parse before it is trusted for anything
            atomic_write(self.home / "revocation-cert.pem", cert, mode=0o644)
            log.info("keylime: the payload's %s is stored; revocation notices signed with it are acted on only if "
                     "[edgeward.keylime] revocation_cert vouches for it", REVOCATION_CERT_NAME)

    def verify(self, challenge: str) -> str | None:
        """HMAC-SHA384(K, challenge), or None before both halves arrived and combined."""
        if self._k is None:
            return None
        return hmac.new(self._k, challenge.encode(), hashlib.sha384).hexdigest()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def current_pin(home: Path) -> dict[str, Any] | None:
    """The pinned bootstrap (digests and when), or None."""
    return _read(home / _PIN)


def request_reset(home: Path) -> dict[str, Any] | None:
    """The CLI's half: ask the daemon to drop the pin (it records who asked, then takes the next U and V); None
    if nothing is pinned."""
    pin = current_pin(home)
    if pin is None:
        return None
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    atomic_write(home / _RESET, json.dumps({"pin": pin.get("u_sha256"), "time": time.time(), "uid": uid,
                                            "user": user}).encode())
    return pin


MAX_CERT_MEMBER = 64 * 1024


def _bounded_member(archive: zipfile.ZipFile, name: str) -> bytes | None:
    """``name``'s bytes, refusing a member whose declared size is larger than a certificate can be: the whole
    member is decompressed in memory, and a few hundred kilobytes of zip can declare gigabytes. zipfile stops
    reading at the declared size, so checking it bounds the memory."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_CERT_MEMBER:
        raise ValueError(f"{name} declares {info.file_size} bytes (a certificate is at most {MAX_CERT_MEMBER})")
    return archive.read(info)
