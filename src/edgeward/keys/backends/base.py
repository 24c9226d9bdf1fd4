"""The hazard boundary: the only interface through which key material is used.

A backend stores keys under a backend-local reference (a file name, a PKCS#11 label, a TPM blob name) and performs
primitive operations on them. It never returns private key bytes, except ``export``-able derived material, which is
computed above this layer from an HMAC. All methods are blocking; the service calls them through its executor.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..model import KeyPairAlgorithm, KeyPairInfo, KeyUsage, RsaPadding, SignScheme, SymmetricKeyInfo

__all__ = ["KeyBackend", "KeyMissing", "UnsupportedByBackend"]


class KeyMissing(KeyError):
    """The operation named a key the backend does not hold (deleted, or never created)."""


class UnsupportedByBackend(Exception):
    """The backend cannot do this (algorithm, mechanism or key type); the caller may try another way."""


@runtime_checkable
class KeyBackend(Protocol):
    """One store of keys. ``name`` appears in logs and status output.

    A backend whose calls all serialize on one device (a PKCS#11 library, a TPM) also has ``serial_device``, an
    object naming that device: the service then lets one key generation at a time wait for it (see
    ``KeyService._generate``). Backends without it run calls in parallel.

    A backend that computes some RSA private operations in Python (keys held in software) also has
    ``rsa_private_encrypt_in_interpreter(data, padding) -> bool``: the service runs one such call at a time and
    lets the others wait without an executor thread (see ``KeyService.encrypt``). Devices do raw ops themselves.
    """

    name: str

    # key pairs
    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        """Create a key pair; raise UnsupportedByBackend if this algorithm is not available."""
        ...

    def key_pair_info(self, ref: str) -> KeyPairInfo | None: ...

    def delete_key_pair(self, ref: str) -> None: ...

    def move_key_pair(self, src: str, dst: str) -> None:
        """Rename src to dst, replacing dst; after a crash either the old or the new name holds the key."""
        ...

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        """Sign a precomputed digest; ECDSA signatures are DER-encoded."""
        ...

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes: ...

    # symmetric keys
    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo: ...

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo: ...

    def key_info(self, ref: str) -> SymmetricKeyInfo | None: ...

    def delete_key(self, ref: str) -> None: ...

    def hmac_sha256(self, ref: str, message: bytes) -> bytes: ...

    def aead_encrypt(self, ref: str, iv: bytes, aad: bytes, plaintext: bytes) -> bytes: ...

    def aead_decrypt(self, ref: str, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes: ...

    def close(self) -> None: ...
