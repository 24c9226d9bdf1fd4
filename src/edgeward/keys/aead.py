"""AEAD ciphertext formats: aziot's, so secrets encrypted by IoT Edge decrypt here and the other way round, and
Edgeward's salted one, whose nonces no caller can choose.

aziot's (algorithm ``AEAD``): ``0x02 || ciphertext || tag(16)`` is written (the layout PKCS#11 AES-GCM produces
natively); ``0x01 || tag(16) || ciphertext`` (IoT Edge 1.1) is still read. AES-256-GCM with the caller's IV as the
GCM nonce, so a caller that repeats an IV repeats a (key, nonce) pair: the keystream and the GHASH key leak.

Salted (algorithm ``AEAD-SALTED``, Edgeward's keys api-version): ``0x03 || salt(32) || ciphertext || tag(16)``.
The salt is random per message; the message's AES-256-GCM key and nonce are derived from the salt under the
caller's key, so no IV a caller passes can make two messages share a (key, nonce) pair. The caller's IV and
associated data are still bound (length-prefixed, with the header) as GCM associated data, so a ciphertext opens
only with the IV and associated data it was sealed with, as IoT Edge's callers expect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "IMPORTED_MASTER_KEY_ID",
    "RESERVED_PREFIX",
    "SALT_LENGTH",
    "TAG_LENGTH",
    "V1",
    "V2",
    "V3",
    "AeadError",
    "is_reserved",
    "length_prefixed",
    "open_",
    "open_salted",
    "salted_key_input",
    "seal",
    "seal_salted",
    "split_v2",
]

# The key IoT Edge keeps its master encryption key under (1.5's id; a 1.1 device's key is imported there by
# ``imported_master_encryption_key``): what modules sealed with it is in the v1 or v2 format, with the module's
# name and generation id, concatenated, as associated data.
IMPORTED_MASTER_KEY_ID = "iotedge_master_encryption_id"
V1 = 0x01
V2 = 0x02
V3 = 0x03
TAG_LENGTH = 16
SALT_LENGTH = 32
# The salted scheme's key is HMAC(base key, RESERVED_PREFIX || derivation data), computed inside the keys service.
# No route hands out an HMAC of the base key over an input with this prefix (derive, export and sign refuse it),
# so that key never leaves the service.
RESERVED_PREFIX = b"edgeward-aead-salted-v1\x00"


class AeadError(ValueError):
    pass


def length_prefixed(*parts: bytes) -> bytes:
    """An unambiguous encoding of several byte strings (each preceded by its 4-byte big-endian length)."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def is_reserved(message: bytes) -> bool:
    return message.startswith(RESERVED_PREFIX)


def salted_key_input(derivation: bytes) -> bytes:
    """What the base key HMACs to make a derived handle's salted-AEAD key (never its exportable derived key)."""
    return RESERVED_PREFIX + derivation


def _cipher(key: bytes) -> AESGCM:
    if len(key) != 32:
        raise AeadError(f"AEAD needs a 256-bit key; this key is {len(key) * 8} bits")
    return AESGCM(key)


MAX_IV = 128  # a bound on what a caller may send


def _check_iv(iv: bytes) -> None:
    """aziot's format: the IV is the GCM nonce. aziot-keys hands any non-empty one to OpenSSL; the cryptography
    package takes 8 to 128 bytes, so 1 to 7 are refused here (a documented difference: no known client sends one;
    the edge agent sends 32)."""
    if not 8 <= len(iv) <= MAX_IV:
        raise AeadError(f"AEAD iv must be 8 to {MAX_IV} bytes, got {len(iv)}")


def _check_salted_iv(iv: bytes) -> None:
    """The salted format only binds the IV as associated data (the nonce comes from the salt): any non-empty one,
    as aziot-keys takes."""
    if not 1 <= len(iv) <= MAX_IV:
        raise AeadError(f"AEAD iv must be 1 to {MAX_IV} bytes, got {len(iv)}")


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


def _message_cipher(key: bytes, salt: bytes) -> tuple[AESGCM, bytes]:
    """The one-message key and nonce: HMAC-SHA512(key, label || salt), split 32 + 12 bytes."""
    _cipher(key)  # the length check
    okm = hmac.new(key, b"edgeward-aead-salted-message\x00" + salt, hashlib.sha512).digest()
    return AESGCM(okm[:32]), okm[32:44]


def seal_salted(key: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
    _check_salted_iv(iv)
    header = bytes([V3]) + secrets.token_bytes(SALT_LENGTH)
    cipher, nonce = _message_cipher(key, header[1:])
    return header + cipher.encrypt(nonce, plaintext, length_prefixed(header, iv, aad))


def open_salted(key: bytes, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    _check_salted_iv(iv)
    if not ciphertext:
        raise AeadError("ciphertext is malformed: empty")
    if ciphertext[0] != V3:
        raise AeadError(f"ciphertext has version {ciphertext[0]}; AEAD-SALTED opens version {V3} only")
    if len(ciphertext) < 1 + SALT_LENGTH + TAG_LENGTH:
        raise AeadError("ciphertext is malformed: too short")
    header, body = ciphertext[:1 + SALT_LENGTH], ciphertext[1 + SALT_LENGTH:]
    cipher, nonce = _message_cipher(key, header[1:])
    try:
        return cipher.decrypt(nonce, body, length_prefixed(header, iv, aad))
    except InvalidTag:
        raise AeadError("ciphertext does not decrypt: wrong key, iv or aad, or tampered") from None
