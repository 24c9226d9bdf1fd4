"""RSA private-key operations with caller-chosen padding, for backends whose library only offers a raw op.

aziot's ``RSA-PKCS1`` encrypt is a private-key operation with PKCS#1 v1.5 *type 1* padding (what an OpenSSL engine
needs for RSA signing) and ``RSA-NO-PADDING`` is the bare modular exponentiation.

Keys held in software (the software and preloaded-file backends) go through :func:`private_encrypt`. What aziot's
OpenSSL engine and TLS send with ``RSA-PKCS1`` is a DigestInfo; its padding is deterministic, so cryptography's
PKCS#1 v1.5 signature of that digest is the same bytes, computed in C with CRT and without holding the interpreter.
Anything else (``RSA-NO-PADDING``, ``RSA-PKCS1`` of arbitrary bytes) has no cryptography API and is computed here in
Python: with CRT, in small steps so other threads (the event loop) get the interpreter between them, and one at a
time in the process, so a caller looping on it costs everyone else at most one such operation's share.
"""

from __future__ import annotations

import secrets
import threading
from math import gcd

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa, utils

from ..errors import InvalidParameter
from ..model import RsaPadding

__all__ = ["digest_info_hash", "in_interpreter", "pad_pkcs1_type1", "prepare_block", "private_encrypt", "private_op"]

# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1): the AlgorithmIdentifier with NULL parameters, then the
# OCTET STRING header of the digest. Exactly what cryptography's PKCS#1 v1.5 signature of a prehashed digest wraps.
_DIGEST_INFO: dict[bytes, type[hashes.HashAlgorithm]] = {
    bytes.fromhex("3021300906052b0e03021a05000414"): hashes.SHA1,
    bytes.fromhex("302d300d06096086480165030402040500041c"): hashes.SHA224,
    bytes.fromhex("3031300d060960864801650304020105000420"): hashes.SHA256,
    bytes.fromhex("3041300d060960864801650304020205000430"): hashes.SHA384,
    bytes.fromhex("3051300d060960864801650304020305000440"): hashes.SHA512,
}
_WINDOW = 5  # exponent bits per step of _pow: a few modular products, tens of microseconds with the interpreter held
_EXPONENT_BLINDING_BITS = 64
# One Python-computed private operation at a time in the process: a caller looping on them (from many connections)
# takes the interpreter from everyone else for one operation's share, not for one per connection.
_ONE_AT_A_TIME = threading.Lock()


def pad_pkcs1_type1(data: bytes, k: int) -> bytes:
    """EMSA-PKCS1-v1_5 block type 1: ``00 01 FF..FF 00 data``, at least 8 bytes of FF."""
    if len(data) > k - 11:
        raise InvalidParameter(f"data too long for RSA-PKCS1 with a {k * 8}-bit key: at most {k - 11} bytes")
    return b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data


def prepare_block(data: bytes, k: int, padding: RsaPadding) -> bytes:
    """The k-byte block to exponentiate, validated: the same rules for every backend."""
    if padding is RsaPadding.PKCS1:
        return pad_pkcs1_type1(data, k)
    if len(data) != k:
        raise InvalidParameter(f"RSA-NO-PADDING needs exactly {k} bytes of input, got {len(data)}")
    return data


def digest_info_hash(data: bytes) -> hashes.HashAlgorithm | None:
    """The hash whose DigestInfo ``data`` is (prefix and digest length exact), or None."""
    for prefix, alg in _DIGEST_INFO.items():
        if data.startswith(prefix):
            hash_ = alg()
            return hash_ if len(data) == len(prefix) + hash_.digest_size else None
    return None


def in_interpreter(data: bytes, padding: RsaPadding) -> bool:
    """Whether :func:`private_encrypt` computes this in Python (else in C, without holding the interpreter)."""
    return padding is not RsaPadding.PKCS1 or digest_info_hash(data) is None


def private_encrypt(key: rsa.RSAPrivateKey, data: bytes, padding: RsaPadding) -> bytes:
    """aziot's RSA "encrypt" (a private-key operation) with a key held in memory."""
    k = key.key_size // 8
    hash_ = digest_info_hash(data) if padding is RsaPadding.PKCS1 else None
    if hash_ is not None and key.key_size % 8 == 0 and len(data) <= k - 11:
        digest = data[len(data) - hash_.digest_size:]
        return key.sign(digest, asym_padding.PKCS1v15(), utils.Prehashed(hash_))
    return private_op(key, prepare_block(data, k, padding))


def _pow(base: int, exponent: int, modulus: int) -> int:
    """``pow(base, exponent, modulus)`` as a fixed-window loop: the same work as the builtin (measured), but the
    interpreter can switch threads between steps, where the builtin holds it for the whole exponentiation (34 ms
    for half of an RSA-4096 key on a slow core). Every step does the same products whatever the exponent's bits."""
    size = 1 << _WINDOW
    mask = size - 1
    table = [1] * size
    for i in range(1, size):
        table[i] = table[i - 1] * base % modulus
    result = 1
    top = -(-exponent.bit_length() // _WINDOW) * _WINDOW
    for shift in range(top - _WINDOW, -1, -_WINDOW):
        result = pow(result, size, modulus) * table[(exponent >> shift) & mask] % modulus
    return result


def private_op(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """m^d mod n by CRT, with base blinding (timing does not depend on ``block``) and exponent blinding (nor, over
    many calls, on d's bits); the result is checked with the public exponent before it leaves (a faulty CRT half
    would otherwise give away a factor of n)."""
    priv = key.private_numbers()
    n, e = priv.public_numbers.n, priv.public_numbers.e
    p, q = priv.p, priv.q
    k = (n.bit_length() + 7) // 8
    m = int.from_bytes(block, "big")
    if m >= n:
        raise InvalidParameter("RSA input is not smaller than the modulus")
    with _ONE_AT_A_TIME:
        while True:
            r = secrets.randbelow(n - 2) + 2
            if gcd(r, n) == 1:
                break
        blinded = (m * pow(r, e, n)) % n
        dp = priv.dmp1 + (p - 1) * secrets.randbits(_EXPONENT_BLINDING_BITS)
        dq = priv.dmq1 + (q - 1) * secrets.randbits(_EXPONENT_BLINDING_BITS)
        m1 = _pow(blinded % p, dp, p)
        m2 = _pow(blinded % q, dq, q)
        h = (priv.iqmp * (m1 - m2)) % p
        s = ((m2 + h * q) * pow(r, -1, n)) % n
        if pow(s, e, n) != m:
            raise RuntimeError("RSA private operation failed its check against the public key")
    return s.to_bytes(k, "big")
