"""Keys inside a TPM 2.0, through tpm2-pytss (ESAPI).

Why blobs on disk: a TPM holds only a handful of objects at a time (swtpm: three), so every key is created under the
persistent storage root key (SRK) and only its public area and SRK-wrapped private area are kept, as one JSON file
per key under ``blob_dir``. The private area is useless without this TPM; a key is loaded on demand and flushed
again, with a tiny LRU so the hot path (sign) does not pay a TPM2_Load each time.

Why each key's authValue is derived from its kind and id: a blob copied or renamed on disk to another key's name
loads, but the TPM refuses to use it, the same binding the software backend gets from its AEAD associated data.
The authValue is not a secret (the id is known), so keys are ``noDA``: a mismatch can never lock the TPM out.

Why ECDSA digests are resized here: TPM2_Sign insists that the digest has the size of the scheme's hash, while the
keys API signs digests of any length. ECDSA only ever uses the leftmost bits of the digest as an integer of the
curve's size, so left-padding with zeros (shorter) or truncating (longer) to that size gives the very signature
a verifier expects over the original digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC_CURVE,
    TPM2_HC,
    TPM2_RC,
    TPM2_RH,
    TPM2_SE,
    TPM2_ST,
    TPM2_SU,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPMA_OBJECT,
    TPMA_SESSION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_PUBLIC_PARMS,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception

try:  # tpm2-pytss's own cffi bindings of the TSS, for the sign hot path (see _ecdsa_sign)
    from tpm2_pytss._libtpm2_pytss import ffi as _ffi
    from tpm2_pytss._libtpm2_pytss import lib as _lib
except ImportError:  # pragma: no cover - a tpm2-pytss that moved them: the public ESAPI call does the same
    _ffi = _lib = None

from ...executor import PriorityLock, SerialLane
from ...fsutil import atomic_write, private_dir, remove_durably
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
    parse_usage,
)
from .base import KeyMissing, UnsupportedByBackend
from .masterkey import MASTER_KEY_LENGTH
from .rsaraw import prepare_block
from .software import StoreCorrupted

__all__ = ["TpmBackend", "TpmError", "TpmSealedMasterKey", "TpmSettings"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_BLOB_VERSION = 1
_KEYPAIR = "keypair"
_KEY = "key"

# swtpm (and many discrete TPMs) hold three transient objects. Two stay cached; the third slot is what TPM2_Load
# (the persistent SRK is paged in while it runs) and an HMAC sequence object need.
_MAX_LOADED = 2
# TPM2B_MAX_BUFFER: longer HMAC input goes through an HMAC sequence.
_MAX_BUFFER = 1024
# keyedHash sensitive data is capped by the TPM (HMAC keys: the hash block size); larger keys stay in software.
_MAX_HMAC_KEY = 64
_HMAC_KEY_SIZE = 32

_TCTI_LAYER = 0x0A0000
_RESMGR_TPM_LAYER = 0x0B0000
_LAYER_MASK = 0xFF0000
_ESYS_BAD_SEQUENCE = 0x070007  # ESAPI's state after a lost response: only a new context helps

_HASH_ALGS = {HashAlg.SHA256: TPM2_ALG.SHA256, HashAlg.SHA384: TPM2_ALG.SHA384, HashAlg.SHA512: TPM2_ALG.SHA512}
_DIGEST_SIZES = {HashAlg.SHA256: 32, HashAlg.SHA384: 48, HashAlg.SHA512: 64}
# (TPM curve, coordinate size = the digest size ECDSA uses, the hash whose size that is)
_CURVES = {
    KeyPairAlgorithm.EC_P256: (TPM2_ECC_CURVE.NIST_P256, 32, HashAlg.SHA256),
    KeyPairAlgorithm.EC_P384: (TPM2_ECC_CURVE.NIST_P384, 48, HashAlg.SHA384),
}
_RSA_SCHEMES = {"rsa-pkcs1v15": TPM2_ALG.RSASSA, "rsa-pss": TPM2_ALG.RSAPSS}

# TPM answers that mean "this TPM cannot do that", as opposed to "something broke".
_UNSUPPORTED_RCS = frozenset({
    TPM2_RC.ASYMMETRIC, TPM2_RC.ATTRIBUTES, TPM2_RC.CURVE, TPM2_RC.HASH, TPM2_RC.KEY_SIZE, TPM2_RC.SCHEME,
    TPM2_RC.SIZE, TPM2_RC.TYPE, TPM2_RC.VALUE, TPM2_RC.SYMMETRIC, TPM2_RC.MODE,
})
_AUTH_RCS = frozenset({TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH})
# Answers after which dropping our cached objects (or the whole connection) and retrying once can succeed.
_STALE_OBJECT_RCS = frozenset({TPM2_RC.OBJECT_MEMORY, TPM2_RC.REFERENCE_H0, TPM2_RC.HANDLE})



def flush_quietly(ectx: Any, handle: Any) -> None:
    """Free a transient object or session; one already gone (TPM restarted, connection lost) needs no freeing."""
    with suppress(TSS2_Exception):
        ectx.flush_context(handle)


def hmac_sha256_in_tpm(ectx: Any, handle: Any, message: bytes) -> bytes:
    """HMAC-SHA256 with a loaded keyedHash key; messages longer than one TPM buffer go through an HMAC sequence
    (every chunk but the last through SequenceUpdate, the last, 1 to 1024 bytes, through SequenceComplete)."""
    if len(message) <= _MAX_BUFFER:
        return bytes(ectx.hmac(handle, message, TPM2_ALG.SHA256))
    body = len(message) - ((len(message) - 1) % _MAX_BUFFER + 1)
    sequence = ectx.hmac_start(handle, None, TPM2_ALG.SHA256)
    try:
        for start in range(0, body, _MAX_BUFFER):
            ectx.sequence_update(sequence, message[start:start + _MAX_BUFFER])
        digest, _ = ectx.sequence_complete(sequence, message[body:], ESYS_TR.NULL)
    except BaseException:
        flush_quietly(ectx, sequence)  # SequenceComplete flushes it; anything else must
        raise
    return bytes(digest)

def _ecdsa_sign(ectx: Any, handle: Any, digest: bytes, scheme: Any, ticket: Any) -> bytes:
    """TPM2_Sign with an ECDSA scheme, as a DER signature.

    Straight through Esys_Sign: tpm2-pytss's ESAPI wrapper and the attribute access of its result objects cost
    ~0.1-0.3 ms of Python (holding the GIL) per signature, a tenth to a third of swtpm's own TPM2_Sign; the C call
    and a read of the two coordinates from the returned struct cost a few microseconds. The TPM and the command are
    the same, so errors are the same TSS2_Exception the wrapper raises.
    """
    ctx = getattr(ectx, "_ctx", None)
    if _lib is None or ctx is None:
        wire = ectx.sign(handle, digest, scheme, ticket).marshal()  # sigAlg, hash, then R and S as TPM2B
        r_len = int.from_bytes(wire[4:6], "big")
        r, rest = wire[6:6 + r_len], wire[6 + r_len:]
        s = rest[2:2 + int.from_bytes(rest[:2], "big")]
    else:
        cdigest = _ffi.new("TPM2B_DIGEST *")
        cdigest.size = len(digest)
        _ffi.memmove(cdigest.buffer, digest, len(digest))
        out = _ffi.new("TPMT_SIGNATURE **")
        rc = _lib.Esys_Sign(ctx, handle, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, cdigest, scheme._cdata,
                            ticket._cdata, out)
        if rc:
            raise TSS2_Exception(rc)
        try:
            ecdsa = out[0].signature.ecdsa
            r = _ffi.unpack(ecdsa.signatureR.buffer, ecdsa.signatureR.size)
            s = _ffi.unpack(ecdsa.signatureS.buffer, ecdsa.signatureS.size)
        finally:
            _lib.Esys_Free(out[0])
    return utils.encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


class TpmError(Exception):
    """The TPM failed an operation in a way this backend does not expect (the message has the TPM's answer)."""


@dataclass(frozen=True)
class TpmSettings:
    """``owner_auth`` is only needed when the SRK must be created; a ``hex:`` prefix gives raw bytes."""

    tcti: str
    blob_dir: Path
    owner_auth: str = field(default="", repr=False)
    srk_handle: int = 0x81000001
    setting_name: str = "tpm.tcti"


@dataclass(frozen=True, slots=True)
class _Blob:
    kind: str
    generation: str
    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes = field(repr=False)  # marshalled TPM2B_PRIVATE, wrapped by the SRK
    algorithm: KeyPairAlgorithm | None = None
    usage: KeyUsage | None = None
    public_key: PublicKey | None = field(default=None, repr=False)


# TSS return codes -----------------------------------------------------------------------------------------------
def _tpm_rc(e: Any) -> int | None:
    """The TPM's own response code with handle/parameter/session numbers stripped; None if not from the TPM."""
    rc = int(e.rc)
    if rc & _LAYER_MASK not in (0, _RESMGR_TPM_LAYER):
        return None
    rc &= 0xFFFF
    return 0x80 + (rc & 0x3F) if rc & 0x80 else rc


def _connection_lost(e: Any) -> bool:
    rc = int(e.rc)
    return rc & _LAYER_MASK == _TCTI_LAYER or rc == _ESYS_BAD_SEQUENCE


def run_retrying_once(op: Callable[[Any], T], connected: Callable[[], Any], disconnect: Callable[[], None], *,
                      recover: Callable[[Any], bool], unavailable: type[Exception], where: Callable[[], str]) -> T:
    """Run ``op(esapi)``; after a lost connection (reconnect) or an error ``recover`` clears (it returns False for
    errors it cannot), retry once from scratch. The caller holds its connection's lock. A connection lost again is
    ``unavailable``, naming ``where()``; anything else a :class:`TpmError`."""
    try:
        return op(connected())
    except TSS2_Exception as e:
        if _connection_lost(e):
            log.warning("lost the TPM connection (%s); reconnecting", e)
            disconnect()
        elif not recover(e):
            raise TpmError(f"TPM operation failed: {e}") from e
    try:
        return op(connected())
    except TSS2_Exception as e:
        if _connection_lost(e):
            disconnect()
            raise unavailable(f"lost the TPM at {where()}: {e}") from e
        raise TpmError(f"TPM operation failed: {e}") from e


def _has_resource_manager(tcti: str) -> bool:
    # Behind a resource manager every connection sees only its own objects; without one, objects outlive the
    # process that loaded them.
    name, _, conf = tcti.partition(":")
    return name in ("tabrmd", "libtpms") or (name == "device" and "tpmrm" in conf)


def _auth_value(text: str) -> bytes:
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError as e:
            raise BackendUnavailable("tpm owner auth starts with 'hex:' but is not hex") from e
    return text.removeprefix("str:").encode()


def _key_auth(kind: str, ref: str) -> bytes:
    return hashlib.sha256(f"edgeward-tpm-key-v1\x00{kind}\x00{ref}".encode()).digest()


# templates ------------------------------------------------------------------------------------------------------
_FIXED = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA


def _srk_template() -> Any:
    """The ECC P-256 SRK of the TCG TPM v2.0 Provisioning Guidance, so other TPM software can share it."""
    public = TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=_FIXED | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT,
    )
    detail = public.parameters.eccDetail
    detail.symmetric.algorithm = TPM2_ALG.AES
    detail.symmetric.keyBits.aes = 128
    detail.symmetric.mode.aes = TPM2_ALG.CFB
    detail.scheme.scheme = TPM2_ALG.NULL
    detail.curveID = TPM2_ECC_CURVE.NIST_P256
    detail.kdf.scheme = TPM2_ALG.NULL
    public.unique.ecc.x = b"\x00" * 32
    public.unique.ecc.y = b"\x00" * 32
    return TPM2B_PUBLIC(publicArea=public)


