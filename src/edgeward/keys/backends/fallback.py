"""Symmetric keys the primary backend refuses live in a secondary one (as aziot does for tpm2-pkcs11 tokens).

Key pairs always stay in the primary. Lookups try the primary first, so a key never exists in both for long: creating
in one deletes any stale copy in the other.
"""

from __future__ import annotations

import logging

from ...repeat_log import RepeatLog
from ..model import KeyPairAlgorithm, KeyPairInfo, KeyUsage, RsaPadding, SignScheme, SymmetricKeyInfo
from .base import KeyBackend, KeyMissing, UnsupportedByBackend

__all__ = ["SymmetricFallback"]

log = logging.getLogger(__name__)
# A principal re-importing its own key in a loop would write this line per request: bounded, first per key shown
_KEPT_LOG = RepeatLog(log, "symmetric key kept in the secondary store")


class SymmetricFallback:
    def __init__(self, primary: KeyBackend, secondary: KeyBackend) -> None:
        self.primary = primary
        self.secondary = secondary
        self.name = f"{primary.name}+{secondary.name}"
        self.serial_device: object | None = getattr(primary, "serial_device", None)

    def __repr__(self) -> str:
        return f"SymmetricFallback({self.primary!r}, {self.secondary!r})"

    # key pairs: primary only
    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        return self.primary.create_key_pair(ref, algorithm)

    def key_pair_info(self, ref: str) -> KeyPairInfo | None:
        return self.primary.key_pair_info(ref)

    def delete_key_pair(self, ref: str) -> None:
        self.primary.delete_key_pair(ref)

    def move_key_pair(self, src: str, dst: str) -> None:
        self.primary.move_key_pair(src, dst)

    def sign_digest_if_cheap(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes | None:
        cheap = getattr(self.primary, "sign_digest_if_cheap", None)
        return cheap(ref, digest, scheme) if cheap is not None else None

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        return self.primary.sign_digest(ref, digest, scheme)

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes:
        return self.primary.rsa_private_encrypt(ref, data, padding)

    # symmetric keys: wherever they landed
    def _holder(self, ref: str) -> KeyBackend | None:
        if self.primary.key_info(ref) is not None:
            return self.primary
        if self.secondary.key_info(ref) is not None:
            return self.secondary
        return None

    def _require(self, ref: str) -> KeyBackend:
        holder = self._holder(ref)
        if holder is None:
            raise KeyMissing(ref)
        return holder

    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo:
        try:
            info = self.primary.create_key(ref, length, usage)
        except UnsupportedByBackend as e:
            _KEPT_LOG.log(ref, "symmetric key %r kept in %s: %s", ref, self.secondary.name, e)
            self.primary.delete_key(ref)
            return self.secondary.create_key(ref, length, usage)
        self.secondary.delete_key(ref)
        return info

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        try:
            info = self.primary.import_key(ref, key, usage)
        except UnsupportedByBackend as e:
            _KEPT_LOG.log(ref, "symmetric key %r kept in %s: %s", ref, self.secondary.name, e)
            self.primary.delete_key(ref)
            return self.secondary.import_key(ref, key, usage)
        self.secondary.delete_key(ref)
        return info

    def key_info(self, ref: str) -> SymmetricKeyInfo | None:
        holder = self._holder(ref)
        return holder.key_info(ref) if holder else None

    def delete_key(self, ref: str) -> None:
        self.primary.delete_key(ref)
        self.secondary.delete_key(ref)

    def hmac_sha256(self, ref: str, message: bytes) -> bytes:
        return self._require(ref).hmac_sha256(ref, message)

    def aead_encrypt(self, ref: str, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._require(ref).aead_encrypt(ref, iv, aad, plaintext)

    def aead_decrypt(self, ref: str, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        return self._require(ref).aead_decrypt(ref, iv, aad, ciphertext)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()
