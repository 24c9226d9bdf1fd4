"""Keys in files, encrypted at rest under the master key (AES-256-GCM, bound to the key's id and kind)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...fsutil import atomic_write, private_dir, remove_durably
from .. import aead
from ..errors import InvalidParameter
from ..model import (
    HashAlg,
    KeyPairAlgorithm,
    KeyPairInfo,
    KeyUsage,
    RsaPadding,
    SignScheme,
    SymmetricKeyInfo,
    parse_usage,
)
from .base import KeyMissing, UnsupportedByBackend
from .rsaraw import in_interpreter, private_encrypt

__all__ = ["SoftwareBackend", "StoreCorrupted"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_HASHES: dict[HashAlg, type[hashes.HashAlgorithm]] = {
    HashAlg.SHA256: hashes.SHA256,
    HashAlg.SHA384: hashes.SHA384,
    HashAlg.SHA512: hashes.SHA512,
}


class StoreCorrupted(Exception):
    """A key file exists but cannot be decrypted or parsed (wrong master key, tampering, damage)."""


def hash_of(alg: HashAlg) -> hashes.HashAlgorithm:
    return _HASHES[alg]()


@functools.cache
def _prehashed(alg: HashAlg) -> utils.Prehashed:
    return utils.Prehashed(hash_of(alg))


@functools.cache
def _ecdsa(alg: HashAlg) -> ec.ECDSA:
    """Made once per hash (it holds no state): every workload and certificate signature needs one."""
    return ec.ECDSA(_prehashed(alg))


def sign_with_private_key(key: PrivateKey, digest: bytes, scheme: SignScheme) -> bytes:
    """Sign a digest with an in-memory key: shared by every backend that holds keys in software."""
    prehashed = _prehashed(scheme.hash)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if scheme.kind != "ecdsa":
            raise UnsupportedByBackend(f"an EC key cannot sign with {scheme.kind}")
        return key.sign(digest, _ecdsa(scheme.hash))
    if scheme.kind == "rsa-pkcs1v15":
        return key.sign(digest, padding.PKCS1v15(), prehashed)
    if scheme.kind == "rsa-pss":
        pss = padding.PSS(mgf=padding.MGF1(hash_of(scheme.hash)), salt_length=padding.PSS.DIGEST_LENGTH)
        return key.sign(digest, pss, prehashed)
    raise UnsupportedByBackend(f"an RSA key cannot sign with {scheme.kind}")


def generate_private_key(algorithm: KeyPairAlgorithm) -> PrivateKey:
    if algorithm.is_ec:
        return ec.generate_private_key(algorithm.curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=algorithm.rsa_bits)


class SoftwareBackend:
    """Keys as files under ``homedir``; file names are hashes, so any key id is safe on disk."""

    name = "software"
    # HMAC and key info are in-memory once a key is cached (a first use reads one small file): cheap enough to run
    # on the event loop. Key generation and signatures still go through the executor.
    inline_fast_ops = True

    def __init__(self, homedir: Path, master_key: bytes) -> None:
        self.homedir = private_dir(homedir)
        self._pairs = private_dir(homedir / "keypairs")
        self._keys = private_dir(homedir / "keys")
        self._seal = AESGCM(master_key)
        self._lock = threading.Lock()
        self._pair_cache: dict[str, tuple[KeyPairInfo, PrivateKey]] = {}
        self._key_cache: dict[str, tuple[SymmetricKeyInfo, bytes]] = {}
        # Temp files of writes a crash interrupted: never read as keys, so they can go.
        for d in (self._pairs, self._keys):
            for stale in d.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"SoftwareBackend({self.homedir})"

    # storage ---------------------------------------------------------------------------------------------
    @staticmethod
    def _file_name(ref: str) -> str:
        return hashlib.sha256(ref.encode()).hexdigest() + ".json"

    def _path(self, kind: str, ref: str) -> Path:
        return (self._pairs if kind == "keypair" else self._keys) / self._file_name(ref)

    def _aad(self, kind: str, ref: str) -> bytes:
        return f"edgeward-key-v1\x00{kind}\x00{ref}".encode()

    def _write(self, kind: str, ref: str, secret: bytes, meta: dict[str, Any]) -> None:
        nonce = secrets.token_bytes(12)
        sealed = self._seal.encrypt(nonce, secret, self._aad(kind, ref))
        doc = dict(meta, v=1, kind=kind, nonce=base64.b64encode(nonce).decode(),
                   sealed=base64.b64encode(sealed).decode())
        atomic_write(self._path(kind, ref), json.dumps(doc).encode())

    def _read(self, kind: str, ref: str) -> tuple[bytes, dict[str, Any]] | None:
        path = self._path(kind, ref)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            secret = self._seal.decrypt(
                base64.b64decode(doc["nonce"]), base64.b64decode(doc["sealed"]), self._aad(kind, ref)
            )
        except InvalidTag as e:
            raise StoreCorrupted(
                f"key file {path.name} does not decrypt under the master key (wrong master key or tampered)"
            ) from e
        except (ValueError, KeyError, TypeError) as e:
            raise StoreCorrupted(f"key file {path.name} is damaged: {e}") from e
        return secret, doc

    # key pairs -------------------------------------------------------------------------------------------
    def _load_pair(self, ref: str) -> tuple[KeyPairInfo, PrivateKey] | None:
        cached = self._pair_cache.get(ref)
        if cached is not None:
            return cached
        found = self._read("keypair", ref)
        if found is None:
            return None
        der, doc = found
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise StoreCorrupted(f"key file for {ref!r} holds an unsupported key type")
        info = KeyPairInfo(KeyPairAlgorithm(doc["alg"]), str(doc["gen"]), key.public_key())
        with self._lock:
            self._pair_cache[ref] = (info, key)
        return info, key

    def _require_pair(self, ref: str) -> tuple[KeyPairInfo, PrivateKey]:
        found = self._load_pair(ref)
        if found is None:
            raise KeyMissing(ref)
        return found

    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        key = generate_private_key(algorithm)
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        generation = secrets.token_hex(8)
        self._write("keypair", ref, der, {"alg": algorithm.value, "gen": generation})
        info = KeyPairInfo(algorithm, generation, key.public_key())
        with self._lock:
            self._pair_cache[ref] = (info, key)
        return info

    def key_pair_info(self, ref: str) -> KeyPairInfo | None:
        found = self._load_pair(ref)
        return found[0] if found else None

    def delete_key_pair(self, ref: str) -> None:
        with self._lock:
            self._pair_cache.pop(ref, None)
        remove_durably(self._path("keypair", ref))

    def move_key_pair(self, src: str, dst: str) -> None:
        if src == dst:
            return
        found = self._read("keypair", src)
        if found is None:
            raise KeyMissing(src)
        der, doc = found
        # Re-seal under the new id (the id is bound into the ciphertext), then drop the old name: a crash in
        # between leaves the key under both names, never under neither.
        self._write("keypair", dst, der, {"alg": doc["alg"], "gen": doc["gen"]})
        with self._lock:
            self._pair_cache.pop(dst, None)
            self._pair_cache.pop(src, None)
        remove_durably(self._path("keypair", src))

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        _, key = self._require_pair(ref)
        return sign_with_private_key(key, digest, scheme)

    def sign_digest_if_cheap(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes | None:
        """An ECDSA signature with a key already in memory costs tens of microseconds, less than the thread hop
        the executor would add: signed here, on the caller's thread. None: not cached, or RSA (milliseconds)."""
        cached = self._pair_cache.get(ref)
        if cached is None or not isinstance(cached[1], ec.EllipticCurvePrivateKey):
            return None
        return sign_with_private_key(cached[1], digest, scheme)

    @staticmethod
    def rsa_private_encrypt_in_interpreter(data: bytes, padding: RsaPadding) -> bool:
        """True when :meth:`rsa_private_encrypt` computes in Python, holding the interpreter: the service lets one
        such call at a time take an executor thread (see ``KeyService.encrypt``)."""
        return in_interpreter(data, padding)

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes:
        _, key = self._require_pair(ref)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedByBackend("RSA encryption needs an RSA key")
        return private_encrypt(key, data, padding)

    # symmetric keys --------------------------------------------------------------------------------------
    def _store_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        generation = secrets.token_hex(8)
        self._write("key", ref, key, {"usage": usage.names(), "gen": generation})
        info = SymmetricKeyInfo(generation, usage)
        with self._lock:
            self._key_cache[ref] = (info, key)
        return info

    def _load_key(self, ref: str) -> tuple[SymmetricKeyInfo, bytes] | None:
        cached = self._key_cache.get(ref)
        if cached is not None:
            return cached
        found = self._read("key", ref)
        if found is None:
            return None
        key, doc = found
        entry = (SymmetricKeyInfo(str(doc["gen"]), parse_usage(doc["usage"])), key)
        with self._lock:
            self._key_cache[ref] = entry
        return entry

    def _require_key(self, ref: str) -> bytes:
        found = self._load_key(ref)
        if found is None:
            raise KeyMissing(ref)
        return found[1]

    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo:
        return self._store_key(ref, secrets.token_bytes(length), usage)

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        return self._store_key(ref, key, usage)

    def key_info(self, ref: str) -> SymmetricKeyInfo | None:
        found = self._load_key(ref)
        return found[0] if found else None

    def delete_key(self, ref: str) -> None:
        with self._lock:
            self._key_cache.pop(ref, None)
        remove_durably(self._path("key", ref))

    def hmac_sha256(self, ref: str, message: bytes) -> bytes:
        return hmac.new(self._require_key(ref), message, hashlib.sha256).digest()

    def aead_encrypt(self, ref: str, iv: bytes, aad_: bytes, plaintext: bytes) -> bytes:
        return aead.seal(self._require_key(ref), iv, aad_, plaintext)

    def aead_decrypt(self, ref: str, iv: bytes, aad_: bytes, ciphertext: bytes) -> bytes:
        try:
            return aead.open_(self._require_key(ref), iv, aad_, ciphertext)
        except aead.AeadError as e:
            raise InvalidParameter(str(e)) from e

    def close(self) -> None:
        with self._lock:
            self._pair_cache.clear()
            self._key_cache.clear()
