"""Keys on a PKCS#11 token, through python-pkcs11.

Why python-pkcs11 and not PyKCS11: both sign at about the same rate on SoftHSM2, but python-pkcs11 releases the GIL
inside every C call, so a slow hardware token does not freeze the event loop (``benchmarks/pkcs11_libraries.py``
measures both).

Objects are found by CKA_LABEL (= the key id, or the ``object`` of a preloaded key's URI). CKA_ID holds the key's
generation (random bytes at creation); for symmetric keys a trailing byte records the granted usage.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.constants import DEFAULT
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from ...executor import PriorityLock
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
from .inline_gate import InlineGate
from .rsaraw import prepare_block

__all__ = ["Pkcs11Backend", "Pkcs11Settings"]

T = TypeVar("T")

log = logging.getLogger(__name__)

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

class _Library:
    """The process-wide handle of one PKCS#11 library, the lock that serializes calls into it, and its generation.

    A library is initialized once per process. python-pkcs11 calls C_Initialize without CKF_OS_LOCKING_OK, which
    tells the library it will never be entered by two threads at once (SoftHSM2 then disables its own mutexes and
    crashes under concurrency), so every call into one library is serialized here. The GIL is still released
    during each call, so the event loop keeps running while a slow token works. The lock is a
    :class:`~edgeward.executor.PriorityLock`: key generation (seconds for an RSA-4096 pair) takes it as a bulk
    holder, so a waiting signature goes ahead of every generation but the one already running.

    ``generation`` counts re-initializations (C_Finalize + C_Initialize): every session and object handle of an
    older generation is dead, and each backend on this library reopens its token when it sees a new one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = pkcs11.lib(path)
        self.lock = PriorityLock()
        self.generation = 0
        # Learnt when the library refuses CKA_ENCRYPT/CKA_DECRYPT=FALSE on a key pair: its tokens set those.
        self.token_sets_usage = False

    def reinitialize(self, seen: int) -> None:
        """Finalize and initialize the library again, unless another caller already did since ``seen``.

        This is what frees everything a library holds for this process: tpm2-pkcs11 keeps every TPM object it
        loaded (until logout, and destroyed objects until C_Finalize), and only closing its TCTI connection makes
        tpm2-abrmd flush them. The caller holds ``lock``.
        """
        if self.generation != seen:
            return
        with suppress(p11e.PKCS11Error):
            self.lib.finalize()
        with suppress(p11e.PKCS11Error):
            self.lib.initialize()
        self.generation += 1


_libs: dict[str, _Library] = {}
_libs_lock = threading.Lock()


def _load_lib(path: str) -> _Library:
    with _libs_lock:
        if path not in _libs:
            _libs[path] = _Library(path)
        return _libs[path]


# Who logged in to which token of this process, with which PIN (hashed): a token takes one login per application,
# so a second URI naming the same token with another PIN would otherwise be used unchecked on the first one's login.
@dataclass
class _Login:
    pin_digest: bytes
    setting: str
    holders: int = 0


_logins: dict[tuple[str, int], _Login] = {}
_logins_lock = threading.Lock()

# Failures that say the token or the library is in a bad state rather than that the request was wrong; one
# re-initialization of the library and one more try may clear them.
_TOKEN_FAILURES: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.GeneralError, p11e.DeviceError, p11e.DeviceMemory, p11e.HostMemory, p11e.FunctionFailed,
    p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.SessionClosed, p11e.SessionHandleInvalid, p11e.UserNotLoggedIn,
)
# A cached object handle that went stale (the object was deleted or relabelled elsewhere): look it up again.
_STALE_OBJECT: tuple[type[p11e.PKCS11Error], ...] = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)
# A token that sets a key pair's usage itself (tpm2-pkcs11 makes every TPM key sign+decrypt) answers an explicit
# CKA_ENCRYPT/CKA_DECRYPT=FALSE with one of these.
_TEMPLATE_REFUSED: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.GeneralError, p11e.TemplateInconsistent, p11e.AttributeValueInvalid, p11e.AttributeTypeInvalid,
)


def _is_token_failure(e: p11e.PKCS11Error) -> bool:
    # python-pkcs11 has no class for CKR_CRYPTOKI_NOT_INITIALIZED (a library whose re-initialization failed)
    not_initialized = type(e) is p11e.PKCS11Error and "not initialized" in str(e)
    return isinstance(e, _TOKEN_FAILURES + _STALE_OBJECT) or not_initialized


