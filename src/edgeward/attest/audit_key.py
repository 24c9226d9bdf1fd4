"""The key that authenticates the audit log, kept where the keys service keeps keys.

The base key (``edgeward-audit``, an HMAC key) lives in the device's key backend: in the TPM or on the PKCS#11 token
when there is one, encrypted under the master key otherwise. What the audit log holds is a key derived from it by
the backend (HMAC-SHA256 of a fixed label, done by the TPM or the token), in memory only: appends are synchronous and
on the event loop, so they cannot wait for a keys-service round trip per record, and verifying a long log must not
take one call per record either. The derived key is never written anywhere; to get it again, a process must be
allowed to use the base key by the keys service, which is exactly what forging a MAC would need anyway.

Two more key ids are markers, never used to compute anything: their existence in the key store says the log was
anchored (has an authenticated head) and was anchored to the TPM counter. Someone who can rewrite the audit files
but not the key store cannot make the log look as if it had never been anchored.
"""

from __future__ import annotations

import hashlib
import hmac

from ..http.errors import HttpError
from ..keys.api import KeysApi

__all__ = ["ANCHORED_MARKER", "AUDIT_KEY_ID", "COUNTED_MARKER", "AuditKey", "has_marker", "load_audit_key",
           "set_marker"]

AUDIT_KEY_ID = "edgeward-audit"
ANCHORED_MARKER = "edgeward-audit-anchored"
COUNTED_MARKER = "edgeward-audit-counted"
_DERIVATION = b"edgeward audit log MAC key v1"


class AuditKey:
    """HMAC-SHA256 with the derived audit key; each use names its domain, so a MAC made for one purpose (a record)
    is never valid for another (a head)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the audit MAC key must be at least 32 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "AuditKey(<redacted>)"

    def mac(self, domain: str, *fields: object) -> str:
        message = "\n".join([f"edgeward audit {domain} v1", *(str(f) for f in fields)]).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, mac: str | None, domain: str, *fields: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(mac, self.mac(domain, *fields))


def _is_missing(e: HttpError) -> bool:
    return e.status == 404


async def load_audit_key(keys: KeysApi, *, create: bool) -> AuditKey | None:
    """The audit key (created the first time if ``create``); None if it does not exist and ``create`` is False."""
    if create:
        handle = await keys.create_key_if_not_exists(AUDIT_KEY_ID, "sign")
    else:
        try:
            handle = await keys.load_key(AUDIT_KEY_ID)
        except HttpError as e:
            if _is_missing(e):
                return None
            raise
    derived = await keys.create_derived_key(handle, _DERIVATION)
    return AuditKey(await keys.export_derived_key(derived))


async def has_marker(keys: KeysApi, marker: str) -> bool:
    try:
        await keys.load_key(marker)
    except HttpError as e:
        if _is_missing(e):
            return False
        raise
    return True


async def set_marker(keys: KeysApi, marker: str) -> None:
    await keys.create_key_if_not_exists(marker, "sign")
