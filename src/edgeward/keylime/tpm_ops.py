"""The TPM commands the Keylime agent needs, each a blocking function of an open ESAPI context.

They run through :meth:`edgeward.tpm.service.TpmService.run_exclusive`, under the TPM service's lock on its one
connection: with no resource manager (swtpm, /dev/tpm0) a second connection would see, and fill, the same few object
slots, and a quote must not interleave with another command resetting PCR 16. Every transient object and session
loaded here is flushed before the function returns; the attestation key is persisted (EvictControl), because the
registrar refuses a known agent that comes back with another AK.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from ..tpm.settings import ENDORSEMENT_KEY_HANDLE
from .ima import IMA_PCR
from .quote_format import DATA_PCR

__all__ = ["AkInfo", "QuoteParts", "activate_credential", "ek_certificate", "ek_public", "ensure_ak",
           "extend_measurement", "quote_pcrs", "read_pcr", "reset_count"]

_EK_CERT_INDEXES = (0x01C0_0002, 0x01C0_000A)  # TCG EK Credential Profile: the RSA 2048 and ECC P-256 EK certs
_NV_CHUNK = 512
_QUOTE_TRIES = 5  # PCRs read, then quoted: an extend in between (another process) changes the digest


class AkMismatch(RuntimeError):
    """The object at the AK handle is not an attestation key of the configured kind."""


@dataclass(frozen=True)
class AkInfo:
    handle: int
    public: bytes  # marshalled TPM2B_PUBLIC, as the registrar wants it in aik_tpm
    algorithm: str  # "rsa" or "ecc"


@dataclass(frozen=True)
class QuoteParts:
    attest: bytes  # TPMS_ATTEST's content
    signature: bytes  # marshalled TPMT_SIGNATURE
    pcrs: tuple[int, ...]
    values: tuple[bytes, ...]


def _ak_template(algorithm: str) -> Any:
    from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT  # noqa: PLC0415 -- only devices with a TPM need tpm2-pytss

    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)
    spec = "rsa2048:rsassa-sha256:null" if algorithm == "rsa" else "ecc256:ecdsa-sha256:null"
    return TPM2B_PUBLIC.parse(spec, objectAttributes=attrs)


def ek_public(ectx: Any) -> bytes:
    """The TPM service's EK (persisted at 0x81010001), a marshalled TPM2B_PUBLIC."""
    ek = ectx.tr_from_tpmpublic(ENDORSEMENT_KEY_HANDLE)
    try:
        return bytes(ectx.read_public(ek)[0].marshal())
    finally:
        with contextlib.suppress(Exception):
            ectx.tr_close(ek)


def ek_certificate(ectx: Any) -> bytes | None:
    """The manufacturer's certificate (DER) of this TPM's EK, from NV, where the TPM has one (swtpm without
    ``swtpm_setup --create-ek-cert`` does not: then the tenant must run with ``require_ek_cert = False``, and the EK
    is trusted on first use).

    Only a certificate of the very key at 0x81010001 is returned: the registrar refuses a registration whose
    ``ekcert`` carries another key than ``ek_tpm`` (a 400, retried for ever), and a TPM holds certificates of
    several EKs (RSA and ECC, low and high range), while the key persisted at the handle may have been made from
    another template than the one the manufacturer certified."""
    from tpm2_pytss.TSS2_Exception import TSS2_Exception  # noqa: PLC0415

    ek_tr = ectx.tr_from_tpmpublic(ENDORSEMENT_KEY_HANDLE)
    try:
        ek = _public_key_der(ectx.read_public(ek_tr)[0])
    finally:
        with contextlib.suppress(Exception):
            ectx.tr_close(ek_tr)
    for index in _EK_CERT_INDEXES:
        try:
            tr = ectx.tr_from_tpmpublic(index)
        except TSS2_Exception:
            continue
        try:
            cert = _read_nv_der(ectx, tr)
        except TSS2_Exception:
            continue
        finally:
            with contextlib.suppress(Exception):
                ectx.tr_close(tr)
        if cert is not None and ek is not None and _certified_key_der(cert) == ek:
            return cert
    return None


