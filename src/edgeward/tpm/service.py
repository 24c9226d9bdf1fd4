"""The TPM service (aziot-tpmd): the endorsement key, the storage root key and the DPS authentication key.

In TPM terms:

- At start, the EK (persistent handle 0x81010001) and the SRK (0x81000001) are used where they are persisted, or
  created from the TCG templates and persisted there: RSA-2048, the EK Credential Profile's template L-1 (under the
  endorsement hierarchy, usable only through the policy PolicySecret(TPM_RH_ENDORSEMENT)) and the Provisioning
  Guidance's SRK template. An SRK that is already there, such as the ECC one the keys service's TPM backend creates,
  is used as it is.
- ``get_tpm_keys``: the public areas of both, each a marshalled TPM2B_PUBLIC.
- ``import_auth_key``: the blob DPS returns (:class:`AuthKeyBlob`). TPM2_ActivateCredential with the EK recovers the
  inner wrapper key, which only this TPM can do and only for a credential bound to its SRK's name; TPM2_Import then
  takes the HMAC key that DPS duplicated to the SRK, TPM2_Load loads it, and TPM2_EvictControl persists it at
  ``0x81000000 + auth_key_index``.
- ``sign_with_auth_key``: HMAC-SHA256 with that persistent key (an HMAC sequence beyond 1024 bytes).
- The audit log's monotonic counter: an NV counter index (TPMA_NV_COUNTER) at ``audit_counter_index``, defined under
  the owner hierarchy on first increment, written with owner authorization and readable by anyone. The TPM never
  lets it go down, not even by undefining and defining it again (a new counter starts above every value a deleted
  one had), so a copy of the audit log from before an increment shows as older than the TPM.

Why the old auth key is evicted only once the new one is loaded: aziot-tpmd evicts first, so a blob that the TPM
refuses leaves the device with no key at all; here a refused blob changes nothing.

Why TPM answers are sorted: a blob made for another TPM is the caller's mistake (400, with the TPM's reason); a
wrong hierarchy authorization or an unreachable TPM is a configuration matter (503, naming the setting); anything
else is ours (500, details in the log). libtpms answers TPM_RC_FAILURE, not TPM_RC_VALUE, when the EK cannot
decrypt a secret made for another key, so after a TPM_RC_FAILURE the TPM is asked whether it still works before the
blob is blamed.

There is no resource manager between us and the TPM on many devices (and none with swtpm), so every object and
session this service loads is flushed again, and objects that other processes left in the TPM's few slots are
flushed only when the TPM says its slots are full.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HC,
    TPM2_NT,
    TPM2_RC,
    TPM2_SE,
    TPM2_SU,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMA_NV,
    TPMA_OBJECT,
    TPMS_NV_PUBLIC,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from ..attest.tpm_quote import DEFAULT_PCR, Quote, extend_with, quote_with
from ..executor import BlockingExecutor
from ..http.errors import BadRequest
from ..keys.backends.tpm import (
    _AUTH_RCS,
    TpmBackend,
    _connection_lost,
    _has_resource_manager,
    _tpm_rc,
    flush_quietly,
    hmac_sha256_in_tpm,
    run_retrying_once,
)
from .api import AuthKeyMissing, InvalidAuthKey, TpmKeys, TpmUnavailable
from .settings import ENDORSEMENT_KEY_HANDLE, STORAGE_ROOT_KEY_HANDLE, TpmdSettings

__all__ = ["AuthKeyBlob", "TpmService"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# PolicySecret(TPM_RH_ENDORSEMENT): the EK's authPolicy in the TCG EK Credential Profile (templates L-1, L-2).
_EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
# Answers meaning the TPM's object or session slots are full, and answers meaning a handle we hold is stale.
_FULL_RCS = frozenset({TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY, TPM2_RC.OBJECT_HANDLES,
                       TPM2_RC.SESSION_HANDLES})
_STALE_RCS = frozenset({TPM2_RC.HANDLE, TPM2_RC.REFERENCE_H0, TPM2_RC.REFERENCE_H1})
_RC_FORMAT_ONE = 0x80
# The audit counter: written only with owner authorization, read by anyone, exempt from dictionary-attack lockout
# (a read with a wrong password must not lock the owner out).
_COUNTER_ATTRIBUTES = (TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
                       | (int(TPM2_NT.COUNTER) << 4))  # TPM_NT sits in bits 4-7 of TPMA_NV
_RC_PARAMETER = 0x40

_BLOB_LAYOUT: tuple[tuple[str, Any], ...] = (
    ("credential blob (TPM2B_ID_OBJECT)", TPM2B_ID_OBJECT),
    ("encrypted secret (TPM2B_ENCRYPTED_SECRET)", TPM2B_ENCRYPTED_SECRET),
    ("duplicated key (TPM2B_PRIVATE)", TPM2B_PRIVATE),
    ("encrypted seed (TPM2B_ENCRYPTED_SECRET)", TPM2B_ENCRYPTED_SECRET),
    ("key's public area (TPM2B_PUBLIC)", TPM2B_PUBLIC),
)


# the blob ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthKeyBlob:
    """The ``authenticationKey`` DPS returns to a device registering with TPM attestation, unmarshalled.

    Five TPM2B structures back to back, each a big-endian UINT16 size and that many bytes, as the TPM marshals them:

    ====  ======================  ================================================================================
    1     TPM2B_ID_OBJECT         credential blob   } TPM2_MakeCredential against the EK, bound to the name of the
    2     TPM2B_ENCRYPTED_SECRET  secret            } SRK; the credential is the 16-byte AES-128 inner wrapper key
    3     TPM2B_PRIVATE           duplicate         } the HMAC key, duplicated to the SRK: inner wrapper AES-128-CFB
    4     TPM2B_ENCRYPTED_SECRET  seed              } with the key above, outer wrapper from the seed (to the SRK)
    5     TPM2B_PUBLIC            public area       a keyed-hash (HMAC) key
    ====  ======================  ================================================================================

    The Azure IoT C SDK reads a UINT16-sized encrypted-data field after these; aziot-tpmd ignores whatever follows
    the public area, and so does this parser.
    """

    credential_blob: Any
    secret: Any
    duplicate: Any = field(repr=False)
    seed: Any = field(repr=False)
    public: Any
    trailing: int = 0  # bytes after the public area, ignored

    @classmethod
    def parse(cls, raw: bytes) -> AuthKeyBlob:
        if not raw:
            raise InvalidAuthKey("the authentication key blob is empty")
        parts: list[Any] = []
        offset = 0
        for name, kind in _BLOB_LAYOUT:
            try:
                value, used = kind.unmarshal(raw[offset:])
            except TSS2_Exception as e:
                raise InvalidAuthKey(
                    f"the authentication key blob is malformed: its {name} at byte {offset} of {len(raw)} cannot "
                    f"be read ({e})"
                ) from None
            if used <= 2:
                raise InvalidAuthKey(f"the authentication key blob is malformed: its {name} is empty")
            parts.append(value)
            offset += used
        public = parts[4].publicArea
        if public.type != TPM2_ALG.KEYEDHASH or not int(public.objectAttributes) & TPMA_OBJECT.SIGN_ENCRYPT:
            raise InvalidAuthKey("the key in the authentication key blob is not an HMAC (keyed-hash signing) key")
        credential_blob, secret, duplicate, seed, public_area = parts
        return cls(credential_blob, secret, duplicate, seed, public_area, trailing=len(raw) - offset)


# templates ---------------------------------------------------------------------------------------------------------
def _aes128cfb(kind: Any) -> Any:
    return kind(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128), mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))


def _rsa2048_storage_template(attributes: int, policy: bytes = b"") -> Any:
    public = TPMT_PUBLIC(type=TPM2_ALG.RSA, nameAlg=TPM2_ALG.SHA256, objectAttributes=attributes, authPolicy=policy)
    detail = public.parameters.rsaDetail
    detail.symmetric = _aes128cfb(TPMT_SYM_DEF_OBJECT)
    detail.scheme.scheme = TPM2_ALG.NULL
    detail.keyBits = 2048
    detail.exponent = 0  # 65537
    public.unique.rsa = b"\x00" * 256
    return TPM2B_PUBLIC(publicArea=public)


_STORAGE = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | \
    TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT


def _ek_template() -> Any:
    """TCG EK Credential Profile, template L-1 (RSA 2048)."""
    return _rsa2048_storage_template(_STORAGE | TPMA_OBJECT.ADMINWITHPOLICY, _EK_POLICY)


def _srk_template() -> Any:
    """TCG TPM v2.0 Provisioning Guidance, 7.5.1: the RSA 2048 storage primary key."""
    return _rsa2048_storage_template(_STORAGE | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)


def _parameter_error(e: Any) -> bool:
    """The TPM refused a command parameter (format-one response code with the P bit): bad input, not a bad TPM."""
    raw = int(e.rc) & 0xFFFF
    return _tpm_rc(e) is not None and bool(raw & _RC_FORMAT_ONE) and bool(raw & _RC_PARAMETER)


# the TPM, blocking ---------------------------------------------------------------------------------------------------
class _Tpm:
    """One ESAPI connection under one lock (an ESAPI context is not thread-safe, and a TPM runs one command at a
    time anyway); after a lost connection or stale handles, one reconnect and retry."""

    def __init__(self, settings: TpmdSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._ectx: Any = None
        self._ek: Any = None
        self._srk: Any = None
        self._auth_key: Any = None  # the persistent auth key's ESYS_TR, once looked up
        self._closed = False
        with self._lock:
            self._connect()

    def _where(self) -> str:
        return f"TCTI {self.settings.tcti!r} (setting {self.settings.setting('tcti')})"

    def _auth_setting(self, hierarchy: str) -> str:
        return self.settings.setting(f"hierarchy_authorization.{hierarchy}")

    # connection -------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            ectx = ESAPI(self.settings.tcti)
        except (TSS2_Exception, RuntimeError, ValueError, TypeError, OSError) as e:
            raise TpmUnavailable(f"cannot open the TPM at {self._where()}: {e}") from e
        try:
            self._start_up(ectx)
            auth = self.settings.hierarchy_authorization
            ectx.tr_set_auth(ESYS_TR.ENDORSEMENT, auth.endorsement.encode())
            ectx.tr_set_auth(ESYS_TR.OWNER, auth.owner.encode())
            ek = self._ensure_primary(ectx, ENDORSEMENT_KEY_HANDLE, "endorsement key", "endorsement")
            srk = self._ensure_primary(ectx, STORAGE_ROOT_KEY_HANDLE, "storage root key", "owner")
        except TSS2_Exception as e:
            ectx.close()
            raise TpmUnavailable(f"the TPM at {self._where()} is not usable: {e}") from e
        except BaseException:
            ectx.close()
            raise
        self._ectx, self._ek, self._srk, self._auth_key = ectx, ek, srk, None

    @staticmethod
    def _start_up(ectx: Any) -> None:
        try:
            ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 1)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.INITIALIZE:
                raise
            ectx.startup(TPM2_SU.CLEAR)  # a TPM reset without a startup, e.g. swtpm without startup-clear

    def _ensure_primary(self, ectx: Any, handle: int, name: str, hierarchy: str) -> Any:
        try:
            key = ectx.tr_from_tpmpublic(handle)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.HANDLE:
                raise
            key = self._create_primary(ectx, handle, name, hierarchy)
        public = ectx.read_public(key)[0].publicArea
        attrs = int(public.objectAttributes)
        if (public.type not in (TPM2_ALG.RSA, TPM2_ALG.ECC) or not attrs & TPMA_OBJECT.RESTRICTED
                or not attrs & TPMA_OBJECT.DECRYPT or attrs & TPMA_OBJECT.SIGN_ENCRYPT):
            raise TpmUnavailable(
                f"the object at persistent handle {handle:#x} is not a restricted decryption key, so it cannot be "
                f"the TPM's {name}; evict it (tpm2_evictcontrol) so that a proper one is created ({self._where()})"
            )
        return key

    def _create_primary(self, ectx: Any, handle: int, name: str, hierarchy: str) -> Any:
        log.info("creating the TPM %s at persistent handle %#x", name, handle)
        parent, template = ((ESYS_TR.ENDORSEMENT, _ek_template()) if hierarchy == "endorsement"
                            else (ESYS_TR.OWNER, _srk_template()))
        try:
            transient, *_ = ectx.create_primary(None, template, parent)
        except TSS2_Exception as e:
            if _tpm_rc(e) in _AUTH_RCS:
                raise TpmUnavailable(
                    f"the TPM rejected the {hierarchy} hierarchy authorization needed to create its {name}: check "
                    f"{self._auth_setting(hierarchy)} (TPM at {self._where()})"
                ) from e
            raise
        try:
            return self._persist(ectx, transient, handle)
        finally:
            self._flush(ectx, transient)

    def _persist(self, ectx: Any, transient: Any, handle: int) -> Any:
        try:
            return ectx.evict_control(ESYS_TR.OWNER, transient, handle)
        except TSS2_Exception as e:
            if _tpm_rc(e) in _AUTH_RCS:
                raise TpmUnavailable(
                    f"the TPM rejected the owner hierarchy authorization needed to persist an object at {handle:#x}: "
                    f"check {self._auth_setting('owner')} (TPM at {self._where()})"
                ) from e
            raise

    def _connected(self) -> Any:
        if self._ectx is None:
            if self._closed:
                raise TpmUnavailable("the TPM service is closed")
            self._connect()
        return self._ectx

    def _disconnect(self) -> None:
        ectx, self._ectx, self._ek, self._srk, self._auth_key = self._ectx, None, None, None, None
        if ectx is not None:
            with suppress(Exception):
                ectx.close()

    def _run(self, op: Callable[[Any], T]) -> T:
        """Run ``op(esapi)`` under the lock; after a lost connection, full slots or stale handles, retry once."""
        with self._lock:
            return run_retrying_once(op, self._connected, self._disconnect, recover=self._recover,
                                     unavailable=TpmUnavailable, where=self._where)

    def _recover(self, e: Any) -> bool:
        rc = _tpm_rc(e)
        if rc in _FULL_RCS:
            log.warning("the TPM's slots are full (%s); flushing what other processes left there", e)
            try:
                self._flush_leftovers(self._ectx)
            except TSS2_Exception:
                self._disconnect()
        elif rc in _STALE_RCS:
            log.warning("a TPM handle went stale (%s); reconnecting", e)
            self._disconnect()
        else:
            return False
        return True

    @staticmethod
    def _flush(ectx: Any, handle: Any) -> None:
        flush_quietly(ectx, handle)

    def _flush_leftovers(self, ectx: Any) -> None:
        """Objects and sessions of other processes (or of a killed one) fill the few slots of a TPM without a
        resource manager; behind one, a full TPM is not ours to clean."""
        if _has_resource_manager(self.settings.tcti):
            return
        handles = TpmBackend._list_handles(ectx, TPM2_HC.TRANSIENT_FIRST)
        handles += TpmBackend._list_handles(ectx, TPM2_HC.LOADED_SESSION_FIRST)
        for handle in handles:
            with suppress(TSS2_Exception):
                ectx.flush_context(ectx.tr_from_tpmpublic(handle))
        log.warning("flushed %d object(s) and session(s) left in the TPM", len(handles))

    def _still_working(self, ectx: Any) -> bool:
        """False when the TPM is in failure mode (it then answers TPM_RC_FAILURE to nearly every command)."""
        try:
            ectx.read_public(self._ek)
        except TSS2_Exception:
            return False
        return True

    # operations -------------------------------------------------------------------------------------------------
    def get_tpm_keys(self) -> TpmKeys:
        def read(ectx: Any) -> TpmKeys:
            return TpmKeys(
                endorsement_key=bytes(ectx.read_public(self._ek)[0].marshal()),
                storage_root_key=bytes(ectx.read_public(self._srk)[0].marshal()),
            )

        return self._run(read)

    @contextmanager
    def _ek_policy_session(self, ectx: Any) -> Iterator[Any]:
        session = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, _aes128cfb(TPMT_SYM_DEF),
                                          TPM2_ALG.SHA256)
        try:
            try:
                ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)
            except TSS2_Exception as e:
                if _tpm_rc(e) in _AUTH_RCS:
                    raise TpmUnavailable(
                        "the TPM rejected the endorsement hierarchy authorization that the endorsement key's policy "
                        f"needs: check {self._auth_setting('endorsement')} (TPM at {self._where()})"
                    ) from e
                raise
            yield session
        finally:
            self._flush(ectx, session)

    def _blob_step(self, ectx: Any, what: str, step: Callable[[], T]) -> T:
        """Run one TPM command on the blob's contents; a refusal of its parameters is the blob's fault."""
        try:
            return step()
        except TSS2_Exception as e:
            if _connection_lost(e):
                raise
            if _parameter_error(e):
                raise InvalidAuthKey(f"{what} ({e})") from e
            if _tpm_rc(e) == TPM2_RC.FAILURE and self._still_working(ectx):
                raise InvalidAuthKey(f"{what} (the TPM cannot decrypt its encrypted secret)") from e
            raise

    def import_auth_key(self, blob: AuthKeyBlob) -> None:
        handle = self.settings.auth_key_handle

        def activate_and_import(ectx: Any) -> None:
            with self._ek_policy_session(ectx) as session:
                inner = self._blob_step(
                    ectx,
                    "the authentication key blob was not made for this TPM: TPM2_ActivateCredential refused it (its "
                    "secret must be encrypted to this TPM's endorsement key and bound to its storage root key)",
                    lambda: ectx.activate_credential(self._srk, self._ek, blob.credential_blob, blob.secret,
                                                     session1=ESYS_TR.PASSWORD, session2=session),
                )
            private = self._blob_step(
                ectx,
                "the HMAC key in the authentication key blob cannot be imported under this TPM's storage root key: "
                "TPM2_Import refused it",
                lambda: ectx.import_(self._srk, bytes(inner), blob.public, blob.duplicate, blob.seed,
                                     _aes128cfb(TPMT_SYM_DEF_OBJECT)),
            )
            transient = self._blob_step(
                ectx, "the TPM refuses to load the imported authentication key",
                lambda: ectx.load(self._srk, private, blob.public),
            )
            try:
                self._evict_auth_key(ectx, handle)
                self._auth_key = self._persist(ectx, transient, handle)
            finally:
                self._flush(ectx, transient)

        self._run(activate_and_import)
        log.info("imported the DPS authentication key at persistent handle %#x", handle)

    def _evict_auth_key(self, ectx: Any, handle: int) -> None:
        old = self._auth_key
        if old is None:
            try:
                old = ectx.tr_from_tpmpublic(handle)
            except TSS2_Exception as e:
                if _tpm_rc(e) == TPM2_RC.HANDLE:
                    return  # nothing there yet
                raise
        self._auth_key = None
        try:
            ectx.evict_control(ESYS_TR.OWNER, old, handle)
        except TSS2_Exception as e:
            if _tpm_rc(e) in _AUTH_RCS:
                raise TpmUnavailable(
                    f"the TPM rejected the owner hierarchy authorization needed to replace the key at {handle:#x}: "
                    f"check {self._auth_setting('owner')} (TPM at {self._where()})"
                ) from e
            raise

    def _auth_key_tr(self, ectx: Any) -> Any:
        if self._auth_key is not None:
            return self._auth_key
        handle = self.settings.auth_key_handle
        try:
            key = ectx.tr_from_tpmpublic(handle)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.HANDLE:
                raise
            raise AuthKeyMissing(
                f"no authentication key has been imported: nothing is persisted at TPM handle {handle:#x} "
                f"(setting {self.settings.setting('auth_key_index')}); DPS provisioning with TPM attestation imports "
                "it through POST /import_auth_key"
            ) from None
        public = ectx.read_public(key)[0].publicArea
        if public.type != TPM2_ALG.KEYEDHASH or not int(public.objectAttributes) & TPMA_OBJECT.SIGN_ENCRYPT:
            with suppress(TSS2_Exception):
                ectx.tr_close(key)
            raise TpmUnavailable(
                f"the object at TPM handle {handle:#x} is not an HMAC key, so it is no authentication key imported "
                f"here: another program uses that handle (choose another {self.settings.setting('auth_key_index')})"
            )
        self._auth_key = key
        return key

    def sign_with_auth_key(self, data: bytes) -> bytes:
        return self._run(lambda ectx: hmac_sha256_in_tpm(ectx, self._auth_key_tr(ectx), data))

    def extend_pcr(self, measurement: bytes, pcr: int) -> str:
        return self._run(lambda ectx: extend_with(ectx, measurement, pcr))

    # the audit counter ------------------------------------------------------------------------------------------
    def _counter_index(self, ectx: Any, *, define: bool) -> tuple[Any, bool] | None:
        """The counter's ESYS_TR and whether it was ever incremented; None if it is not defined (and ``define`` is
        False). An index of another kind at that handle is someone else's: refuse rather than use it."""
        index = self.settings.audit_counter_index
        try:
            tr = ectx.tr_from_tpmpublic(index)
        except TSS2_Exception as e:
            if _tpm_rc(e) != TPM2_RC.HANDLE:
                raise
            if not define:
                return None
            public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=_COUNTER_ATTRIBUTES, dataSize=8))
            try:
                tr = ectx.nv_define_space(b"", public, ESYS_TR.OWNER)
            except TSS2_Exception as e2:
                if _tpm_rc(e2) in _AUTH_RCS:
                    raise TpmUnavailable(
                        f"the TPM rejected the owner hierarchy authorization needed to define the audit counter at "
                        f"NV index {index:#x}: check {self._auth_setting('owner')} (TPM at {self._where()})"
                    ) from e2
                raise
            log.info("defined the audit log's monotonic counter at TPM NV index %#x", index)
            return tr, False
        attrs = int(ectx.nv_read_public(tr)[0].nvPublic.attributes)
        if attrs & ~int(TPMA_NV.WRITTEN) != int(_COUNTER_ATTRIBUTES):  # e.g. one anyone may increment (AUTHWRITE)
            with suppress(TSS2_Exception):
                ectx.tr_close(tr)
            raise TpmUnavailable(
                f"TPM NV index {index:#x} holds something other than Edgeward's audit counter; choose another "
                f"{self.settings.setting('audit_counter_index')} or undefine it (tpm2_nvundefine)"
            )
        return tr, bool(attrs & TPMA_NV.WRITTEN)

    @staticmethod
    def _counter_value(ectx: Any, tr: Any) -> int:
        return int.from_bytes(bytes(ectx.nv_read(tr, 8, 0, tr)), "big")

    def read_counter(self) -> int | None:
        def read(ectx: Any) -> int | None:
            found = self._counter_index(ectx, define=False)
            if found is None or not found[1]:
                return None  # never incremented: it has no value yet
            return self._counter_value(ectx, found[0])

        return self._run(read)

    def increment_counter(self) -> int:
        def increment(ectx: Any) -> int:
            found = self._counter_index(ectx, define=True)
            assert found is not None
            try:
                ectx.nv_increment(found[0], ESYS_TR.OWNER)
            except TSS2_Exception as e:
                if _tpm_rc(e) in _AUTH_RCS:
                    raise TpmUnavailable(
                        f"the TPM rejected the owner hierarchy authorization needed to increment the audit counter: "
                        f"check {self._auth_setting('owner')} (TPM at {self._where()})"
                    ) from e
                raise
            return self._counter_value(ectx, found[0])

        return self._run(increment)

    def quote(self, nonce: bytes, pcr: int) -> Quote:
        return self._run(lambda ectx: quote_with(ectx, nonce, pcr))  # owner auth is set on the connection

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._disconnect()


