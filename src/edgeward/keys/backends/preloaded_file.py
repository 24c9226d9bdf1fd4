"""Keys preloaded from plain files named in configuration (``file://`` URIs), used in place, never rewritten.

A key pair file is a PEM private key; a symmetric key file holds the raw key bytes, as aziot's are.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import aead
from ..errors import InvalidParameter
from ..model import KeyPairAlgorithm, KeyPairInfo, KeyUsage, RsaPadding, SignScheme, SymmetricKeyInfo
from .base import KeyMissing, UnsupportedByBackend
from .rsaraw import in_interpreter, private_encrypt
from .software import PrivateKey, sign_with_private_key

__all__ = ["PreloadedFileBackend"]

MAX_KEY_FILE = 64 * 1024


class PreloadedFileBackend:
    """``ref`` is the file path. Generation is a hash of the file, so replacing the file invalidates handles."""

    name = "file"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[str, tuple[float, KeyPairInfo, PrivateKey]] = {}

    def __repr__(self) -> str:
        return "PreloadedFileBackend()"

    def _read(self, ref: str) -> bytes | None:
        path = Path(ref)
        try:
            if path.stat().st_size > MAX_KEY_FILE:
                raise InvalidParameter(f"preloaded key file {ref} is larger than {MAX_KEY_FILE} bytes")
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _pair(self, ref: str) -> tuple[KeyPairInfo, PrivateKey] | None:
        try:
            mtime = Path(ref).stat().st_mtime
        except FileNotFoundError:
            return None
        cached = self._pairs.get(ref)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
        data = self._read(ref)
        if data is None:
            return None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidParameter(f"preloaded key file {ref} is not an unencrypted PEM private key") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidParameter(f"preloaded key file {ref} holds an unsupported key type")
        try:
            algorithm = KeyPairAlgorithm.of_public_key(key.public_key())
        except ValueError as e:
            raise InvalidParameter(f"preloaded key file {ref}: {e}") from e
        info = KeyPairInfo(algorithm, hashlib.sha256(data).hexdigest()[:16], key.public_key())
        with self._lock:
            self._pairs[ref] = (mtime, info, key)
        return info, key

    def _require_pair(self, ref: str) -> PrivateKey:
        found = self._pair(ref)
        if found is None:
            raise KeyMissing(ref)
        return found[1]

    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        raise UnsupportedByBackend("preloaded keys are not created by Edgeward")

    def key_pair_info(self, ref: str) -> KeyPairInfo | None:
        found = self._pair(ref)
        return found[0] if found else None

    def delete_key_pair(self, ref: str) -> None:
        raise UnsupportedByBackend("preloaded keys are not deleted by Edgeward")

    def move_key_pair(self, src: str, dst: str) -> None:
        raise UnsupportedByBackend("preloaded keys cannot be moved")

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        return sign_with_private_key(self._require_pair(ref), digest, scheme)

    @staticmethod
    def rsa_private_encrypt_in_interpreter(data: bytes, padding: RsaPadding) -> bool:
        """True when :meth:`rsa_private_encrypt` computes in Python, holding the interpreter: the service lets one
        such call at a time take an executor thread (see ``KeyService.encrypt``)."""
        return in_interpreter(data, padding)

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes:
        key = self._require_pair(ref)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedByBackend("RSA encryption needs an RSA key")
        return private_encrypt(key, data, padding)

    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo:
        raise UnsupportedByBackend("preloaded keys are not created by Edgeward")

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        raise UnsupportedByBackend("preloaded keys are not replaced by Edgeward")

    def key_info(self, ref: str) -> SymmetricKeyInfo | None:
        data = self._read(ref)
        if not data:
            return None
        every_use = KeyUsage.DERIVE | KeyUsage.SIGN | KeyUsage.ENCRYPT
        return SymmetricKeyInfo(hashlib.sha256(data).hexdigest()[:16], every_use)

    def delete_key(self, ref: str) -> None:
        raise UnsupportedByBackend("preloaded keys are not deleted by Edgeward")

    def _secret(self, ref: str) -> bytes:
        data = self._read(ref)
        if not data:
            raise KeyMissing(ref)
        return data

    def hmac_sha256(self, ref: str, message: bytes) -> bytes:
        return hmac.new(self._secret(ref), message, hashlib.sha256).digest()

    def aead_encrypt(self, ref: str, iv: bytes, aad_: bytes, plaintext: bytes) -> bytes:
        return aead.seal(self._secret(ref), iv, aad_, plaintext)

    def aead_decrypt(self, ref: str, iv: bytes, aad_: bytes, ciphertext: bytes) -> bytes:
        return aead.open_(self._secret(ref), iv, aad_, ciphertext)

    def close(self) -> None:
        with self._lock:
            self._pairs.clear()