def _key_pair_template(algorithm: KeyPairAlgorithm) -> Any:
    """Unrestricted, scheme NULL: the scheme (and for RSA, raw decryption) is chosen per operation."""
    attrs = _FIXED | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.SIGN_ENCRYPT
    if algorithm.is_ec:
        public = TPMT_PUBLIC(type=TPM2_ALG.ECC, nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs)
        detail = public.parameters.eccDetail
        detail.symmetric.algorithm = TPM2_ALG.NULL
        detail.scheme.scheme = TPM2_ALG.NULL
        detail.curveID = _CURVES[algorithm][0]
        detail.kdf.scheme = TPM2_ALG.NULL
    else:
        public = TPMT_PUBLIC(
            type=TPM2_ALG.RSA, nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs | TPMA_OBJECT.DECRYPT
        )
        detail = public.parameters.rsaDetail
        detail.symmetric.algorithm = TPM2_ALG.NULL
        detail.scheme.scheme = TPM2_ALG.NULL
        detail.keyBits = algorithm.rsa_bits
        detail.exponent = 0  # 65537
    return TPM2B_PUBLIC(publicArea=public)


def _hmac_template(tpm_generated: bool) -> Any:
    attrs = _FIXED | TPMA_OBJECT.SIGN_ENCRYPT
    if tpm_generated:
        attrs |= TPMA_OBJECT.SENSITIVEDATAORIGIN
    public = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256, objectAttributes=attrs)
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.HMAC
    public.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG.SHA256
    return TPM2B_PUBLIC(publicArea=public)