# the service -------------------------------------------------------------------------------------------------------
class TpmService:
    """The TPM service in-process; implements :class:`~edgeward.tpm.api.TpmApi`.

    Construction connects to the TPM and makes sure the EK and SRK exist, so a TPM that cannot be reached (or a
    wrong hierarchy authorization) surfaces as :class:`TpmUnavailable` naming the setting, before any socket opens.
    """

    def __init__(self, settings: TpmdSettings, executor: BlockingExecutor | None = None) -> None:
        self.settings = settings
        self._owns_executor = executor is None
        # One worker: the TPM runs one command at a time, and the connection is behind one lock anyway.
        self.executor = executor or BlockingExecutor(max_workers=1, name="edgeward-tpm")
        self._tpm = _Tpm(settings)

    def __repr__(self) -> str:
        return f"TpmService({self.settings!r})"

    async def get_tpm_keys(self) -> TpmKeys:
        return await self.executor.run(self._tpm.get_tpm_keys)

    async def import_auth_key(self, key: bytes) -> None:
        blob = AuthKeyBlob.parse(key)
        if blob.trailing:
            log.debug("ignoring %d byte(s) after the authentication key's public area", blob.trailing)
        await self.executor.run(self._tpm.import_auth_key, blob)

    async def sign_with_auth_key(self, data: bytes) -> bytes:
        return await self.executor.run(self._tpm.sign_with_auth_key, data)

    async def extend_pcr(self, measurement: bytes, pcr: int = DEFAULT_PCR) -> str:
        """Extend `pcr` with Edgeward's own measurement (at start); returns the PCR's new value (hex)."""
        return await self.executor.run(self._tpm.extend_pcr, measurement, pcr)

    async def read_audit_counter(self) -> int | None:
        return await self.executor.run(self._tpm.read_counter)

    async def increment_audit_counter(self) -> int:
        return await self.executor.run(self._tpm.increment_counter)

    def read_audit_counter_now(self) -> int | None:
        """Blocking, for the audit log's append, which its callers do not await (one TPM command, a few ms)."""
        return self._tpm.read_counter()

    def increment_audit_counter_now(self) -> int:
        """Blocking, for the audit log's append: the counter must move before the next record, not eventually."""
        return self._tpm.increment_counter()

    async def run_exclusive(self, op: Callable[[Any], T]) -> T:
        """Run ``op(esapi)`` on the service's connection, under its lock, with its reconnect-and-retry-once: for
        another part of Edgeward that speaks to the TPM itself (the Keylime agent) without a second connection, which
        without a resource manager would compete for the same few object slots. ``op`` must be safe to run twice and
        flush whatever it loads."""
        return await self.executor.run(self._tpm._run, op)

    async def quote(self, nonce: bytes, pcr: int = DEFAULT_PCR) -> Quote:
        if not 1 <= len(nonce) <= 64:
            raise BadRequest("nonce must be 1 to 64 bytes")
        return await self.executor.run(self._tpm.quote, nonce, pcr)

    def close(self) -> None:
        self._tpm.close()
        if self._owns_executor:
            self.executor.shutdown()
