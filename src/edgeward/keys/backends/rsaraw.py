"""RSA private-key operations with caller-chosen padding, for backends whose library only offers a raw op.

aziot's ``RSA-PKCS1`` encrypt is a private-key operation with PKCS#1 v1.5 *type 1* padding (what an OpenSSL engine
needs for RSA signing) and ``RSA-NO-PADDING`` is the bare modular exponentiation.
"""

from __future__ import annotations

import secrets
from math import gcd

from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import InvalidParameter
from ..model import RsaPadding

__all__ = ["pad_pkcs1_type1", "prepare_block", "private_op"]


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


def private_op(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """m^d mod n with base blinding, so timing does not depend on the secret exponent's use on ``block``."""
    priv = key.private_numbers()
    n, e, d = priv.public_numbers.n, priv.public_numbers.e, priv.d
    k = (n.bit_length() + 7) // 8
    m = int.from_bytes(block, "big")
    if m >= n:
        raise InvalidParameter("RSA input is not smaller than the modulus")
    while True:
        r = secrets.randbelow(n - 2) + 2
        if gcd(r, n) == 1:
            break
    blinded = (m * pow(r, e, n)) % n
    s = (pow(blinded, d, n) * pow(r, -1, n)) % n
    return s.to_bytes(k, "big")
