"""Keys on a PKCS#11 token, through python-pkcs11.

Why python-pkcs11 and not PyKCS11: both sign at about the same rate on SoftHSM2, but python-pkcs11 releases the GIL
inside every C call, so a slow hardware token does not freeze the event loop (``benchmarks/pkcs11_libraries.py``
measures both).

Objects are found by CKA_LABEL (= the key id, or the ``object`` of a preloaded key's URI). CKA_ID holds the key's
generation (random bytes at creation); for symmetric keys a trailing byte records the granted usage.
"""

from __future__ import annotations

import hashlib
import itertools
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from .. import aead
from ..errors import BackendUnavailable, InvalidParameter
from ..model import (
    HashAlg,
    KeyPairAlgorithm,
    KeyPairInfo,
    KeyUsage,
    PublicKey,
    RsaPadding,
    SignScheme,
    SymmetricKeyInfo,
)
from .base import KeyMissing, UnsupportedByBackend
from .rsaraw import prepare_block

__all__ = ["Pkcs11Backend", "Pkcs11Settings"]

T = TypeVar("T")

_CURVE_NAMES = {KeyPairAlgorithm.EC_P256: "secp256r1", KeyPairAlgorithm.EC_P384: "secp384r1"}

# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1): CKM_RSA_PKCS signs DigestInfo || digest.
_DIGEST_INFO = {
    HashAlg.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    HashAlg.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    HashAlg.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS = {
    HashAlg.SHA256: (Mechanism.SHA256, MGF.SHA256, 32),
    HashAlg.SHA384: (Mechanism.SHA384, MGF.SHA384, 48),
    HashAlg.SHA512: (Mechanism.SHA512, MGF.SHA512, 64),
}
_USAGE_BITS = {KeyUsage.DERIVE: 1, KeyUsage.ENCRYPT: 2, KeyUsage.SIGN: 4}

_libs: dict[str, tuple[Any, threading.Lock]] = {}
_libs_lock = threading.Lock()


def _load_lib(path: str) -> tuple[Any, threading.Lock]:
    """The process-wide handle of a PKCS#11 library and the lock that serializes calls into it.

    A library is initialized once per process. python-pkcs11 calls C_Initialize without CKF_OS_LOCKING_OK, which
    tells the library it will never be entered by two threads at once (SoftHSM2 then disables its own mutexes and
    crashes under concurrency), so every call into one library is serialized here. The GIL is still released
    during each call, so the event loop keeps running while a slow token works.
    """
    with _libs_lock:
        if path not in _libs:
            _libs[path] = (pkcs11.lib(path), threading.Lock())
        return _libs[path]


@dataclass(frozen=True)
class Pkcs11Settings:
    lib_path: str
    pin: str | None = field(repr=False)
    token_label: str | None = None
    slot_id: int | None = None
    pool_size: int = 4
    setting_name: str = "aziot_keys.pkcs11_lib_path"


def _usage_byte(usage: KeyUsage) -> int:
    return sum(bit for flag, bit in _USAGE_BITS.items() if flag in usage)


def _usage_of(byte: int) -> KeyUsage:
    usage = KeyUsage.NONE
    for flag, bit in _USAGE_BITS.items():
        if byte & bit:
            usage |= flag
    return usage


class Pkcs11Backend:
    name = "pkcs11"

    def __init__(self, settings: Pkcs11Settings) -> None:
        self.settings = settings
        where = (
            f"token label {settings.token_label!r}" if settings.token_label is not None
            else f"slot id {settings.slot_id}"
        )
        try:
            lib, self._call_lock = _load_lib(settings.lib_path)
        except p11e.PKCS11Error as e:
            raise BackendUnavailable(
                f"cannot load the PKCS#11 library {settings.lib_path!r} (setting {settings.setting_name}): {e}"
            ) from e
        try:
            if settings.token_label is not None:
                self._token = lib.get_token(token_label=settings.token_label)
            else:
                slots = [s for s in lib.get_slots(token_present=True) if s.slot_id == settings.slot_id]
                if not slots:
                    raise p11e.NoSuchToken(f"no slot {settings.slot_id}")
                self._token = slots[0].get_token()
        except (p11e.NoSuchToken, p11e.MultipleTokensReturned) as e:
            raise BackendUnavailable(
                f"no single PKCS#11 token with {where} in {settings.lib_path} (check the pkcs11 URI or "
                f"pkcs11_base_slot): {e or 'not found'}"
            ) from e
        try:
            with self._call_lock:
                self._login_session = self._token.open(rw=True, user_pin=settings.pin)
        except p11e.UserAlreadyLoggedIn:
            with self._call_lock:
                self._login_session = self._token.open(rw=True)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange) as e:
            raise BackendUnavailable(f"the PKCS#11 token with {where} rejected the PIN (pin-value)") from e
        except p11e.PinLocked as e:
            raise BackendUnavailable(f"the PKCS#11 token with {where} has a locked PIN") from e
        except p11e.PKCS11Error as e:
            raise BackendUnavailable(f"cannot open a session on the PKCS#11 token with {where}: {e!r}") from e
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._pool.put(self._login_session)
        self._opened = 1
        self._open_lock = threading.Lock()
        self._epoch = itertools.count()
        self._current_epoch = next(self._epoch)
        self._caches: dict[int, tuple[int, dict[tuple[ObjectClass, str], Any]]] = {}

    def __repr__(self) -> str:
        return f"Pkcs11Backend({self.settings.lib_path}, token={self.settings.token_label!r})"

    # session pool ----------------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[Any]:
        """Borrow a logged-in session; sessions are not thread-safe, so each is used by one thread at a time."""
        try:
            session = self._pool.get_nowait()
        except queue.Empty:
            with self._open_lock:
                can_open = self._opened < self.settings.pool_size
                if can_open:
                    self._opened += 1
            if can_open:
                with self._call_lock:
                    session = self._token.open(rw=True)
            else:
                session = self._pool.get()
        try:
            yield session
        finally:
            self._pool.put(session)

    def _invalidate(self) -> None:
        self._current_epoch = next(self._epoch)

    def _find(self, session: Any, cls: ObjectClass, label: str) -> Any | None:
        epoch, cache = self._caches.get(id(session), (-1, {}))
        if epoch != self._current_epoch:
            cache = {}
            self._caches[id(session)] = (self._current_epoch, cache)
        key = (cls, label)
        if key in cache:
            return cache[key]
        found = list(itertools.islice(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}), 2))
        if len(found) > 1:
            raise InvalidParameter(f"the token holds more than one {cls.name.lower()} labelled {label!r}")
        obj = found[0] if found else None
        if obj is not None:
            cache[key] = obj
        return obj

    def _with(self, fn: Callable[[Any], T]) -> T:
        try:
            with self._session() as session, self._call_lock:
                return fn(session)
        except (p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.SessionClosed, p11e.SessionHandleInvalid) as e:
            raise BackendUnavailable(f"the PKCS#11 token is not reachable: {type(e).__name__}") from e

    # key pairs -------------------------------------------------------------------------------------------
    def _destroy_all(self, session: Any, label: str, classes: tuple[ObjectClass, ...]) -> None:
        for cls in classes:
            for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label})):
                obj.destroy()
        self._invalidate()

    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        gen = secrets.token_bytes(8)

        def create(session: Any) -> None:
            self._destroy_all(session, ref, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY))
            common = {"store": True, "label": ref, "id": gen}
            private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
            try:
                if algorithm.is_ec:
                    params = session.create_domain_parameters(
                        KeyType.EC,
                        {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_NAMES[algorithm])},
                        local=True,
                    )
                    params.generate_keypair(
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        private_template=private, **common,
                    )
                else:
                    session.generate_keypair(
                        KeyType.RSA, algorithm.rsa_bits,
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        private_template=private, **common,
                    )
            except (p11e.MechanismInvalid, p11e.FunctionNotSupported, p11e.KeySizeRange,
                    p11e.DomainParamsInvalid, p11e.TemplateInconsistent) as e:
                raise UnsupportedByBackend(f"the token cannot create {algorithm} keys: {type(e).__name__}") from e
            self._invalidate()

        self._with(create)
        info = self.key_pair_info(ref)
        if info is None:
            raise BackendUnavailable(f"the token did not keep the new key pair {ref!r}")
        return info

    def _public_key(self, pub: Any) -> PublicKey:
        if pub[Attribute.KEY_TYPE] == KeyType.EC:
            loaded = serialization.load_der_public_key(encode_ec_public_key(pub))
        else:
            n = int.from_bytes(pub[Attribute.MODULUS], "big")
            e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
            loaded = rsa.RSAPublicNumbers(e, n).public_key()
        if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise InvalidParameter("unsupported public key type on the token")
        return loaded

    def key_pair_info(self, ref: str) -> KeyPairInfo | None:
        def info(session: Any) -> KeyPairInfo | None:
            priv = self._find(session, ObjectClass.PRIVATE_KEY, ref)
            if priv is None:
                return None
            pub = self._find(session, ObjectClass.PUBLIC_KEY, ref)
            if pub is None:
                raise InvalidParameter(f"the token has no public key object labelled {ref!r} beside the private key")
            public_key = self._public_key(pub)
            key_id = bytes(priv[Attribute.ID] or b"")
            generation = key_id.hex() if key_id else hashlib.sha256(
                public_key.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()[:16]
            try:
                algorithm = KeyPairAlgorithm.of_public_key(public_key)
            except ValueError as e:
                raise UnsupportedByBackend(str(e)) from e
            return KeyPairInfo(algorithm, generation, public_key)

        return self._with(info)

    def delete_key_pair(self, ref: str) -> None:
        self._with(lambda s: self._destroy_all(s, ref, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)))

    def move_key_pair(self, src: str, dst: str) -> None:
        def move(session: Any) -> None:
            objs = [o for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                    for o in session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: src})]
            if not objs:
                raise KeyMissing(src)
            # Drop the destination first: a crash after it leaves the source intact under its old name.
            self._destroy_all(session, dst, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY))
            for obj in objs:
                obj[Attribute.LABEL] = dst
            self._invalidate()

        self._with(move)

    def _private(self, session: Any, ref: str) -> Any:
        priv = self._find(session, ObjectClass.PRIVATE_KEY, ref)
        if priv is None:
            raise KeyMissing(ref)
        return priv

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        def sign(session: Any) -> bytes:
            priv = self._private(session, ref)
            key_type = priv.key_type  # read once when the object was found, not per signature
            if scheme.kind == "ecdsa":
                if key_type != KeyType.EC:
                    raise UnsupportedByBackend("ECDSA needs an EC key")
                raw = priv.sign(digest, mechanism=Mechanism.ECDSA)
                half = len(raw) // 2
                return utils.encode_dss_signature(
                    int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                )
            if key_type != KeyType.RSA:
                raise UnsupportedByBackend(f"{scheme.kind} needs an RSA key")
            if scheme.kind == "rsa-pkcs1v15":
                return bytes(priv.sign(_DIGEST_INFO[scheme.hash] + digest, mechanism=Mechanism.RSA_PKCS))
            if scheme.kind == "rsa-pss":
                return bytes(priv.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=_PSS[scheme.hash]))
            raise UnsupportedByBackend(f"unknown signature scheme {scheme.kind}")

        return self._with(sign)

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes:
        def encrypt(session: Any) -> bytes:
            priv = self._private(session, ref)
            if priv[Attribute.KEY_TYPE] != KeyType.RSA:
                raise UnsupportedByBackend("RSA encryption needs an RSA key")
            pub = self._find(session, ObjectClass.PUBLIC_KEY, ref)
            if pub is None:
                raise InvalidParameter(f"the token has no public key object labelled {ref!r}")
            k = (int.from_bytes(pub[Attribute.MODULUS], "big").bit_length() + 7) // 8
            block = prepare_block(data, k, padding)
            # The token pads (CKM_RSA_PKCS) or not (CKM_RSA_X_509); prepare_block only validated the length.
            if padding is RsaPadding.PKCS1:
                return bytes(priv.sign(data, mechanism=Mechanism.RSA_PKCS))
            return bytes(priv.sign(block, mechanism=Mechanism.RSA_X_509))

        return self._with(encrypt)

    # symmetric keys --------------------------------------------------------------------------------------
    def _secret(self, session: Any, ref: str) -> Any | None:
        return self._find(session, ObjectClass.SECRET_KEY, ref)

    def _store_secret(self, ref: str, usage: KeyUsage, value: bytes | None, length: int) -> SymmetricKeyInfo:
        if KeyUsage.ENCRYPT in usage and usage & (KeyUsage.SIGN | KeyUsage.DERIVE):
            raise UnsupportedByBackend("a token key is either an AES key (encrypt) or an HMAC key (sign, derive)")
        aes = KeyUsage.ENCRYPT in usage
        gen = secrets.token_bytes(8) + bytes([_usage_byte(usage)])
        caps = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT if aes else MechanismFlag.SIGN | MechanismFlag.VERIFY
        key_type = KeyType.AES if aes else KeyType.GENERIC_SECRET

        def store(session: Any) -> None:
            self._destroy_all(session, ref, (ObjectClass.SECRET_KEY,))
            template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
            try:
                if value is None:
                    key = session.generate_key(key_type, length * 8, id=gen, label=ref, store=True,
                                               capabilities=caps, template=template)
                else:
                    attrs = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: key_type,
                             Attribute.VALUE: value, Attribute.TOKEN: True, Attribute.LABEL: ref, Attribute.ID: gen,
                             Attribute.ENCRYPT: aes, Attribute.DECRYPT: aes, Attribute.SIGN: not aes,
                             Attribute.VERIFY: not aes, **template}
                    key = session.create_object(attrs)
                if aes:
                    # Like aziot: an AES key is only useful if the token also does AES-GCM; probe once.
                    key.encrypt(b"probe", mechanism=Mechanism.AES_GCM,
                                mechanism_param=pkcs11.GCMParams(b"\0" * 12, b"", 128))
            except (p11e.MechanismInvalid, p11e.FunctionNotSupported, p11e.KeySizeRange,
                    p11e.TemplateInconsistent, p11e.AttributeValueInvalid, p11e.KeyTypeInconsistent,
                    p11e.GeneralError) as e:
                self._destroy_all(session, ref, (ObjectClass.SECRET_KEY,))
                raise UnsupportedByBackend(f"the token refuses this symmetric key: {type(e).__name__}") from e
            self._invalidate()

        self._with(store)
        return SymmetricKeyInfo(gen.hex(), usage)

    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo:
        return self._store_secret(ref, usage, None, length)

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        return self._store_secret(ref, usage, key, len(key))

    def key_info(self, ref: str) -> SymmetricKeyInfo | None:
        def info(session: Any) -> SymmetricKeyInfo | None:
            key = self._secret(session, ref)
            if key is None:
                return None
            key_id = bytes(key[Attribute.ID] or b"")
            if len(key_id) == 9:
                usage = _usage_of(key_id[-1])
            else:  # a preloaded key we did not create: its attributes say what it can do
                usage = KeyUsage.ENCRYPT if key[Attribute.KEY_TYPE] == KeyType.AES else KeyUsage.SIGN | KeyUsage.DERIVE
            return SymmetricKeyInfo(key_id.hex() or hashlib.sha256(ref.encode()).hexdigest()[:16], usage)

        return self._with(info)

    def delete_key(self, ref: str) -> None:
        self._with(lambda s: self._destroy_all(s, ref, (ObjectClass.SECRET_KEY,)))

    def _require_secret(self, session: Any, ref: str) -> Any:
        key = self._secret(session, ref)
        if key is None:
            raise KeyMissing(ref)
        return key

    def hmac_sha256(self, ref: str, message: bytes) -> bytes:
        return self._with(lambda s: bytes(self._require_secret(s, ref).sign(message, mechanism=Mechanism.SHA256_HMAC)))

    def _gcm(self, iv: bytes, aad_: bytes) -> Any:
        if len(iv) > 12:
            raise InvalidParameter("keys on a PKCS#11 token take an AEAD iv of at most 12 bytes")
        return pkcs11.GCMParams(iv, aad_, 128)

    def aead_encrypt(self, ref: str, iv: bytes, aad_: bytes, plaintext: bytes) -> bytes:
        params = self._gcm(iv, aad_)
        body = self._with(lambda s: bytes(self._require_secret(s, ref).encrypt(
            plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)))
        return bytes([aead.V2]) + body

    def aead_decrypt(self, ref: str, iv: bytes, aad_: bytes, ciphertext: bytes) -> bytes:
        params = self._gcm(iv, aad_)
        try:
            body = aead.split_v2(ciphertext)
        except aead.AeadError as e:
            raise InvalidParameter(str(e)) from e

        def decrypt(session: Any) -> bytes:
            try:
                return bytes(self._require_secret(session, ref).decrypt(
                    body, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.GeneralError) as e:
                raise InvalidParameter("ciphertext does not decrypt: wrong key, iv or aad, or tampered") from e

        return self._with(decrypt)

    def close(self) -> None:
        while True:
            try:
                session = self._pool.get_nowait()
            except queue.Empty:
                break
            with suppress(p11e.PKCS11Error):
                session.close()
        self._caches.clear()
