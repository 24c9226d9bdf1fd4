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

Kept apart until they combine: the same clients may post a U of their own at any time, so one U slot would let any
of them overwrite the tenant's U just before the verifier's V arrives (the second review's N3: the V then combined
with nothing, the verifier heard 200, and no pin, payload or notifier certificate was ever taken). So every U is
kept under the client certificate that posted it (:data:`PENDING_PER_CERT` a certificate, a bare U never pushing
out one with a payload; :data:`PENDING_CERTS` certificates, the least recent dropped; :data:`PENDING_PAYLOADS`
payloads in memory in all), and an arriving V is tried against each: the pair whose auth_tag checks is pinned. A V
is not kept: Keylime's tenant posts its U before it gives the verifier the agent, so a V that combines with no U
means the bootstrap failed. It is answered 400 (the verifier then marks the agent FAILED, event ``no_v``: visible
in ``keylime_tenant -c cvstatus``, where a 200 said PASS with no bootstrap), and recorded as
``keylime.bootstrap_incomplete`` (at most one record a minute, with how many more there were).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..fsutil import atomic_write, remove_durably
from .revocation import raise_notice_floor
from .statefiles import read_object, requester

if TYPE_CHECKING:
    from ..attest.audit import AuditLog

__all__ = ["RESET_COMMAND", "BootstrapIncomplete", "BootstrapPinned", "PayloadError", "Payloads", "current_pin",
           "request_reset"]

log = logging.getLogger(__name__)
_OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 -- Keylime's wire format
REVOCATION_CERT_NAME = "RevocationNotifier-cert.crt"
MAX_PAYLOAD = 8 << 20
RESET_COMMAND = "edgeward attest keylime-reset-bootstrap"
_PIN, _RESET = "bootstrap-pin.json", "bootstrap-reset.json"
PINNED, RESET = "keylime.bootstrap_pinned", "keylime.bootstrap_reset"
INCOMPLETE = "keylime.bootstrap_incomplete"
PENDING_PER_CERT = 4  # U halves kept per client certificate: the tenant's, and a retry or two of its own
PENDING_CERTS = 8  # client certificates with U halves pending; beyond it the least recent one's are dropped
PENDING_PAYLOADS = 2  # payloads (up to MAX_PAYLOAD each) held while their U waits for a V
INCOMPLETE_RECORD_SECONDS = 60.0  # anyone may post V halves: at most one audit record a minute says so


class PayloadError(ValueError):
    """A key half or payload that does not decrypt or check: answered 400, nothing stored."""


class BootstrapIncomplete(PayloadError):
    """A V that combines with no pending U: answered 400, so the verifier fails the agent instead of hearing 200."""