def _read_nv_der(ectx: Any, tr: Any) -> bytes | None:
    """The DER certificate in an NV index, read in chunks a TPM's NV buffer holds, under the index's own (empty)
    authorization as the EK Credential Profile provides (AUTHREAD), or the owner's where only OWNERREAD is set."""
    from tpm2_pytss import ESYS_TR, TPMA_NV  # noqa: PLC0415

    public = ectx.nv_read_public(tr)[0].nvPublic
    attrs, size = int(public.attributes), int(public.dataSize)
    if not attrs & TPMA_NV.WRITTEN:
        return None
    auth = tr if attrs & TPMA_NV.AUTHREAD or not attrs & TPMA_NV.OWNERREAD else ESYS_TR.OWNER
    data = b""
    while len(data) < size:
        chunk = bytes(ectx.nv_read(tr, min(_NV_CHUNK, size - len(data)), len(data), auth))
        if not chunk:
            return None
        data += chunk
        if (cert := der_prefix(data)) is not None:
            return cert  # an index padded after its certificate is not read to the end
    return der_prefix(data)


def _public_key_der(public: Any) -> bytes | None:
    """SubjectPublicKeyInfo of a TPM2B_PUBLIC, as the registrar compares it with the certificate's."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        key = serialization.load_pem_public_key(bytes(public.to_pem()))
    except (ValueError, TypeError, RuntimeError):
        return None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certified_key_der(cert: bytes) -> bytes | None:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        key = x509.load_der_x509_certificate(cert).public_key()
    except ValueError:
        return None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ensure_ak(ectx: Any, handle: int, algorithm: str) -> AkInfo:
    """The attestation key at ``handle``: used where it is (if it is a restricted signing key of the configured
    kind), created from the fixed template and persisted there otherwise."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG  # noqa: PLC0415
    from tpm2_pytss.TSS2_Exception import TSS2_Exception  # noqa: PLC0415

    try:
        tr = ectx.tr_from_tpmpublic(handle)
    except TSS2_Exception:
        tr = None
    if tr is None:
        transient, *_ = ectx.create_primary(None, _ak_template(algorithm), ESYS_TR.OWNER)
        try:
            tr = ectx.evict_control(ESYS_TR.OWNER, transient, handle)
        finally:
            with contextlib.suppress(Exception):
                ectx.flush_context(transient)
    try:
        public = ectx.read_public(tr)[0]
    finally:
        with contextlib.suppress(Exception):
            ectx.tr_close(tr)
    area = public.publicArea
    if area.type != (TPM2_ALG.RSA if algorithm == "rsa" else TPM2_ALG.ECC) \
            or not ak_attributes_acceptable(int(area.objectAttributes)):
        raise AkMismatch(f"the object at TPM handle {handle:#x} is not a restricted {algorithm.upper()} signing "
                         "key made inside this TPM and bound to it; choose another [edgeward.keylime] ak_handle or "
                         "evict it (tpm2_evictcontrol)")
    return AkInfo(handle, bytes(public.marshal()), algorithm)


def activate_credential(ectx: Any, ak_handle: int, credential: bytes, secret: bytes) -> bytes:
    """TPM2_ActivateCredential: the registrar's challenge, which only this TPM's EK can recover, and only for a
    credential made to this AK's name."""
    from tpm2_pytss import (  # noqa: PLC0415
        ESYS_TR,
        TPM2_ALG,
        TPM2_SE,
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPMT_SYM_DEF,
        TPMU_SYM_KEY_BITS,
        TPMU_SYM_MODE,
    )

    cred, _ = TPM2B_ID_OBJECT.unmarshal(credential)
    enc, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
    sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128),
                       mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))
    ek = ectx.tr_from_tpmpublic(ENDORSEMENT_KEY_HANDLE)
    ak = ectx.tr_from_tpmpublic(ak_handle)
    session = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, sym, TPM2_ALG.SHA256)
    try:
        ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)  # the EK's policy (EK Credential Profile template L-1)
        return bytes(ectx.activate_credential(ak, ek, cred, enc, session1=ESYS_TR.PASSWORD, session2=session))
    finally:
        with contextlib.suppress(Exception):
            ectx.flush_context(session)
        for tr in (ek, ak):
            with contextlib.suppress(Exception):
                ectx.tr_close(tr)


def read_pcr(ectx: Any, pcr: int) -> bytes:
    _, _, values = ectx.pcr_read(f"sha256:{pcr}")
    return bytes(values[0])