def _sealed_template() -> Any:
    """A sealed data object: no sign or decrypt attribute, so the only thing it can do is TPM2_Unseal."""
    public = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256, objectAttributes=_FIXED)
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return TPM2B_PUBLIC(publicArea=public)


def _sensitive(auth: bytes, data: bytes | None = None) -> Any:
    create = TPMS_SENSITIVE_CREATE(userAuth=auth)
    if data is not None:
        create.data = TPM2B_SENSITIVE_DATA(data)
    return TPM2B_SENSITIVE_CREATE(create)


@cache
def _sig_scheme(alg: int, hash_alg: int) -> Any:
    scheme = TPMT_SIG_SCHEME(scheme=alg)
    scheme.details.any.hashAlg = hash_alg
    return scheme


@cache
def _null_ticket() -> Any:
    # The digest was computed outside the TPM; a NULL ticket is all an unrestricted key needs.
    return TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)


@cache
def _raw_rsa() -> Any:
    return TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL)


# blob files -----------------------------------------------------------------------------------------------------
def _generation(public: Any) -> str:
    return hashlib.sha256(public.publicArea.marshal()).hexdigest()[:16]


def _public_key(public: Any) -> PublicKey:
    loaded = serialization.load_der_public_key(public.to_der())
    if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise StoreCorrupted("a TPM key blob holds an unsupported public key type")
    return loaded