@dataclass(frozen=True)
class _PendingU:
    half: bytes
    auth_tag: str
    payload: bytes | None
    seq: int  # arrival order, across certificates


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
        self._pending: OrderedDict[str, list[_PendingU]] = OrderedDict()  # by client certificate, least recent first
        self._seq = 0
        self._k: bytes | None = None
        self._incomplete_at = -INCOMPLETE_RECORD_SECONDS
        self._incomplete_unrecorded = 0

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
            pin = read_object(self.home / _PIN)
        except (OSError, ValueError):
            return True
        if pin is None:
            return False
        try:
            reset = read_object(self.home / _RESET)
        except (OSError, ValueError):
            return True
        if reset is None or reset.get("pin") != pin.get("u_sha256") or self._audit is None:
            return True
        self._audit.append(RESET, None, {"pinned_at": pin.get("time"), "requested_at": reset.get("time"),
                                         "by_uid": reset.get("uid"), "by_user": reset.get("user")})
        raise_notice_floor(self.home, float(reset.get("time") or time.time()), "bootstrap reset")
        remove_durably(self.home / _PIN)
        remove_durably(self.home / _RESET)
        self._k = None
        self._pending.clear()
        log.warning("keylime: the bootstrap key pinned at enrolment was reset by %s; the next tenant's U and "
                    "verifier's V are taken", reset.get("user"))
        return False

    def pending(self) -> int:
        """How many U halves wait for a V."""
        return sum(len(us) for us in self._pending.values())

    def ukey(self, body: Any, *, peer: str = "") -> None:
        """Keep the U under ``peer`` (the SHA-256 of the client certificate that posted it) until a V combines with
        it; nothing is pinned or stored yet."""
        if self.pinned():
            raise BootstrapPinned
        half = self._decrypt_half(body)
        tag = body.get("auth_tag")
        if not isinstance(tag, str):
            raise PayloadError("auth_tag is missing")
        payload = body.get("payload")
        if payload is not None and not isinstance(payload, str):
            raise PayloadError("payload must be base64 text")
        self._seq += 1
        entry = _PendingU(half, tag, base64.b64decode(payload) if payload else None, self._seq)
        mine = [*self._pending.pop(peer, []), entry]
        while len(mine) > PENDING_PER_CERT:  # the oldest bare U goes first: a U with a payload outlives bare ones
            mine.remove(next((u for u in mine if u.payload is None), mine[0]))
        self._pending[peer] = mine
        while len(self._pending) > PENDING_CERTS:
            self._pending.popitem(last=False)
        held = [(p, u) for p, us in self._pending.items() for u in us if u.payload is not None]
        if len(held) > PENDING_PAYLOADS:  # this certificate's own older payload first, else the oldest one
            own = [(p, u) for p, u in held if p == peer and u is not entry]
            p, u = min(own or [(p, u) for p, u in held if u is not entry], key=lambda pu: pu[1].seq)
            self._pending[p].remove(u)

    def vkey(self, body: Any, *, peer: str = "") -> None:
        """Try the V against every pending U and pin the pair whose auth_tag checks; raise BootstrapIncomplete if
        none does."""
        half = self._decrypt_half(body)
        if self.pinned():
            pin = current_pin(self.home) or {}
            if hmac.compare_digest(str(pin.get("v_sha256")), hashlib.sha256(half).hexdigest()):
                return  # the pinned V again: the verifier re-sends it after a restart of its own
            raise BootstrapPinned
        for u in sorted((u for us in self._pending.values() for u in us), key=lambda u: -u.seq):
            k = bytes(a ^ b for a, b in zip(u.half, half, strict=True))
            if hmac.compare_digest(hmac.new(k, self._uuid.encode(), hashlib.sha384).hexdigest(), u.auth_tag):
                self._pin(u, half)
                self._pending.clear()
                self._k = k
                if u.payload:
                    self._store(k, u.payload)
                return
        self._incomplete(half, peer)
        raise BootstrapIncomplete(
            f"bootstrap not completed: this V combines with none of the {self.pending()} U key halves received; "
            "the tenant posts its U before it adds the agent to the verifier (keylime_tenant -c add ... --verify "
            "reports this)")

    def _incomplete(self, v: bytes, peer: str) -> None:
        """Recorded so an operator sees it, at most once a minute (anyone with a verifier-CA client certificate
        can post V halves)."""
        now = time.monotonic()
        if now - self._incomplete_at < INCOMPLETE_RECORD_SECONDS:
            self._incomplete_unrecorded += 1
            return
        v_sha256 = hashlib.sha256(v).hexdigest()
        detail = {"v_sha256": v_sha256, "peer_sha256": peer, "pending_u": self.pending(),
                  "certificates": len(self._pending), "unrecorded_before": self._incomplete_unrecorded}
        self._incomplete_at, self._incomplete_unrecorded = now, 0
        log.warning("keylime: bootstrap not completed: a V (%s...) combines with none of the %d U key halves "
                    "pending; no payload or RevocationNotifier certificate is stored", v_sha256[:16], self.pending())
        if self._audit is not None:
            try:
                self._audit.append(INCOMPLETE, None, detail)
            except Exception:  # a full disk: the V is refused all the same
                log.exception("keylime: could not record %s; %s", INCOMPLETE, detail)

    def _pin(self, u: _PendingU, v: bytes) -> None:
        """Durably, before the verifier hears 200 for its V."""
        now = time.time()
        pin = {"u_sha256": hashlib.sha256(u.half).hexdigest(), "v_sha256": hashlib.sha256(v).hexdigest(),
               "time": now, "payload_sha256": hashlib.sha256(u.payload).hexdigest() if u.payload else None}
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


def current_pin(home: Path) -> dict[str, Any] | None:
    """The pinned bootstrap (digests and when), or None."""
    return read_object(home / _PIN)


def request_reset(home: Path) -> dict[str, Any] | None:
    """The CLI's half: ask the daemon to drop the pin (it records who asked, then takes the next U and V); None
    if nothing is pinned."""
    pin = current_pin(home)
    if pin is None:
        return None
    atomic_write(home / _RESET, json.dumps({"pin": pin.get("u_sha256"), **requester()}).encode())
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
