"""``/keys/ukey``, ``/keys/vkey`` and ``/keys/verify``: the tenant's bootstrap key, received and checked; its
payload decrypted and stored, never run.

The tenant splits a key K into U (sent by the tenant) and V (sent by the verifier once the device attested), each
RSA-OAEP-encrypted to the payload key; K = U xor V, confirmed by HMAC-SHA384(K, uuid) == auth_tag. The payload is
AES-256-GCM under K (iv 16 bytes, then ciphertext, then the 16-byte tag). A Keylime agent would unzip it and run its
``autorun.sh``: this one keeps the zip (0600) and reads exactly one thing out of it, in memory,
``RevocationNotifier-cert.crt``, the certificate revocation notices are signed with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..fsutil import atomic_write

__all__ = ["PayloadError", "Payloads"]

log = logging.getLogger(__name__)
_OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 -- Keylime's wire format
REVOCATION_CERT_NAME = "RevocationNotifier-cert.crt"
MAX_PAYLOAD = 8 << 20


class PayloadError(ValueError):
    """A key half or payload that does not decrypt or check: answered 400, nothing stored."""


class Payloads:
    def __init__(self, home: Path, key: rsa.RSAPrivateKey, agent_uuid: str) -> None:
        self.home = home
        self._key = key
        self._uuid = agent_uuid
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

    def ukey(self, body: Any) -> None:
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
        self._v = self._decrypt_half(body)
        self._combine()

    def _combine(self) -> None:
        if self._u is None or self._v is None or self._auth_tag is None:
            return
        k = bytes(a ^ b for a, b in zip(self._u, self._v, strict=True))
        expected = hmac.new(k, self._uuid.encode(), hashlib.sha384).hexdigest()
        if not hmac.compare_digest(expected, self._auth_tag):
            log.warning("keylime: U and V do not combine into the key the tenant's auth_tag names; waiting for others")
            return
        self._k = k
        if self._payload:
            self._store(k, self._payload)

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
            log.info("keylime: revocation notices will be checked against the payload's %s", REVOCATION_CERT_NAME)

    def verify(self, challenge: str) -> str | None:
        """HMAC-SHA384(K, challenge), or None before both halves arrived and combined."""
        if self._k is None:
            return None
        return hmac.new(self._k, challenge.encode(), hashlib.sha384).hexdigest()


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