def _encode_blob(kind: str, private: Any, public: Any, extra: dict[str, str]) -> bytes:
    doc = dict(extra, v=_BLOB_VERSION, kind=kind, gen=_generation(public),
               public=base64.b64encode(public.marshal()).decode(),
               private=base64.b64encode(private.marshal()).decode())
    return json.dumps(doc).encode()


def _decode_blob(raw: bytes, kind: str, where: str) -> _Blob:
    try:
        doc = json.loads(raw)
        if doc.get("v") != _BLOB_VERSION or doc.get("kind") != kind:
            raise ValueError(f"not a version {_BLOB_VERSION} {kind} blob")
        public_bytes = base64.b64decode(doc["public"], validate=True)
        private_bytes = base64.b64decode(doc["private"], validate=True)
        public = TPM2B_PUBLIC.unmarshal(public_bytes)[0]
        TPM2B_PRIVATE.unmarshal(private_bytes)
        if kind == _KEYPAIR:
            return _Blob(kind, str(doc["gen"]), public_bytes, private_bytes,
                         algorithm=KeyPairAlgorithm(doc["alg"]), public_key=_public_key(public))
        if kind == _KEY:
            return _Blob(kind, str(doc["gen"]), public_bytes, private_bytes, usage=parse_usage(doc["usage"]))
        return _Blob(kind, str(doc["gen"]), public_bytes, private_bytes)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, TSS2_Exception) as e:
        raise StoreCorrupted(f"TPM key blob {where} is damaged: {e}") from e


