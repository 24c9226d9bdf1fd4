"""The software keys' RSA "encrypt" (a private-key operation): the C fast path for a DigestInfo gives the very bytes
the generic Python path gives, and the generic path (CRT, blinded, in small steps) is plain m^d mod n."""

from __future__ import annotations

import hashlib
import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeward.keys.backends import rsaraw
from edgeward.keys.backends.rsaraw import digest_info_hash, in_interpreter, prepare_block, private_encrypt, private_op
from edgeward.keys.errors import InvalidParameter
from edgeward.keys.model import RsaPadding

# DigestInfo prefixes written out independently of rsaraw's table (RFC 8017 section 9.2, note 1).
PREFIXES = {
    "sha1": "3021300906052b0e03021a05000414",
    "sha224": "302d300d06096086480165030402040500041c",
    "sha256": "3031300d060960864801650304020105000420",
    "sha384": "3041300d060960864801650304020205000430",
    "sha512": "3051300d060960864801650304020305000440",
}
KEY_SIZES = [2048, 3072, 4096]


@pytest.fixture(scope="module")
def keys() -> dict[int, rsa.RSAPrivateKey]:
    return {bits: rsa.generate_private_key(public_exponent=65537, key_size=bits) for bits in KEY_SIZES}


def _digest_info(name: str, message: bytes) -> bytes:
    return bytes.fromhex(PREFIXES[name]) + hashlib.new(name, message).digest()


def _textbook(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    priv = key.private_numbers()
    n = priv.public_numbers.n
    return pow(int.from_bytes(block, "big"), priv.d, n).to_bytes((n.bit_length() + 7) // 8, "big")


@pytest.mark.parametrize("bits", KEY_SIZES)
@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_the_fast_path_gives_the_generic_paths_bytes(keys: dict[int, rsa.RSAPrivateKey], bits: int,
                                                     name: str) -> None:
    key = keys[bits]
    data = _digest_info(name, secrets.token_bytes(40))
    assert digest_info_hash(data) is not None and digest_info_hash(data).name == name  # type: ignore[union-attr]
    assert not in_interpreter(data, RsaPadding.PKCS1)
    fast = private_encrypt(key, data, RsaPadding.PKCS1)
    generic = private_op(key, prepare_block(data, bits // 8, RsaPadding.PKCS1))
    assert fast == generic == _textbook(key, prepare_block(data, bits // 8, RsaPadding.PKCS1))


@pytest.mark.parametrize("bits", KEY_SIZES)
def test_the_generic_path_is_m_to_the_d(keys: dict[int, rsa.RSAPrivateKey], bits: int) -> None:
    key = keys[bits]
    n = key.private_numbers().public_numbers.n
    for _ in range(3):
        block = secrets.randbelow(n).to_bytes(bits // 8, "big")
        assert in_interpreter(block, RsaPadding.NONE)
        assert private_encrypt(key, block, RsaPadding.NONE) == _textbook(key, block)
    arbitrary = b"x" * 32
    assert in_interpreter(arbitrary, RsaPadding.PKCS1)
    assert private_encrypt(key, arbitrary, RsaPadding.PKCS1) == _textbook(
        key, prepare_block(arbitrary, bits // 8, RsaPadding.PKCS1))


@pytest.mark.parametrize("data", [
    _digest_info("sha256", b"m")[:-1],  # digest one byte short
    _digest_info("sha256", b"m") + b"\x00",  # one byte long
    bytes.fromhex("302f300b0609608648016503040201" "0420") + hashlib.sha256(b"m").digest(),  # no NULL parameters
    hashlib.sha256(b"m").digest(),  # a bare digest
    b"",
])
def test_anything_but_an_exact_digest_info_takes_the_generic_path(keys: dict[int, rsa.RSAPrivateKey],
                                                                  data: bytes) -> None:
    assert digest_info_hash(data) is None
    assert in_interpreter(data, RsaPadding.PKCS1)
    key = keys[2048]
    assert private_encrypt(key, data, RsaPadding.PKCS1) == _textbook(key, prepare_block(data, 256, RsaPadding.PKCS1))


def test_a_digest_info_with_no_padding_is_a_raw_block(keys: dict[int, rsa.RSAPrivateKey]) -> None:
    assert in_interpreter(_digest_info("sha256", b"m"), RsaPadding.NONE)
    with pytest.raises(InvalidParameter, match="exactly 256 bytes"):
        private_encrypt(keys[2048], _digest_info("sha256", b"m"), RsaPadding.NONE)


def test_a_faulty_result_never_leaves(keys: dict[int, rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong CRT half gives away a factor of n (gcd(s^e - m, n)): the check against e refuses it."""
    real = rsaraw._pow
    calls = []

    def faulty(base: int, exponent: int, modulus: int) -> int:
        calls.append(modulus)
        return real(base, exponent, modulus) + (1 if len(calls) == 1 else 0)

    monkeypatch.setattr(rsaraw, "_pow", faulty)
    with pytest.raises(RuntimeError, match="failed its check"):
        private_op(keys[2048], prepare_block(b"x" * 32, 256, RsaPadding.PKCS1))


def test_stepwise_pow_is_pow() -> None:
    for bits in (1, 5, 6, 64, 1024):
        m = secrets.randbits(1024) | 1
        x, e = secrets.randbelow(m), secrets.randbits(bits)
        assert rsaraw._pow(x, e, m) == pow(x, e, m)
    assert rsaraw._pow(7, 0, 11) == 1
