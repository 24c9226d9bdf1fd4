"""aziot's AEAD ciphertext format, so secrets encrypted by IoT Edge decrypt here and the other way round.

``0x02 || ciphertext || tag(16)`` is written (the layout PKCS#11 AES-GCM produces natively); ``0x01 || tag(16) ||
ciphertext`` (IoT Edge 1.1) is still read. AES-256-GCM with the caller's IV as the GCM nonce.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["TAG_LENGTH", "V1", "V2", "AeadError", "open_", "seal", "split_v2"]

V1 = 0x01
V2 = 0x02
TAG_LENGTH = 16


class AeadError(ValueError):
    pass


def _cipher(key: bytes) -> AESGCM:
    if len(key) != 32:
        raise AeadError(f"AEAD needs a 256-bit key; this key is {len(key) * 8} bits")
    return AESGCM(key)


def _check_iv(iv: bytes) -> None:
    if not 8 <= len(iv) <= 128:
        raise AeadError(f"AEAD iv must be 8 to 128 bytes, got {len(iv)}")


def seal(key: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
    _check_iv(iv)
    return bytes([V2]) + _cipher(key).encrypt(iv, plaintext, aad)


def split_v2(ciphertext: bytes) -> bytes:
    """The GCM body (ciphertext || tag) of a v2 message, as a PKCS#11 token expects it."""
    if len(ciphertext) < 1 + TAG_LENGTH:
        raise AeadError("ciphertext is malformed: too short")
    if ciphertext[0] != V2:
        raise AeadError(f"ciphertext has unknown version {ciphertext[0]}")
    return ciphertext[1:]


def open_(key: bytes, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    _check_iv(iv)
    if len(ciphertext) < 1 + TAG_LENGTH:
        raise AeadError("ciphertext is malformed: too short")
    version, rest = ciphertext[0], ciphertext[1:]
    if version == V1:
        body = rest[TAG_LENGTH:] + rest[:TAG_LENGTH]
    elif version == V2:
        body = rest
    else:
        raise AeadError(f"ciphertext has unknown version {version}")
    try:
        return _cipher(key).decrypt(iv, body, aad)
    except InvalidTag:
        raise AeadError("ciphertext does not decrypt: wrong key, iv or aad, or tampered") from None
