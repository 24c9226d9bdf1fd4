"""The keys service: authorization, handles and dispatch to backends. Backend-agnostic; holds no key material
except derived keys, which are exportable by design, and the salted-AEAD keys of derived handles, which are not (they
are computed per call and never returned: see :mod:`.aead`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..executor import BlockingExecutor
from ..http.peercred import Caller
from ..keyedlocks import KeyedLocks
from . import aead
from .api import PUBLIC_PARAMETERS, KeysApi
from .backends.base import KeyMissing, UnsupportedByBackend
from .errors import InvalidHandle, InvalidParameter, KeyNotFound, NotAuthorized, UnsupportedOperation
from .handles import HandleClaims, KeyHandleCodec
from .locations import KeyLocation, KeyLocator
from .model import (
    Aead,
    AeadSalted,
    EcdsaDigest,
    EcdsaMessage,
    EncryptMechanism,
    HashAlg,
    HmacSha256,
    KeyKind,
    KeyPairAlgorithm,
    KeyPairInfo,
    KeyUsage,
    RsaNoPadding,
    RsaPadding,
    RsaPkcs1,
    SignMechanism,
    SignScheme,
    SymmetricKeyInfo,
    parse_preferred_algorithms,
    parse_usage,
)
from .principals import PrincipalTable

__all__ = ["MAX_KEY_ID_LENGTH", "KeyService", "validate_key_id"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_KEY_ID_LENGTH = 512
GENERATED_KEY_LENGTH = 32  # HMAC-SHA256 and AES-256-GCM both want 256-bit keys
MAX_TTL_SECONDS = 10 * 365 * 86400
# aziot treats "sign" and "derive" as one usage (an HMAC key); only "encrypt" (an AES key) is distinct.
HMAC_USAGE = KeyUsage.SIGN | KeyUsage.DERIVE
MAX_DERIVED_CACHED = 4096  # derived keys kept (a module generation's SAS keys each take one)

# DER encodings of the curve OIDs, as aziot's /parameters/ec-curve-oid returns them.
_CURVE_OID_DER = {
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
    "secp384r1": bytes.fromhex("06052b81040022"),
}
_HASHERS = {HashAlg.SHA256: hashlib.sha256, HashAlg.SHA384: hashlib.sha384, HashAlg.SHA512: hashlib.sha512}


def validate_key_id(key_id: str) -> str:
    if not key_id:
        raise InvalidParameter("keyId must not be empty")
    if len(key_id) > MAX_KEY_ID_LENGTH:
        raise InvalidParameter(f"keyId is longer than {MAX_KEY_ID_LENGTH} characters")
    if any(ord(c) < 0x20 for c in key_id):
        raise InvalidParameter("keyId must not contain control characters")
    return key_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class KeyService:
    """One instance per daemon. Callers get a :class:`KeysApi` view bound to their credentials."""

    def __init__(
        self,
        locator: KeyLocator,
        handles: KeyHandleCodec,
        principals: PrincipalTable,
        executor: BlockingExecutor,
        default_ttl_seconds: int | None = None,
    ) -> None:
        self.locator = locator
        self.handles = handles
        self.principals = principals
        self.executor = executor
        self.default_ttl_seconds = default_ttl_seconds
        # Generation of each key this process has seen, so the hot path (sign) needs no backend lookup. Every
        # mutation goes through this service, which keeps the cache true.
        self._generations: dict[tuple[KeyKind, str], str] = {}
        # Derived keys by (key id, generation, derivation data): a module's SAS sign otherwise computes its key again
        # (an HMAC of the master) on every call. Entries of a key go when it is deleted or replaced (a new
        # generation never matches), and the whole table when it outgrows its bound.
        self._derived: dict[tuple[str, str, bytes], bytes] = {}
        self._locks = KeyedLocks()
        # Key generation, fair to everyone else on a device that runs one call at a time (a PKCS#11 library, a
        # TPM): one generation at a time per caller uid, so one principal cannot fill the queue, and one at a time
        # per device, so generations waiting for it hold no executor thread and every short operation (sign, HMAC)
        # waits for at most the one generation running (the backend's PriorityLock lets it go before the next).
        self._makers = KeyedLocks()
        self._devices = KeyedLocks()
        # RSA private operations a backend computes in Python (software keys, not a DigestInfo): one at a time in the
        # process (the backend's own lock) and waited for here, one per caller uid, so the waiting ones hold no
        # executor thread and a caller looping on them from many connections puts one call ahead of anyone else's.
        self._interpreter_callers = KeyedLocks()
        self._interpreter = asyncio.Lock()

    def for_caller(self, caller: Caller) -> KeysApi:
        return _CallerView(self, caller)

    def close(self) -> None:
        for backend in self.locator.backends():
            backend.close()

    # helpers ---------------------------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await self._mapped(self.executor.run(fn, *args))

    @staticmethod
    async def _mapped(call: Awaitable[T]) -> T:
        """A backend call's errors as the API answers them."""
        try:
            return await call
        except UnsupportedByBackend as e:
            raise UnsupportedOperation(str(e)) from e
        except KeyMissing as e:
            raise InvalidHandle(f"the key {e.args[0]!r} no longer exists in its store") from None

    async def _run_fast(self, backend: object, fn: Callable[..., T], *args: object) -> T:
        """Operations a backend declares cheap and non-blocking (in-memory HMAC, cached key info) run on the event
        loop: a thread hop costs more than they do (measured: 1.7x the workload sign throughput)."""
        if not getattr(backend, "inline_fast_ops", False):
            return await self._run(fn, *args)
        return self._inline(fn, *args)

    @staticmethod
    def _inline(fn: Callable[..., T], *args: object) -> T:
        """A backend call on the event loop, its errors mapped as the executor path maps them."""
        try:
            return fn(*args)
        except UnsupportedByBackend as e:
            raise UnsupportedOperation(str(e)) from e
        except KeyMissing as e:
            raise InvalidHandle(f"the key {e.args[0]!r} no longer exists in its store") from None

    async def _generate(self, caller: Caller, backend: object, fn: Callable[..., T], *args: object,
                        bulk: bool = False) -> T:
        """A key-making backend call (``fn``), behind the caller's and the device's one-at-a-time gates. ``bulk``
        (a key pair: up to seconds of CPU or device time) runs on the executor's bulk threads, so generations never
        hold the threads short calls (a key lookup, a signature, a symmetric key's creation) need."""
        run = self.executor.run_bulk if bulk else self.executor.run
        async with self._makers.hold(caller.uid):
            device = getattr(backend, "serial_device", None)
            if device is None:  # software keys: only the per-caller bound applies (and the bulk pool's size)
                return await run(fn, *args)
            async with self._devices.hold(device):
                return await run(fn, *args)

    def authorize(self, caller: Caller, key_id: str) -> None:
        if not self.principals.allows(caller.uid, key_id):
            log.debug("uid %d refused access to key %r", caller.uid, key_id)  # the guard logs the refusal
            raise NotAuthorized(f"uid {caller.uid} is not authorized for key {key_id!r}")

    def _expiry(self, ttl_seconds: int | None) -> int | None:
        ttl = ttl_seconds if ttl_seconds is not None else self.default_ttl_seconds
        if ttl is None:
            return None
        if not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidParameter(f"handle lifetime must be between 1 and {MAX_TTL_SECONDS} seconds")
        # exp is a whole second: rounded up, so a handle lives at least the seconds asked (at most one more)
        return math.ceil(time.time()) + ttl

    def _issue(self, kind: KeyKind, key_id: str, generation: str, ttl_seconds: int | None,
               derivation: bytes | None = None) -> str:
        self._generations[(kind, key_id)] = generation
        return self.handles.issue(HandleClaims(kind, key_id, generation, self._expiry(ttl_seconds), derivation))

    async def _current_generation(self, kind: KeyKind, key_id: str) -> str | None:
        cached = self._generations.get((kind, key_id))
        if cached is not None:
            return cached
        loc = self.locator.locate(key_id)
        info: KeyPairInfo | SymmetricKeyInfo | None
        if kind is KeyKind.KEY_PAIR:
            info = await self._run_fast(loc.backend, loc.backend.key_pair_info, loc.ref)
        else:
            info = await self._run_fast(loc.backend, loc.backend.key_info, loc.ref)
        if info is None:
            return None
        self._generations[(kind, key_id)] = info.generation
        return info.generation

    async def resolve(self, handle: str, *kinds: KeyKind) -> tuple[HandleClaims, KeyLocation]:
        """Verify a handle and that its key still exists in the generation the handle was issued for."""
        claims = self.handles.verify(handle)
        if claims.kind not in kinds:
            raise InvalidParameter(
                f"this operation needs a handle to a {' or '.join(k.value for k in kinds)}, "
                f"not to a {claims.kind.value}"
            )
        base_kind = KeyKind.KEY if claims.kind is KeyKind.DERIVED else claims.kind
        current = await self._current_generation(base_kind, claims.key_id)
        if current is None:
            raise InvalidHandle(f"key handle names key {claims.key_id!r}, which no longer exists")
        if current != claims.generation:
            raise InvalidHandle(f"key handle names an earlier key {claims.key_id!r} that was since replaced")
        return claims, self.locator.locate(claims.key_id)

    def _forget(self, key_id: str) -> None:
        for kind in KeyKind:
            self._generations.pop((kind, key_id), None)
        for entry in [k for k in self._derived if k[0] == key_id]:
            del self._derived[entry]

    async def _symmetric_info(self, loc: KeyLocation) -> SymmetricKeyInfo:
        info = await self._run(loc.backend.key_info, loc.ref)
        if info is None:
            raise InvalidHandle("key handle names a key that no longer exists")
        return info

    # key pairs -------------------------------------------------------------------------------------------
    async def create_key_pair_if_not_exists(
        self, caller: Caller, key_id: str, preferred_algorithms: str | None, ttl_seconds: int | None
    ) -> str:
        validate_key_id(key_id)
        self.authorize(caller, key_id)
        algorithms = parse_preferred_algorithms(preferred_algorithms)
        if not algorithms:
            raise InvalidParameter(
                f"preferredAlgorithms {preferred_algorithms!r} names no supported algorithm; "
                f"use {', '.join(a.value for a in KeyPairAlgorithm)} or *"
            )
        async with self._locks.hold(key_id):
            loc = self.locator.locate(key_id)
            info = await self._run(loc.backend.key_pair_info, loc.ref)
            if info is None:
                if loc.preloaded:
                    raise KeyNotFound(f"preloaded key pair {key_id!r} does not exist at its configured location")
                reasons = []
                for algorithm in algorithms:
                    try:
                        info = await self._generate(caller, loc.backend, loc.backend.create_key_pair, loc.ref,
                                                    algorithm, bulk=True)
                        break
                    except UnsupportedByBackend as e:
                        reasons.append(f"{algorithm}: {e}")
                if info is None:
                    raise UnsupportedOperation(
                        f"the {loc.backend.name} backend could not create key pair {key_id!r}: "
                        + "; ".join(reasons)
                    )
                log.debug("created key pair %r (%s) in %s", key_id, info.algorithm, loc.backend.name)
            return self._issue(KeyKind.KEY_PAIR, key_id, info.generation, ttl_seconds)

    async def load_key_pair(self, caller: Caller, key_id: str, ttl_seconds: int | None) -> str:
        validate_key_id(key_id)
        self.authorize(caller, key_id)
        loc = self.locator.locate(key_id)
        info = await self._run(loc.backend.key_pair_info, loc.ref)
        if info is None:
            raise KeyNotFound(f"key pair {key_id!r} not found")
        return self._issue(KeyKind.KEY_PAIR, key_id, info.generation, ttl_seconds)

    async def get_key_pair_public_parameter(self, handle: str, name: str) -> str:
        if name not in PUBLIC_PARAMETERS:
            raise InvalidParameter(f"unknown parameter {name!r}; expected one of {', '.join(PUBLIC_PARAMETERS)}")
        _, loc = await self.resolve(handle, KeyKind.KEY_PAIR)
        info = await self._run(loc.backend.key_pair_info, loc.ref)
        if info is None:
            raise InvalidHandle("key handle names a key pair that no longer exists")
        key = info.public_key
        if name == "algorithm":
            return "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else "RSA"
        if isinstance(key, ec.EllipticCurvePublicKey):
            if name == "ec-curve-oid":
                return _b64(_CURVE_OID_DER[key.curve.name])
            if name == "ec-point":
                return _b64(key.public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint))
        elif isinstance(key, rsa.RSAPublicKey):
            numbers = key.public_numbers()
            if name == "rsa-modulus":
                return _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            if name == "rsa-exponent":
                return _b64(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))
        raise InvalidParameter(f"parameter {name!r} does not apply to a {info.algorithm} key")

    async def move_key_pair(self, caller: Caller, src: str, dst: str) -> None:
        validate_key_id(src)
        validate_key_id(dst)
        self.authorize(caller, src)
        self.authorize(caller, dst)
        if src == dst:
            return
        src_loc, dst_loc = self.locator.locate(src), self.locator.locate(dst)
        if src_loc.backend is not dst_loc.backend or src_loc.preloaded or dst_loc.preloaded:
            raise UnsupportedOperation("key pairs can only be moved between ids of the same, non-preloaded store")
        async with self._locks.hold(min(src, dst)), self._locks.hold(max(src, dst)):
            if await self._run(src_loc.backend.key_pair_info, src_loc.ref) is None:
                raise KeyNotFound(f"key pair {src!r} not found")
            await self._run(src_loc.backend.move_key_pair, src_loc.ref, dst_loc.ref)
            self._forget(src)
            self._forget(dst)
        log.debug("moved key pair %r to %r", src, dst)

    async def delete_key_pair(self, caller: Caller, handle: str) -> None:
        """A handle lets its holder use a key, not destroy it: deleting needs the right to load the key id too
        (a principal given a handle to sign with - identityd's device identity - must not wipe the device key)."""
        claims, loc = await self.resolve(handle, KeyKind.KEY_PAIR)
        self.authorize(caller, claims.key_id)
        async with self._locks.hold(claims.key_id):
            await self._run(loc.backend.delete_key_pair, loc.ref)
            self._forget(claims.key_id)
        log.debug("deleted key pair %r", claims.key_id)

    # symmetric keys --------------------------------------------------------------------------------------
    async def create_key_if_not_exists(self, caller: Caller, key_id: str, usage: str,
                                       ttl_seconds: int | None) -> str:
        validate_key_id(key_id)
        self.authorize(caller, key_id)
        try:
            wanted = parse_usage(usage)
        except ValueError as e:
            raise InvalidParameter(str(e)) from e
        async with self._locks.hold(key_id):
            loc = self.locator.locate(key_id)
            info = await self._run(loc.backend.key_info, loc.ref)
            if info is None:
                if loc.preloaded:
                    raise KeyNotFound(f"preloaded key {key_id!r} does not exist at its configured location")
                info = await self._mapped(self._generate(caller, loc.backend, loc.backend.create_key, loc.ref,
                                                         GENERATED_KEY_LENGTH, wanted))
                log.debug("created symmetric key %r (%s) in %s", key_id, wanted.names(), loc.backend.name)
            return self._issue(KeyKind.KEY, key_id, info.generation, ttl_seconds)

    async def import_key(self, caller: Caller, key_id: str, key: bytes, usage: str | None,
                         ttl_seconds: int | None) -> str:
        validate_key_id(key_id)
        self.authorize(caller, key_id)
        if not 1 <= len(key) <= 1024:
            raise InvalidParameter("keyBytes must hold 1 to 1024 bytes")
        try:
            wanted = parse_usage(usage) if usage else KeyUsage.DERIVE | KeyUsage.SIGN
        except ValueError as e:
            raise InvalidParameter(str(e)) from e
        async with self._locks.hold(key_id):
            loc = self.locator.locate(key_id)
            if loc.preloaded:
                raise UnsupportedOperation(f"key {key_id!r} is preloaded from configuration and cannot be replaced")
            info = await self._mapped(self._generate(caller, loc.backend, loc.backend.import_key, loc.ref, key,
                                                     wanted))
            log.debug("imported symmetric key %r (%s) into %s", key_id, wanted.names(), loc.backend.name)
            return self._issue(KeyKind.KEY, key_id, info.generation, ttl_seconds)

    async def load_key(self, caller: Caller, key_id: str, ttl_seconds: int | None) -> str:
        validate_key_id(key_id)
        self.authorize(caller, key_id)
        loc = self.locator.locate(key_id)
        info = await self._run(loc.backend.key_info, loc.ref)
        if info is None:
            raise KeyNotFound(f"key {key_id!r} not found")
        return self._issue(KeyKind.KEY, key_id, info.generation, ttl_seconds)

    async def delete_key(self, caller: Caller, handle: str) -> None:
        """As :meth:`delete_key_pair`: the caller must also be allowed the key id."""
        claims, loc = await self.resolve(handle, KeyKind.KEY)
        self.authorize(caller, claims.key_id)
        async with self._locks.hold(claims.key_id):
            await self._run(loc.backend.delete_key, loc.ref)
            self._forget(claims.key_id)
        log.debug("deleted symmetric key %r", claims.key_id)

    async def create_derived_key(self, base_handle: str, derivation_data: bytes) -> str:
        _refuse_reserved(derivation_data, "derivationData")
        claims, loc = await self.resolve(base_handle, KeyKind.KEY)
        info = await self._symmetric_info(loc)
        if not info.usage & HMAC_USAGE:
            raise UnsupportedOperation(f"key {claims.key_id!r} is an encryption key; derive needs usage 'derive' "
                                       "or 'sign'")
        return self.handles.issue(
            HandleClaims(KeyKind.DERIVED, claims.key_id, claims.generation, claims.expires, derivation_data)
        )

    async def _derived_key(self, claims: HandleClaims, loc: KeyLocation) -> bytes:
        assert claims.derivation is not None
        entry = (claims.key_id, claims.generation, claims.derivation)
        derived = self._derived.get(entry)
        if derived is None:
            _refuse_reserved(claims.derivation, "derivationData")
            derived = await self._run_fast(loc.backend, loc.backend.hmac_sha256, loc.ref, claims.derivation)
            if len(self._derived) >= MAX_DERIVED_CACHED:
                self._derived.clear()
            self._derived[entry] = derived
        return derived

    async def export_derived_key(self, handle: str) -> bytes:
        claims, loc = await self.resolve(handle, KeyKind.DERIVED)
        return await self._derived_key(claims, loc)

    # operations ------------------------------------------------------------------------------------------
    async def sign(self, handle: str, mechanism: SignMechanism) -> bytes:
        if isinstance(mechanism, HmacSha256):
            claims, loc = await self.resolve(handle, KeyKind.KEY, KeyKind.DERIVED)
            if claims.kind is KeyKind.DERIVED:
                derived = await self._derived_key(claims, loc)
                return hmac.new(derived, mechanism.message, hashlib.sha256).digest()
            info = await self._symmetric_info(loc)
            if not info.usage & HMAC_USAGE:
                raise UnsupportedOperation(f"key {claims.key_id!r} is an encryption key; HMAC needs usage 'sign' "
                                           "or 'derive'")
            _refuse_reserved(mechanism.message, "message")
            return await self._run_fast(loc.backend, loc.backend.hmac_sha256, loc.ref, mechanism.message)
        claims, loc = await self.resolve(handle, KeyKind.KEY_PAIR)
        if isinstance(mechanism, EcdsaDigest):
            if not 1 <= len(mechanism.digest) <= 64:
                raise InvalidParameter("ECDSA digest must be 1 to 64 bytes")
            digest, scheme = mechanism.digest, SignScheme("ecdsa", _hash_for_length(len(mechanism.digest)))
        elif isinstance(mechanism, EcdsaMessage):
            digest, scheme = _HASHERS[mechanism.hash](mechanism.message).digest(), SignScheme("ecdsa", mechanism.hash)
        else:
            digest = mechanism.data if mechanism.prehashed else _HASHERS[mechanism.hash](mechanism.data).digest()
            if len(digest) != _HASHERS[mechanism.hash]().digest_size:
                raise InvalidParameter(f"an RSA-PSS {mechanism.hash} digest must be "
                                       f"{_HASHERS[mechanism.hash]().digest_size} bytes")
            scheme = SignScheme("rsa-pss", mechanism.hash)
        cheap = getattr(loc.backend, "sign_digest_if_cheap", None)
        if cheap is not None:  # the backend signs on the event loop when that costs less than a thread hop
            signature: bytes | None = self._inline(cheap, loc.ref, digest, scheme)
            if signature is not None:
                return signature
        return await self._run(loc.backend.sign_digest, loc.ref, digest, scheme)

    async def encrypt(self, handle: str, mechanism: EncryptMechanism, plaintext: bytes,
                      caller: Caller | None = None) -> bytes:
        if isinstance(mechanism, Aead):
            return await self._aead(handle, mechanism, plaintext, encrypt=True)
        if isinstance(mechanism, AeadSalted):
            return await self._aead_salted(handle, mechanism, plaintext, encrypt=True)
        _claims, loc = await self.resolve(handle, KeyKind.KEY_PAIR)
        padding = RsaPadding.PKCS1 if isinstance(mechanism, RsaPkcs1) else RsaPadding.NONE
        assert isinstance(mechanism, RsaPkcs1 | RsaNoPadding)
        in_interpreter = getattr(loc.backend, "rsa_private_encrypt_in_interpreter", None)
        if in_interpreter is None or not in_interpreter(plaintext, padding):
            return await self._run(loc.backend.rsa_private_encrypt, loc.ref, plaintext, padding)
        async with self._interpreter_callers.hold(caller.uid if caller else None), self._interpreter:
            return await self._run(loc.backend.rsa_private_encrypt, loc.ref, plaintext, padding)

    async def decrypt(self, handle: str, mechanism: EncryptMechanism, ciphertext: bytes) -> bytes:
        if isinstance(mechanism, AeadSalted):
            return await self._aead_salted(handle, mechanism, ciphertext, encrypt=False)
        if not isinstance(mechanism, Aead):
            raise UnsupportedOperation(
                "decrypt supports AEAD only; RSA ciphertext from /encrypt is checked with the public key"
            )
        return await self._aead(handle, mechanism, ciphertext, encrypt=False)

    async def _aead(self, handle: str, mechanism: Aead, data: bytes, encrypt: bool) -> bytes:
        claims, loc = await self.resolve(handle, KeyKind.KEY, KeyKind.DERIVED)
        try:
            if claims.kind is KeyKind.DERIVED:
                derived = await self._derived_key(claims, loc)
                op = aead.seal if encrypt else aead.open_
                return op(derived, mechanism.iv, mechanism.aad, data)
        except aead.AeadError as e:
            raise InvalidParameter(str(e)) from e
        info = await self._symmetric_info(loc)
        if KeyUsage.ENCRYPT not in info.usage:
            raise UnsupportedOperation(f"key {claims.key_id!r} was not created with usage 'encrypt'")
        try:
            if encrypt:
                return await self._run(loc.backend.aead_encrypt, loc.ref, mechanism.iv, mechanism.aad, data)
            return await self._run(loc.backend.aead_decrypt, loc.ref, mechanism.iv, mechanism.aad, data)
        except aead.AeadError as e:
            raise InvalidParameter(str(e)) from e


    async def _aead_salted(self, handle: str, mechanism: AeadSalted, data: bytes, encrypt: bool) -> bytes:
        """The key is HMAC(base, reserved prefix || derivation data), made here for this call only: unlike the
        handle's derived key, it is never exported, and no HMAC a caller can ask for equals it."""
        claims, loc = await self.resolve(handle, KeyKind.DERIVED, KeyKind.KEY, KeyKind.KEY_PAIR)
        if claims.kind is not KeyKind.DERIVED:
            raise InvalidParameter(f"AEAD-SALTED needs a derived key handle (POST /derivedkey), not a handle to a "
                                   f"{claims.kind.value}")
        assert claims.derivation is not None
        key = await self._run_fast(loc.backend, loc.backend.hmac_sha256, loc.ref,
                                   aead.salted_key_input(claims.derivation))
        try:
            if encrypt:
                return aead.seal_salted(key, mechanism.iv, mechanism.aad, data)
            return aead.open_salted(key, mechanism.iv, mechanism.aad, data)
        except aead.AeadError as e:
            raise InvalidParameter(str(e)) from e