def _read_pcrs(ectx: Any, pcrs: list[int]) -> list[bytes]:
    """PCR_Read answers at most 8 digests per call."""
    values: dict[int, bytes] = {}
    todo = list(pcrs)
    while todo:
        _, selected, digests = ectx.pcr_read("sha256:" + ",".join(map(str, todo)))
        got = [p for p in todo if selected.pcrSelections[0].pcrSelect[p // 8] >> (p % 8) & 1]
        if not got:
            raise RuntimeError(f"the TPM's SHA-256 bank does not hold PCRs {todo}")
        for pcr, digest in zip(got, digests, strict=False):
            values[pcr] = bytes(digest)
        todo = [p for p in todo if p not in values]
    return [values[p] for p in pcrs]


def quote_pcrs(ectx: Any, ak_handle: int, nonce: bytes, pcrs: list[int], bound_data: bytes) -> QuoteParts:
    """Bind ``bound_data`` into PCR 16 (reset, then extend with its SHA-256), read the PCRs and quote them with the
    nonce. Read and quote are two commands: if a PCR moves in between, the digests differ and it is done again."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA  # noqa: PLC0415

    if DATA_PCR not in pcrs:
        raise ValueError("PCR 16 carries the key binding and is always quoted")
    ectx.pcr_reset(ESYS_TR.PCR16)
    ectx.pcr_extend(ESYS_TR.PCR16, TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=hashlib.sha256(bound_data).digest()))]))
    ak = ectx.tr_from_tpmpublic(ak_handle)
    try:
        for _ in range(_QUOTE_TRIES):
            values = _read_pcrs(ectx, pcrs)
            attest, signature = ectx.quote(ak, "sha256:" + ",".join(map(str, pcrs)), nonce)
            raw = bytes(attest)
            if raw.endswith(hashlib.sha256(b"".join(values)).digest()):  # pcrDigest closes TPMS_QUOTE_INFO
                return QuoteParts(raw, bytes(signature.marshal()), tuple(pcrs), tuple(values))
        raise RuntimeError("the PCRs kept changing between read and quote")
    finally:
        with contextlib.suppress(Exception):
            ectx.tr_close(ak)


def extend_measurement(ectx: Any, before: bytes, digest: bytes) -> bytes:
    """Extend PCR 10 with ``digest`` if it still holds ``before``; if it already holds the result (the command
    ran but its answer was lost, and the TPM service retried), leave it. Any other value is someone else's extend:
    refuse, since the list would no longer replay."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA  # noqa: PLC0415

    after = hashlib.sha256(before + digest).digest()
    now = read_pcr(ectx, IMA_PCR)
    if now == after:
        return after
    if now != before:
        raise RuntimeError(f"PCR {IMA_PCR} changed outside the measurement list (it is {now.hex()[:16]}..., the list "
                           f"replays to {before.hex()[:16]}...)")
    ectx.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([TPMT_HA(hashAlg=TPM2_ALG.SHA256,
                                                               digest=TPMU_HA(sha256=digest))]))
    return after


def reset_count(ectx: Any) -> int:
    """The TPM's resetCount: it goes up on every TPM Reset (a reboot), when PCR 10 returns to zero."""
    return int(ectx.read_clock().clockInfo.resetCount)


def der_prefix(data: bytes) -> bytes | None:
    """The DER SEQUENCE at the start of ``data`` (an NV index is larger than the certificate it holds and padded
    after it). Cut by the SEQUENCE's own length, not by stripping zeros: a certificate may end in a zero byte."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        header, length = 2, first
    else:
        octets = first & 0x7F
        if not 0 < octets <= 4 or len(data) < 2 + octets:
            return None
        header, length = 2 + octets, int.from_bytes(data[2:2 + octets], "big")
    end = header + length
    return data[:end] if end <= len(data) else None


def ak_attributes_acceptable(attrs: int) -> bool:
    """A restricted signing key (never decrypting) whose private part was made in this TPM and can never leave it:
    a key pre-planted at the handle by someone who holds its private part (imported, or duplicable) would sign
    quotes outside the TPM. Keylime's verifier does not check this, so the agent must."""
    from tpm2_pytss import TPMA_OBJECT  # noqa: PLC0415

    required = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                | TPMA_OBJECT.SENSITIVEDATAORIGIN)
    return attrs & required == required and not attrs & TPMA_OBJECT.DECRYPT
