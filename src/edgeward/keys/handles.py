"""Key handles: opaque, unforgeable references to a key, ``sr=<base64 json>&sig=<base64 HMAC-SHA256>``.

A handle names the key id and the key's *generation* (which changes when a key is deleted and re-created), so a
handle outlives neither its key nor, when it carries one, its expiry. The MAC key never leaves this process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from .errors import InvalidHandle
from .model import KeyKind

__all__ = ["MAX_HANDLE_LENGTH", "HandleClaims", "KeyHandleCodec"]

VERIFIED_CACHE_SIZE = 1024
MAX_HANDLE_LENGTH = 8192
# The one shape this codec issues: exactly one sr and one sig, in that order, each plain base64 (ASCII only).
# Anything else - a repeated or extra field, another order, a non-ASCII character - is refused, not interpreted.
_HANDLE = re.compile(r"sr=([A-Za-z0-9+/]+={0,2})&sig=([A-Za-z0-9+/]+={0,2})", re.ASCII)


@dataclass(frozen=True, slots=True)
class HandleClaims:
    kind: KeyKind
    key_id: str
    generation: str
    expires: int | None = None
    derivation: bytes | None = None


class KeyHandleCodec:
    def __init__(self, mac_key: bytes) -> None:
        if len(mac_key) < 32:
            raise ValueError("the handle MAC key must be at least 32 bytes")
        self._mac_key = mac_key
        # Handles whose MAC verified, with their claims: a caller signs with one handle again and again, and the MAC
        # and JSON of every request were a tenth of the keys API's time. Keyed by the exact string that verified;
        # the expiry is still checked on every use. Bounded: emptied when full.
        self._verified: dict[str, HandleClaims] = {}

    def __repr__(self) -> str:
        return "KeyHandleCodec(<redacted>)"

    def _sign(self, sr: str) -> str:
        return base64.b64encode(hmac.new(self._mac_key, sr.encode(), hashlib.sha256).digest()).decode()

    def issue(self, claims: HandleClaims) -> str:
        doc: dict[str, object] = {
            "keyId": claims.key_id,
            "type": claims.kind.value,
            "gen": claims.generation,
            "nonce": secrets.token_hex(8),
        }
        if claims.expires is not None:
            doc["exp"] = claims.expires
        if claims.derivation is not None:
            doc["derivationData"] = base64.b64encode(claims.derivation).decode()
        sr = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
        return f"sr={sr}&sig={self._sign(sr)}"

    def verify(self, handle: str, now: float | None = None) -> HandleClaims:
        """Check the MAC and expiry; raise :class:`InvalidHandle` saying which check failed."""
        known = self._verified.get(handle) if isinstance(handle, str) else None
        if known is not None:
            return self._unexpired(known, now)
        claims = self._verify(handle)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[handle] = claims
        return self._unexpired(claims, now)

    @staticmethod
    def _unexpired(claims: HandleClaims, now: float | None) -> HandleClaims:
        if claims.expires is not None and (time.time() if now is None else now) >= claims.expires:
            raise InvalidHandle("key handle has expired; load the key again for a new handle")
        return claims

    def _verify(self, handle: str) -> HandleClaims:
        if not isinstance(handle, str) or len(handle) > MAX_HANDLE_LENGTH:
            raise InvalidHandle("invalid key handle: wrong type or too long")
        match = _HANDLE.fullmatch(handle)
        if match is None:
            raise InvalidHandle("invalid key handle: expected exactly sr=<base64>&sig=<base64>")
        sr, sig = match.groups()
        if not hmac.compare_digest(self._sign(sr).encode(), sig.encode()):
            raise InvalidHandle("invalid key handle: signature does not verify (tampered, or issued elsewhere)")
        try:
            doc = json.loads(base64.b64decode(sr, validate=True))
            claims = HandleClaims(
                kind=KeyKind(doc["type"]),
                key_id=str(doc["keyId"]),
                generation=str(doc["gen"]),
                expires=int(doc["exp"]) if "exp" in doc else None,
                derivation=base64.b64decode(doc["derivationData"]) if "derivationData" in doc else None,
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            # A valid MAC over a malformed body means our own issuer is broken: still refuse, never crash.
            raise InvalidHandle("invalid key handle: malformed claims") from e
        return claims