def _refuse_reserved(data: bytes, name: str) -> None:
    """HMAC inputs under the salted-AEAD prefix are the service's own: answering one would hand out a key."""
    if aead.is_reserved(data):
        raise InvalidParameter(f"{name} must not begin with {aead.RESERVED_PREFIX!r}: that prefix is reserved for "
                               "the keys service's own AEAD keys")


def _hash_for_length(n: int) -> HashAlg:
    # ECDSA over a digest only needs the hash for PKCS#11/TPM schemes that name one; pick by length.
    return {48: HashAlg.SHA384, 64: HashAlg.SHA512}.get(n, HashAlg.SHA256)


class _CallerView:
    """The service as one caller sees it (implements :class:`KeysApi`)."""

    def __init__(self, service: KeyService, caller: Caller) -> None:
        self._s = service
        self.caller = caller

    async def create_key_pair_if_not_exists(
        self, key_id: str, preferred_algorithms: str | None = None, ttl_seconds: int | None = None
    ) -> str:
        return await self._s.create_key_pair_if_not_exists(self.caller, key_id, preferred_algorithms, ttl_seconds)

    async def load_key_pair(self, key_id: str, ttl_seconds: int | None = None) -> str:
        return await self._s.load_key_pair(self.caller, key_id, ttl_seconds)

    async def get_key_pair_public_parameter(self, handle: str, name: str) -> str:
        return await self._s.get_key_pair_public_parameter(handle, name)

    async def move_key_pair(self, src: str, dst: str) -> None:
        await self._s.move_key_pair(self.caller, src, dst)

    async def delete_key_pair(self, handle: str) -> None:
        await self._s.delete_key_pair(self.caller, handle)

    async def create_key_if_not_exists(self, key_id: str, usage: str, ttl_seconds: int | None = None) -> str:
        return await self._s.create_key_if_not_exists(self.caller, key_id, usage, ttl_seconds)

    async def import_key(self, key_id: str, key: bytes, usage: str | None = None,
                         ttl_seconds: int | None = None) -> str:
        return await self._s.import_key(self.caller, key_id, key, usage, ttl_seconds)

    async def load_key(self, key_id: str, ttl_seconds: int | None = None) -> str:
        return await self._s.load_key(self.caller, key_id, ttl_seconds)

    async def delete_key(self, handle: str) -> None:
        await self._s.delete_key(self.caller, handle)

    async def create_derived_key(self, base_handle: str, derivation_data: bytes) -> str:
        return await self._s.create_derived_key(base_handle, derivation_data)

    async def export_derived_key(self, handle: str) -> bytes:
        return await self._s.export_derived_key(handle)

    async def sign(self, handle: str, mechanism: SignMechanism) -> bytes:
        return await self._s.sign(handle, mechanism)

    async def encrypt(self, handle: str, mechanism: EncryptMechanism, plaintext: bytes) -> bytes:
        return await self._s.encrypt(handle, mechanism, plaintext, self.caller)

    async def decrypt(self, handle: str, mechanism: EncryptMechanism, ciphertext: bytes) -> bytes:
        return await self._s.decrypt(handle, mechanism, ciphertext)