class TpmBackend:
    """Key pairs and HMAC keys under the TPM's SRK; AES keys are refused so the service keeps them in software.

    All ESAPI use goes through one lock: an ESAPI context is not thread-safe, and a TPM runs one command at a time
    anyway. The lock is a :class:`~edgeward.executor.PriorityLock`: TPM2_Create (key generation: an RSA-2048 pair
    takes the TPM seconds) takes it as a bulk holder, so a waiting HMAC or signature goes ahead of every creation
    but the one already running. ``lane`` is the context's own thread, for the hot operations the service routes to
    it (see ``keys/compose.py``): it runs them back to back, so they never queue on the lock behind each other;
    everything else still takes the lock from whichever thread calls it.
    """

    name = "tpm"

    def __init__(self, settings: TpmSettings) -> None:
        self.settings = settings
        self._blob_dir = private_dir(settings.blob_dir)
        self._lock = PriorityLock()
        self.serial_device: object = self  # one TPM, one context: the service's generation gate is keyed by it
        self._ectx: Any = None
        self._srk: Any = None
        self._closed = False
        self._loaded: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._blobs: dict[tuple[str, str], _Blob] = {}
        self._supported: dict[KeyPairAlgorithm, str | None] = {}
        with self._lock:
            self._connect()
        self.lane = SerialLane("edgeward-tpm", closed_error=lambda: BackendUnavailable("the TPM backend is closed"))

    def __repr__(self) -> str:
        return f"TpmBackend({self.settings.tcti!r}, blob_dir={self.settings.blob_dir})"

    # connection -----------------------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"TCTI {self.settings.tcti!r} (setting {self.settings.setting_name})"

    def _connect(self) -> None:
        try:
            ectx = ESAPI(self.settings.tcti)
        except (TSS2_Exception, RuntimeError, ValueError, TypeError, OSError) as e:
            raise BackendUnavailable(f"cannot open the TPM at {self._where()}: {e}") from e
        try:
            self._flush_leftovers(ectx)
            self._srk = self._ensure_srk(ectx)
        except TSS2_Exception as e:
            ectx.close()
            raise BackendUnavailable(f"the TPM at {self._where()} is not usable: {e}") from e
        except BaseException:
            ectx.close()
            raise
        self._ectx = ectx

    def _flush_leftovers(self, ectx: Any) -> None:
        """Without a resource manager, objects of a killed earlier process keep the TPM's few slots full."""
        try:
            handles = self._list_handles(ectx, TPM2_HC.TRANSIENT_FIRST)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.INITIALIZE:
                raise
            ectx.startup(TPM2_SU.CLEAR)  # a TPM reset without a startup, e.g. swtpm without startup-clear
            handles = self._list_handles(ectx, TPM2_HC.TRANSIENT_FIRST)
        if _has_resource_manager(self.settings.tcti):
            return
        handles += self._list_handles(ectx, TPM2_HC.LOADED_SESSION_FIRST)
        for handle in handles:
            with suppress(TSS2_Exception):
                ectx.flush_context(ectx.tr_from_tpmpublic(handle))
        if handles:
            log.warning("flushed %d object(s) and session(s) left in the TPM by an earlier process", len(handles))

    @staticmethod
    def _list_handles(ectx: Any, first: int) -> list[int]:
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, first, 64)
        return [int(h) for h in data.data.handles if int(h) >> 24 == int(first) >> 24]

    def _ensure_srk(self, ectx: Any) -> Any:
        handle = self.settings.srk_handle
        try:
            srk = ectx.tr_from_tpmpublic(handle)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.HANDLE:
                raise
            srk = self._create_srk(ectx)
        attrs = int(ectx.read_public(srk)[0].publicArea.objectAttributes)
        if not attrs & TPMA_OBJECT.RESTRICTED or not attrs & TPMA_OBJECT.DECRYPT or attrs & TPMA_OBJECT.SIGN_ENCRYPT:
            raise BackendUnavailable(
                f"the TPM object at persistent handle {handle:#x} is not a storage key (SRK); "
                f"free that handle or choose another SRK handle ({self._where()})"
            )
        return srk

    def _create_srk(self, ectx: Any) -> Any:
        handle = self.settings.srk_handle
        log.info("creating the TPM storage root key at persistent handle %#x", handle)
        ectx.tr_set_auth(ESYS_TR.OWNER, _auth_value(self.settings.owner_auth))
        try:
            transient, *_ = ectx.create_primary(None, _srk_template(), ESYS_TR.OWNER)
        except TSS2_Exception as e:
            if _tpm_rc(e) in _AUTH_RCS:
                raise BackendUnavailable(
                    "the TPM rejected the owner hierarchy authorization needed to create its SRK: check the tpm "
                    f"owner auth setting (TPM at {self._where()})"
                ) from e
            raise
        try:
            return ectx.evict_control(ESYS_TR.OWNER, transient, handle)
        finally:
            ectx.flush_context(transient)

    def _connected(self) -> Any:
        if self._ectx is None:
            if self._closed:
                raise BackendUnavailable("the TPM backend is closed")
            self._connect()
        return self._ectx

    def _disconnect(self) -> None:
        ectx, self._ectx, self._srk = self._ectx, None, None
        self._loaded.clear()  # the handles belong to the old context; _connect flushes what the TPM still holds
        if ectx is not None:
            with suppress(Exception):
                ectx.close()

    def _run(self, op: Callable[[Any], T], *, bulk: bool = False) -> T:
        """Run ``op(esapi)`` under the lock; after a lost connection or stale objects, retry once from scratch.
        ``bulk``: a long command (TPM2_Create), which lets waiting short ones go first."""
        with self._lock.bulk() if bulk else self._lock:
            return run_retrying_once(op, self._connected, self._disconnect, recover=self._recover,
                                     unavailable=BackendUnavailable, where=self._where)

    def _recover(self, e: Any) -> bool:
        if _tpm_rc(e) == TPM2_RC.OBJECT_MEMORY:
            self._flush_loaded(self._ectx, keep=0)
        elif _tpm_rc(e) in _STALE_OBJECT_RCS:
            self._drop_loaded(self._ectx)
        else:
            return False
        return True

    # loaded objects -------------------------------------------------------------------------------------------
    @staticmethod
    def _flush(ectx: Any, handle: Any) -> None:
        flush_quietly(ectx, handle)

    def _flush_loaded(self, ectx: Any, keep: int) -> None:
        while len(self._loaded) > keep:
            _, handle = self._loaded.popitem(last=False)
            self._flush(ectx, handle)

    def _drop_loaded(self, ectx: Any) -> None:
        """Forget cached objects the TPM no longer holds, without flushing: their numbers may be reused by now."""
        while self._loaded:
            _, handle = self._loaded.popitem(last=False)
            with suppress(TSS2_Exception):
                ectx.tr_close(handle)

    def _forget(self, kind: str, ref: str) -> None:
        self._blobs.pop((kind, ref), None)
        with self._lock:
            for slot in [s for s in self._loaded if s[:2] == (kind, ref)]:
                handle = self._loaded.pop(slot)
                if self._ectx is not None:
                    self._flush(self._ectx, handle)

    def _load(self, ectx: Any, blob: _Blob, auth: bytes, what: str) -> Any:
        try:
            handle = ectx.load(
                self._srk, TPM2B_PRIVATE.unmarshal(blob.private)[0], TPM2B_PUBLIC.unmarshal(blob.public)[0]
            )
        except TSS2_Exception as e:
            if _connection_lost(e) or _tpm_rc(e) in _STALE_OBJECT_RCS:
                raise
            raise StoreCorrupted(
                f"the TPM does not accept the blob of {what}: {e} (TPM cleared, SRK replaced, or blob from "
                "another device)"
            ) from e
        ectx.tr_set_auth(handle, auth)
        return handle

    def _key_handle(self, ectx: Any, kind: str, ref: str, blob: _Blob) -> Any:
        slot = (kind, ref, blob.generation)
        handle = self._loaded.get(slot)
        if handle is not None:
            self._loaded.move_to_end(slot)
            return handle
        self._flush_loaded(ectx, keep=_MAX_LOADED - 1)
        handle = self._load(ectx, blob, _key_auth(kind, ref), f"{kind} {ref!r}")
        self._loaded[slot] = handle
        return handle

    def _use_key(self, kind: str, ref: str, blob: _Blob, op: Callable[[Any, Any], T]) -> T:
        """Run ``op(esapi, handle)`` with the key loaded.

        A refused authValue on a cached handle means the number now names another object (without a resource
        manager, another TPM user flushed ours and loaded its own): the authValue binding is what makes the cache
        safe. Reload once; if a freshly loaded key is refused, the blob on disk belongs to another key id.
        """
        slot = (kind, ref, blob.generation)

        def run(ectx: Any) -> T:
            for _attempt in range(2):
                cached = slot in self._loaded
                handle = self._key_handle(ectx, kind, ref, blob)
                try:
                    return op(ectx, handle)
                except TSS2_Exception as e:
                    if _tpm_rc(e) not in _AUTH_RCS:
                        raise
                    del self._loaded[slot]
                    if cached:
                        with suppress(TSS2_Exception):
                            ectx.tr_close(handle)
                        continue
                    self._flush(ectx, handle)
                    raise StoreCorrupted(
                        f"the TPM blob stored for {kind} {ref!r} belongs to another key id (copied or renamed on disk)"
                    ) from e
            raise TpmError(f"the TPM keeps refusing the cached {kind} {ref!r}")

        return self._run(run)

    @contextmanager
    def _param_session(self, ectx: Any) -> Iterator[Any]:
        """A session salted to the SRK, so secrets cross the bus to and from the TPM only encrypted."""
        aes128cfb = TPMT_SYM_DEF(
            algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB)
        )
        session = ectx.start_auth_session(self._srk, ESYS_TR.NONE, TPM2_SE.HMAC, aes128cfb, TPM2_ALG.SHA256)
        try:
            ectx.trsess_set_attributes(
                session, TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION
            )
            yield session
        finally:
            self._flush(ectx, session)

    # blob files -----------------------------------------------------------------------------------------------
    def _path(self, kind: str, ref: str) -> Path:
        return self._blob_dir / f"{hashlib.sha256(ref.encode()).hexdigest()}.{kind}.json"

    def _blob(self, kind: str, ref: str) -> _Blob | None:
        cached = self._blobs.get((kind, ref))
        if cached is not None:
            return cached
        path = self._path(kind, ref)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        blob = _decode_blob(raw, kind, path.name)
        self._blobs[(kind, ref)] = blob
        return blob

    def _require(self, kind: str, ref: str) -> _Blob:
        blob = self._blob(kind, ref)
        if blob is None:
            raise KeyMissing(ref)
        return blob

    def _store(self, kind: str, ref: str, private: Any, public: Any, extra: dict[str, str]) -> _Blob:
        raw = _encode_blob(kind, private, public, extra)
        path = self._path(kind, ref)
        atomic_write(path, raw)
        self._forget(kind, ref)
        blob = _decode_blob(raw, kind, path.name)
        self._blobs[(kind, ref)] = blob
        return blob

    def _create(self, kind: str, ref: str, sensitive: Any, template: Any, secret_inside: bool) -> tuple[Any, Any]:
        def create(ectx: Any) -> tuple[Any, Any]:
            try:
                if not secret_inside:
                    private, public, *_ = ectx.create(self._srk, sensitive, template)
                    return private, public
                with self._param_session(ectx) as session:
                    private, public, *_ = ectx.create(self._srk, sensitive, template, session1=session)
                    return private, public
            except TSS2_Exception as e:
                if _tpm_rc(e) in _UNSUPPORTED_RCS:
                    raise UnsupportedByBackend(f"the TPM refuses this {kind}: {e}") from e
                raise

        return self._run(create, bulk=True)

    # key pairs ------------------------------------------------------------------------------------------------
    def _check_supported(self, algorithm: KeyPairAlgorithm) -> None:
        if algorithm not in self._supported:
            parms = TPMT_PUBLIC_PARMS(
                type=TPM2_ALG.ECC if algorithm.is_ec else TPM2_ALG.RSA,
                parameters=_key_pair_template(algorithm).publicArea.parameters,
            )

            def test(ectx: Any) -> str | None:
                try:
                    ectx.test_parms(parms)
                except TSS2_Exception as e:
                    if _tpm_rc(e) in _UNSUPPORTED_RCS:
                        return str(e)
                    raise
                return None

            self._supported[algorithm] = self._run(test)
        reason = self._supported[algorithm]
        if reason is not None:
            raise UnsupportedByBackend(f"the TPM cannot create {algorithm} keys ({reason})")

    def create_key_pair(self, ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
        self._check_supported(algorithm)
        private, public = self._create(
            _KEYPAIR, ref, _sensitive(_key_auth(_KEYPAIR, ref)), _key_pair_template(algorithm), secret_inside=False
        )
        blob = self._store(_KEYPAIR, ref, private, public, {"alg": algorithm.value})
        assert blob.public_key is not None
        return KeyPairInfo(algorithm, blob.generation, blob.public_key)

    def key_pair_info(self, ref: str) -> KeyPairInfo | None:
        blob = self._blob(_KEYPAIR, ref)
        if blob is None:
            return None
        assert blob.algorithm is not None and blob.public_key is not None
        return KeyPairInfo(blob.algorithm, blob.generation, blob.public_key)

    def delete_key_pair(self, ref: str) -> None:
        self._forget(_KEYPAIR, ref)
        remove_durably(self._path(_KEYPAIR, ref))

    def move_key_pair(self, src: str, dst: str) -> None:
        blob = self._require(_KEYPAIR, src)
        if src == dst:
            return
        # The authValue binds a blob to its id, so the key gets dst's authValue (TPM2_ObjectChangeAuth: a new
        # private area, same public area and generation) before it is written under the new name.
        new_auth = _key_auth(_KEYPAIR, dst)
        private = self._use_key(
            _KEYPAIR, src, blob, lambda ectx, handle: ectx.object_change_auth(handle, self._srk, new_auth)
        )
        public = TPM2B_PUBLIC.unmarshal(blob.public)[0]
        assert blob.algorithm is not None
        self._store(_KEYPAIR, dst, private, public, {"alg": blob.algorithm.value})
        # A crash before this line leaves the key under both names, never under neither.
        self._forget(_KEYPAIR, src)
        remove_durably(self._path(_KEYPAIR, src))

    def sign_digest(self, ref: str, digest: bytes, scheme: SignScheme) -> bytes:
        blob = self._require(_KEYPAIR, ref)
        algorithm = blob.algorithm
        assert algorithm is not None
        if algorithm.is_ec:
            if scheme.kind != "ecdsa":
                raise UnsupportedByBackend(f"an EC key cannot sign with {scheme.kind}")
            if not digest:
                raise InvalidParameter("the digest to sign is empty")
            _, size, hash_alg = _CURVES[algorithm]
            fitted = digest[:size].rjust(size, b"\x00")  # see the module docstring
            tpm_scheme = _sig_scheme(TPM2_ALG.ECDSA, _HASH_ALGS[hash_alg])
            return self._use_key(_KEYPAIR, ref, blob,
                                 lambda ectx, h: _ecdsa_sign(ectx, h, fitted, tpm_scheme, _null_ticket()))
        if scheme.kind not in _RSA_SCHEMES:
            raise UnsupportedByBackend(f"an RSA key cannot sign with {scheme.kind}")
        if len(digest) != _DIGEST_SIZES[scheme.hash]:
            raise InvalidParameter(f"a {scheme.hash} digest must be {_DIGEST_SIZES[scheme.hash]} bytes")
        # The TPM fixes the PSS salt length to the digest length, as the software backend does.
        tpm_scheme = _sig_scheme(_RSA_SCHEMES[scheme.kind], _HASH_ALGS[scheme.hash])
        signature = self._use_key(_KEYPAIR, ref, blob, lambda ectx, h: ectx.sign(h, digest, tpm_scheme, _null_ticket()))
        # rsassa and rsapss are the same TPMS_SIGNATURE_RSA in the union
        return bytes(signature.signature.rsassa.sig)

    def rsa_private_encrypt(self, ref: str, data: bytes, padding: RsaPadding) -> bytes:
        blob = self._require(_KEYPAIR, ref)
        if not isinstance(blob.public_key, rsa.RSAPublicKey):
            raise UnsupportedByBackend("RSA encryption needs an RSA key")
        n = blob.public_key.public_numbers().n
        k = (n.bit_length() + 7) // 8
        block = prepare_block(data, k, padding)
        if int.from_bytes(block, "big") >= n:
            raise InvalidParameter("RSA input is not smaller than the modulus")
        # TPM2_RSA_Decrypt with the NULL scheme is the bare private-key operation on the padded block.
        out = self._use_key(_KEYPAIR, ref, blob, lambda ectx, h: bytes(ectx.rsa_decrypt(h, block, _raw_rsa())))
        return out.rjust(k, b"\x00")

    # symmetric keys -------------------------------------------------------------------------------------------
    def _store_hmac_key(self, ref: str, usage: KeyUsage, secret: bytes | None) -> SymmetricKeyInfo:
        if KeyUsage.ENCRYPT in usage:
            raise UnsupportedByBackend("the TPM backend keeps HMAC keys (sign, derive) only, not AES-GCM keys")
        if secret is not None and not 0 < len(secret) <= _MAX_HMAC_KEY:
            raise UnsupportedByBackend(f"the TPM takes HMAC keys of 1 to {_MAX_HMAC_KEY} bytes")
        sensitive = _sensitive(_key_auth(_KEY, ref), secret)
        private, public = self._create(
            _KEY, ref, sensitive, _hmac_template(tpm_generated=secret is None), secret_inside=secret is not None
        )
        blob = self._store(_KEY, ref, private, public, {"usage": usage.names()})
        return SymmetricKeyInfo(blob.generation, usage)

    def create_key(self, ref: str, length: int, usage: KeyUsage) -> SymmetricKeyInfo:
        # The TPM generates HMAC-SHA256 keys of exactly the digest size; other lengths are host random bytes.
        if length == _HMAC_KEY_SIZE:
            return self._store_hmac_key(ref, usage, None)
        return self._store_hmac_key(ref, usage, secrets.token_bytes(length))

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        return self._store_hmac_key(ref, usage, key)

    def key_info(self, ref: str) -> SymmetricKeyInfo | None:
        blob = self._blob(_KEY, ref)
        if blob is None:
            return None
        assert blob.usage is not None
        return SymmetricKeyInfo(blob.generation, blob.usage)

    def delete_key(self, ref: str) -> None:
        self._forget(_KEY, ref)
        remove_durably(self._path(_KEY, ref))

    def hmac_sha256(self, ref: str, message: bytes) -> bytes:
        blob = self._require(_KEY, ref)

        return self._use_key(_KEY, ref, blob, lambda ectx, handle: hmac_sha256_in_tpm(ectx, handle, message))

    def aead_encrypt(self, ref: str, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        raise UnsupportedByBackend("TPM 2.0 has no AES-GCM; encrypt keys live in the software store")

    def aead_decrypt(self, ref: str, iv: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        raise UnsupportedByBackend("TPM 2.0 has no AES-GCM; encrypt keys live in the software store")

    # sealing --------------------------------------------------------------------------------------------------
    def seal_data(self, secret: bytes) -> bytes:
        """Seal ``secret`` (at most 128 bytes) under the SRK; the returned blob is only useful to this TPM."""
        private, public = self._create("sealed object", "", _sensitive(b"", secret), _sealed_template(),
                                       secret_inside=True)
        return _encode_blob("sealed", private, public, {})

    def unseal_data(self, sealed: bytes, where: str = "sealed blob") -> bytes:
        blob = _decode_blob(sealed, "sealed", where)

        def unseal(ectx: Any) -> bytes:
            self._flush_loaded(ectx, keep=0)
            handle = self._load(ectx, blob, b"", where)
            try:
                with self._param_session(ectx) as session:
                    return bytes(ectx.unseal(handle, session1=session))
            finally:
                self._flush(ectx, handle)

        return self._run(unseal)

    def close(self) -> None:
        self.lane.close()  # first: its running call may wait for the lock
        with self._lock:
            self._closed = True
            if self._ectx is not None:
                self._flush_loaded(self._ectx, keep=0)
            self._disconnect()
            self._blobs.clear()


class TpmSealedMasterKey:
    """The master key as a TPM-sealed object: the software key store is then useless off this device."""

    def __init__(self, tpm: TpmBackend | TpmSettings, path: Path) -> None:
        self._tpm = tpm
        self.path = path
        self.description = f"TPM-sealed file {path}"

    def load_or_create(self) -> bytes:
        backend = self._tpm if isinstance(self._tpm, TpmBackend) else TpmBackend(self._tpm)
        try:
            return self._load_or_create(backend)
        finally:
            if backend is not self._tpm:
                backend.close()

    def _load_or_create(self, backend: TpmBackend) -> bytes:
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            secret = secrets.token_bytes(MASTER_KEY_LENGTH)
            blob = backend.seal_data(secret)
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, blob)
            return secret
        try:
            secret = backend.unseal_data(sealed, where=str(self.path))
        except StoreCorrupted as e:
            raise BackendUnavailable(
                f"the master key sealed in {self.path} cannot be unsealed by this TPM ({e}); without it the "
                "software key store cannot be read"
            ) from e
        if len(secret) != MASTER_KEY_LENGTH:
            raise BackendUnavailable(
                f"the sealed master key in {self.path} holds {len(secret)} bytes, expected {MASTER_KEY_LENGTH}"
            )
        return secret
