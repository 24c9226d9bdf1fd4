"""Key vocabulary shared by the service, the wire layer and the backends."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "DEFAULT_ALGORITHM_ORDER",
    "Aead",
    "AeadSalted",
    "EcdsaDigest",
    "EcdsaMessage",
    "EncryptMechanism",
    "HashAlg",
    "HmacSha256",
    "KeyKind",
    "KeyPairAlgorithm",
    "KeyPairInfo",
    "KeyUsage",
    "PublicKey",
    "RsaNoPadding",
    "RsaPadding",
    "RsaPkcs1",
    "RsaPss",
    "SignMechanism",
    "SignScheme",
    "SymmetricKeyInfo",
    "parse_preferred_algorithms",
    "parse_usage",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyKind(enum.StrEnum):
    KEY_PAIR = "keypair"
    KEY = "key"
    DERIVED = "derived"


class KeyPairAlgorithm(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"

    @property
    def is_ec(self) -> bool:
        return self in (KeyPairAlgorithm.EC_P256, KeyPairAlgorithm.EC_P384)

    @property
    def curve(self) -> ec.EllipticCurve:
        if self is KeyPairAlgorithm.EC_P256:
            return ec.SECP256R1()
        if self is KeyPairAlgorithm.EC_P384:
            return ec.SECP384R1()
        raise ValueError(f"{self} is not an EC algorithm")

    @property
    def rsa_bits(self) -> int:
        return {KeyPairAlgorithm.RSA_2048: 2048, KeyPairAlgorithm.RSA_4096: 4096}[self]

    @classmethod
    def of_public_key(cls, key: PublicKey) -> KeyPairAlgorithm:
        if isinstance(key, ec.EllipticCurvePublicKey):
            by_curve = {"secp256r1": cls.EC_P256, "secp384r1": cls.EC_P384}
            if key.curve.name in by_curve:
                return by_curve[key.curve.name]
            raise ValueError(f"unsupported curve {key.curve.name}")
        by_bits = {2048: cls.RSA_2048, 4096: cls.RSA_4096}
        if key.key_size in by_bits:
            return by_bits[key.key_size]
        raise ValueError(f"unsupported RSA key size {key.key_size}")


# What "*" means: the strongest cheap choice first, as aziot's default does.
DEFAULT_ALGORITHM_ORDER = (
    KeyPairAlgorithm.EC_P256,
    KeyPairAlgorithm.RSA_2048,
    KeyPairAlgorithm.EC_P384,
    KeyPairAlgorithm.RSA_4096,
)


def parse_preferred_algorithms(value: str | None) -> list[KeyPairAlgorithm]:
    """Expand ``preferredAlgorithms`` into an ordered list; unknown components are skipped, as aziot does."""
    components = (value or "*").split(":")
    ordered: list[KeyPairAlgorithm] = []
    for component in components:
        choices = DEFAULT_ALGORITHM_ORDER if component == "*" else tuple(
            a for a in KeyPairAlgorithm if a.value == component
        )
        for alg in choices:
            if alg not in ordered:
                ordered.append(alg)
    return ordered


class KeyUsage(enum.Flag):
    NONE = 0
    DERIVE = enum.auto()
    ENCRYPT = enum.auto()
    SIGN = enum.auto()

    def names(self) -> str:
        return ",".join(n for n, f in (("derive", KeyUsage.DERIVE), ("encrypt", KeyUsage.ENCRYPT),
                                      ("sign", KeyUsage.SIGN)) if f in self)


def parse_usage(value: str) -> KeyUsage:
    usage = KeyUsage.NONE
    for part in value.split(","):
        name = part.strip()
        try:
            usage |= KeyUsage[name.upper()]
        except KeyError:
            raise ValueError(f"unknown key usage {name!r}; expected derive, encrypt or sign") from None
    if usage is KeyUsage.NONE:
        raise ValueError("key usage is empty; expected one or more of derive, encrypt, sign")
    return usage


class HashAlg(enum.StrEnum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


class RsaPadding(enum.StrEnum):
    PKCS1 = "pkcs1"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class SignScheme:
    """How a key pair signs a digest the service already computed."""

    kind: str  # "ecdsa" | "rsa-pkcs1v15" | "rsa-pss"
    hash: HashAlg = HashAlg.SHA256


@dataclass(frozen=True, slots=True)
class KeyPairInfo:
    """What a backend knows of a stored key pair. ``generation`` changes whenever the key is (re)created."""

    algorithm: KeyPairAlgorithm
    generation: str
    public_key: PublicKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class SymmetricKeyInfo:
    generation: str
    usage: KeyUsage


# Operations as the service sees them (the wire layer builds these from request bodies) -----------------------
@dataclass(frozen=True, slots=True)
class EcdsaDigest:
    digest: bytes


@dataclass(frozen=True, slots=True)
class EcdsaMessage:
    message: bytes
    hash: HashAlg = HashAlg.SHA256


@dataclass(frozen=True, slots=True)
class RsaPss:
    """RSA-PSS over a message (hashed here) or a digest; salt length equals the digest length."""

    data: bytes
    prehashed: bool = False
    hash: HashAlg = HashAlg.SHA256


@dataclass(frozen=True, slots=True)
class HmacSha256:
    message: bytes


SignMechanism = EcdsaDigest | EcdsaMessage | RsaPss | HmacSha256


@dataclass(frozen=True, slots=True)
class Aead:
    iv: bytes
    aad: bytes


@dataclass(frozen=True, slots=True)
class AeadSalted:
    """AES-256-GCM under a derived key whose nonce the keys service chooses (see :mod:`edgeward.keys.aead`); the
    caller's ``iv`` and ``aad`` are bound to the ciphertext but never used as the nonce."""

    iv: bytes
    aad: bytes


@dataclass(frozen=True, slots=True)
class RsaPkcs1:
    pass


@dataclass(frozen=True, slots=True)
class RsaNoPadding:
    pass


EncryptMechanism = Aead | AeadSalted | RsaPkcs1 | RsaNoPadding