def _describe(e: p11e.PKCS11Error) -> str:
    return f"{type(e).__name__} ({e})" if str(e) else type(e).__name__


class _StaleSession(Exception):
    """A session (or its pool) belongs to a generation of the library that was since re-initialized."""


@dataclass
class _Sessions:
    """The logged-in sessions of one token for one generation of its library: a re-initialization replaces the
    whole pool, so a session never outlives the generation it was opened in."""

    generation: int
    token: Any
    idle: queue.LifoQueue[Any]
    opened: int = 1


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


def _pin_digest(pin: str | None) -> bytes:
    return hashlib.sha256(b"edgeward pkcs11 pin\0" + (pin or "").encode()).digest()


def _dss(raw: bytes) -> bytes:
    """PKCS#11's r||s as the DER signature callers verify."""
    half = len(raw) // 2
    return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


class Pkcs11Backend:
    name = "pkcs11"

    def __init__(self, settings: Pkcs11Settings) -> None:
        self.settings = settings
        self._where = (
            f"token label {settings.token_label!r}" if settings.token_label is not None
            else f"slot id {settings.slot_id}"
        )
        try:
            self._lib = _load_lib(settings.lib_path)
        except p11e.PKCS11Error as e:
            raise BackendUnavailable(
                f"cannot load the PKCS#11 library {settings.lib_path!r} (setting {settings.setting_name}): {e}"
            ) from e
        self._open_lock = threading.Lock()
        self._reopen_lock = threading.Lock()
        self._epoch = itertools.count()
        self._current_epoch = next(self._epoch)
        self._caches: dict[int, tuple[int, dict[tuple[ObjectClass, str], Any]]] = {}
        self._broken = False
        self._inline = InlineGate()
        # What the service's one-generation-at-a-time gate is keyed by: every backend on this library shares its lock
        self.serial_device: object = self._lib
        with self._lib.lock:
            self._open()

    def __repr__(self) -> str:
        return f"Pkcs11Backend({self.settings.lib_path}, token={self.settings.token_label!r})"

    @property
    def _what(self) -> str:
        return f"the PKCS#11 token with {self._where} ({self.settings.setting_name})"

    # opening the token -----------------------------------------------------------------------------------
    def _find_token(self) -> Any:
        s = self.settings
        try:
            if s.token_label is not None:
                return self._lib.lib.get_token(token_label=s.token_label)
            slots = [slot for slot in self._lib.lib.get_slots(token_present=True) if slot.slot_id == s.slot_id]
            if not slots:
                raise p11e.NoSuchToken(f"no slot {s.slot_id}")
            return slots[0].get_token()
        except (p11e.NoSuchToken, p11e.MultipleTokensReturned) as e:
            raise BackendUnavailable(
                f"no single PKCS#11 token with {self._where} in {s.lib_path} (check the pkcs11 URI in "
                f"{s.setting_name}): {e or 'not found'}"
            ) from e

    def _claim_login(self, token: Any) -> None:
        """Refuse a second PIN for a token this process is already logged in to: it would never be checked (C_Login
        answers "already logged in" whatever the PIN), so a wrong one in a preloaded key's URI would pass."""
        key = (self.settings.lib_path, int(token.slot.slot_id))
        digest = _pin_digest(self.settings.pin)
        with _logins_lock:
            login = _logins.setdefault(key, _Login(digest, self.settings.setting_name))
            if self.settings.pin is not None and not hmac.compare_digest(login.pin_digest, digest):
                raise BackendUnavailable(
                    f"the pin-value of {self.settings.setting_name} differs from the PIN {login.setting} logged in "
                    f"to the PKCS#11 token with {self._where} with: a token has one user PIN, so this one is wrong "
                    f"(and would never be checked, the token being logged in already)"
                )
            login.holders += 1
        self._login_key: tuple[str, int] | None = key

    def _release_login(self) -> None:
        key, self._login_key = getattr(self, "_login_key", None), None
        if key is None:
            return
        with _logins_lock:
            login = _logins.get(key)
            if login is not None:
                login.holders -= 1
                if login.holders <= 0:
                    del _logins[key]

    def _open(self) -> None:
        """Find the token and log in; again after the library was re-initialized. The caller holds the lib lock."""
        generation = self._lib.generation
        token = self._find_token()
        if getattr(self, "_login_key", None) is None:
            self._claim_login(token)
        try:
            try:
                login_session = token.open(rw=True, user_pin=self.settings.pin)
            except p11e.UserAlreadyLoggedIn:
                login_session = token.open(rw=True)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange) as e:
            self._release_login()
            raise BackendUnavailable(f"the PKCS#11 token with {self._where} rejected the PIN: check the pin-value "
                                     f"in {self.settings.setting_name}") from e
        except p11e.PinLocked as e:
            self._release_login()
            raise BackendUnavailable(f"the PKCS#11 token with {self._where} has a locked PIN "
                                     f"({self.settings.setting_name})") from e
        except p11e.PKCS11Error as e:
            raise BackendUnavailable(f"cannot open a session on {self._what}: {_describe(e)}") from e
        try:
            mechanisms = set(token.slot.get_mechanisms())
        except p11e.PKCS11Error:
            mechanisms = set()
        self._token = token
        self._mechanisms: set[Mechanism] = mechanisms
        idle: queue.LifoQueue[Any] = queue.LifoQueue()
        idle.put(login_session)
        self._sessions = _Sessions(generation, token, idle)
        self._invalidate()

    @property
    def _generation(self) -> int:
        return self._sessions.generation

    def _reopen(self) -> None:
        """Reopen the token after the library was re-initialized (by this backend or another one on it)."""
        with self._reopen_lock, self._lib.lock:
            if self._generation == self._lib.generation and not self._broken:
                return
            if self._broken:  # the last reopen failed: start the library afresh, it may have come back
                self._lib.reinitialize(self._lib.generation)
            self._broken = True
            self._caches.clear()
            self._open()
            self._broken = False

    def _recover(self, seen: int) -> None:
        with self._lib.lock:
            self._lib.reinitialize(seen)

    # session pool ----------------------------------------------------------------------------------------
    @contextmanager
    def _session(self) -> Iterator[tuple[int, Any]]:
        """Borrow a logged-in session and the library generation it belongs to; sessions are not thread-safe, so
        each is used by one thread at a time, and always goes back to the pool it came from."""
        if self._broken or self._generation != self._lib.generation:
            self._reopen()
        pool = self._sessions
        try:
            session = pool.idle.get_nowait()
        except queue.Empty:
            with self._open_lock:
                can_open = pool.opened < self.settings.pool_size
                if can_open:
                    pool.opened += 1
            if can_open:
                with self._lib.lock:
                    if pool.generation != self._lib.generation:
                        raise _StaleSession from None
                    session = pool.token.open(rw=True)
            else:
                session = pool.idle.get()
        try:
            yield pool.generation, session
        finally:
            pool.idle.put(session)

    def _invalidate(self) -> None:
        self._current_epoch = next(self._epoch)

    def _cache_of(self, session: Any) -> dict[tuple[ObjectClass, str], Any]:
        """The objects found on this session since the last invalidation (an older epoch's are dropped)."""
        epoch, cache = self._caches.get(id(session), (-1, {}))
        if epoch != self._current_epoch:
            cache = {}
            self._caches[id(session)] = (self._current_epoch, cache)
        return cache

    def _find(self, session: Any, cls: ObjectClass, label: str) -> Any | None:
        cache = self._cache_of(session)
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

    def _with(self, fn: Callable[[Any], T], *, retry: bool = True, bulk: bool = False) -> T:
        """Run ``fn`` on a session. A token failure re-initializes the library (which frees what the token holds
        for this process) and, for an operation that is safe to repeat, tries once more; what still fails is a
        503 naming the token, never a traceback. ``bulk``: a long operation (key generation), which lets waiting
        short ones take the library first."""
        failure: p11e.PKCS11Error | None = None
        reinitialized = False
        attempts, stale = 2 if retry else 1, 0
        while attempts > 0:
            generation = self._generation
            try:
                lock = self._lib.lock.bulk() if bulk else self._lib.lock
                with self._session() as (generation, session), lock:
                    if generation != self._lib.generation:
                        # Re-initialized while this thread waited: the handle numbers of this session and of the
                        # objects cached for it may now name other sessions and other keys. Never use them.
                        raise _StaleSession
                    return fn(session)
            except _StaleSession:
                stale += 1
                if stale > 8:
                    raise BackendUnavailable(f"{self._what} keeps being re-initialized; try again") from None
                continue
            except (p11e.DataInvalid, p11e.DataLenRange, p11e.MechanismParamInvalid) as e:
                raise InvalidParameter(f"{self._what} refuses this input: {_describe(e)}") from e
            except p11e.PKCS11Error as e:
                if not _is_token_failure(e):
                    raise BackendUnavailable(f"{self._what} refused the operation: {_describe(e)}") from e
                failure = failure or e  # the first one says what happened; a retry may only see the aftermath
                attempts -= 1
                if isinstance(e, _STALE_OBJECT):
                    self._invalidate()
                    continue
                log.warning("%s failed with %s; re-initializing the library %s to free what it holds",
                            self._what, _describe(e), self.settings.lib_path)
                self._recover(generation)
                reinitialized = True
        assert failure is not None
        raise BackendUnavailable(
            f"{self._what} failed with {_describe(failure)}"
            + (", also after the library was re-initialized" if retry and reinitialized else "")
            + "; the token library's own log says why (with tpm2-pkcs11: tpm2-abrmd not running or not reachable, "
              "or more keys in use at once than its --max-transients allows)"
        ) from failure

    # key pairs -------------------------------------------------------------------------------------------
    def _destroy_all(self, session: Any, label: str, classes: tuple[ObjectClass, ...]) -> None:
        for cls in classes:
            for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label})):
                obj.destroy()
        self._invalidate()

    def _generate_pair(self, session: Any, ref: str, algorithm: KeyPairAlgorithm, gen: bytes,
                       token_sets_usage: bool) -> tuple[Any, Any]:
        """Generate a signing key pair that never leaves the token.

        python-pkcs11 states every usage attribute from ``capabilities``: SIGN|VERIFY gives CKA_ENCRYPT, CKA_WRAP
        = FALSE on the public key and CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE = FALSE on the private key. A token that
        sets the encrypt/decrypt usage itself (tpm2-pkcs11) refuses those two, so with ``token_sets_usage`` they
        are left for the token to decide; everything else stays stated, and what must hold is checked after.
        """
        public: dict[Any, Any] = {}
        private: dict[Any, Any] = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
        if token_sets_usage:
            public[Attribute.ENCRYPT] = DEFAULT
            private[Attribute.DECRYPT] = DEFAULT
        common = {"store": True, "label": ref, "id": gen, "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
                  "public_template": public, "private_template": private}
        if algorithm.is_ec:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_NAMES[algorithm])}, local=True,
            )
            pair: tuple[Any, Any] = params.generate_keypair(**common)
        else:
            pair = session.generate_keypair(KeyType.RSA, algorithm.rsa_bits, **common)
        return pair

    def _check_pair(self, public: Any, private: Any) -> None:
        """What a key pair must be, whatever the token made of the template: a private key that signs, is never
        revealed (sensitive, not extractable) and wraps, unwraps and derives nothing."""
        expected = ((private, Attribute.SENSITIVE, True), (private, Attribute.EXTRACTABLE, False),
                    (private, Attribute.PRIVATE, True),
                    (private, Attribute.SIGN, True), (private, Attribute.UNWRAP, False),
                    (private, Attribute.DERIVE, False), (public, Attribute.WRAP, False))
        wrong = [attr.name for obj, attr, value in expected if bool(obj[attr]) is not value]
        if wrong:
            with suppress(p11e.PKCS11Error):
                private.destroy()
            with suppress(p11e.PKCS11Error):
                public.destroy()
            raise BackendUnavailable(f"{self._what} created a key pair with {', '.join(wrong)} not as asked; "
                                     f"refused and deleted")

    def _require_key_size(self, algorithm: KeyPairAlgorithm) -> None:
        """Refuse an RSA size the token says it cannot make, before asking (tpm2-pkcs11 answers GeneralError)."""
        if algorithm.is_ec or Mechanism.RSA_PKCS_KEY_PAIR_GEN not in self._mechanisms:
            return
        try:
            with self._lib.lock:
                info = self._token.slot.get_mechanism_info(Mechanism.RSA_PKCS_KEY_PAIR_GEN)
        except p11e.PKCS11Error:
            return
        if info.max_key_length and algorithm.rsa_bits > info.max_key_length:
            raise UnsupportedByBackend(f"the token makes RSA keys of at most {info.max_key_length} bits")

    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        gen = secrets.token_bytes(8)
        self._require_key_size(algorithm)

        def create(session: Any) -> None:
            self._destroy_all(session, ref, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY))
            try:
                try:
                    public, private = self._generate_pair(session, ref, algorithm, gen, self._lib.token_sets_usage)
                except _TEMPLATE_REFUSED:
                    if self._lib.token_sets_usage:
                        raise
                    # Learnt once per library, so asked twice: a one-off failure must not leave every later key
                    # pair of a token that honours the template able to decrypt.
                    try:
                        public, private = self._generate_pair(session, ref, algorithm, gen, False)
                    except _TEMPLATE_REFUSED:
                        public, private = self._generate_pair(session, ref, algorithm, gen, True)
                        self._lib.token_sets_usage = True
                    log.info("%s sets the encrypt/decrypt usage of key pairs itself; Edgeward leaves it to the "
                             "token (it never asks a key pair to decrypt)", self._what)
            except (p11e.MechanismInvalid, p11e.FunctionNotSupported, p11e.KeySizeRange,
                    p11e.DomainParamsInvalid, p11e.TemplateInconsistent) as e:
                raise UnsupportedByBackend(f"the token cannot create {algorithm} keys: {type(e).__name__}") from e
            self._invalidate()
            self._check_pair(public, private)

        self._with(create, bulk=True)
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

        self._with(move, retry=False)  # a half-done rename must not be redone: the second pass would drop it

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
                start = time.perf_counter()
                raw = priv.sign(digest, mechanism=Mechanism.ECDSA)
                self._inline.record_offloaded(time.perf_counter() - start)
                return _dss(raw)
            if key_type != KeyType.RSA:
                raise UnsupportedByBackend(f"{scheme.kind} needs an RSA key")
            if scheme.kind == "rsa-pkcs1v15":
                return bytes(priv.sign(_DIGEST_INFO[scheme.hash] + digest, mechanism=Mechanism.RSA_PKCS))
            if scheme.kind == "rsa-pss":
                return bytes(priv.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=_PSS[scheme.hash]))
            raise UnsupportedByBackend(f"unknown signature scheme {scheme.kind}")

        return self._with(sign)

    def sign_digest_if_cheap(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes | None:
        """ECDSA on the caller's thread (the event loop) when the token has proven fast (InlineGate) and nothing
        would make the caller wait: an idle session, the library lock free, the key already found in that session.
        None otherwise, and on any token error: the executor path then retries, recovers and explains."""
        if scheme.kind != "ecdsa" or not self._inline.allows():
            return None
        pool = self._sessions
        if pool is None or self._broken or self._generation != self._lib.generation:
            return None
        try:
            session = pool.idle.get_nowait()
        except queue.Empty:
            return None
        try:
            if not self._lib.lock.acquire(blocking=False):
                return None
            try:
                priv = self._cache_of(session).get((ObjectClass.PRIVATE_KEY, ref))
                if pool.generation != self._lib.generation or priv is None or priv.key_type != KeyType.EC:
                    return None
                start = time.perf_counter()
                try:
                    raw = priv.sign(digest, mechanism=Mechanism.ECDSA)
                except p11e.PKCS11Error:
                    return None
                finally:
                    self._inline.record_inline(time.perf_counter() - start)
            finally:
                self._lib.lock.release()
        finally:
            pool.idle.put(session)
        return _dss(raw)

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
        needed = [Mechanism.AES_GCM] if aes else [Mechanism.SHA256_HMAC]
        if value is None:
            needed.append(Mechanism.AES_KEY_GEN if aes else Mechanism.GENERIC_SECRET_KEY_GEN)
        if self._mechanisms and not self._mechanisms.issuperset(needed):
            # Asked before creating anything: a key created only to fail its probe still costs tpm2-pkcs11 a TPM
            # object context until the library is re-initialized.
            missing = [m.name for m in needed if m not in self._mechanisms]
            raise UnsupportedByBackend(f"the token lacks {', '.join(missing)}")
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

        self._with(store, bulk=True)
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
        with self._lib.lock:
            # Sessions of an older generation died with it; their handle numbers may name live sessions now.
            current = self._generation == self._lib.generation
            while True:
                try:
                    session = self._sessions.idle.get_nowait()
                except queue.Empty:
                    break
                if current:
                    with suppress(p11e.PKCS11Error):
                        session.close()
        self._caches.clear()
        self._release_login()
