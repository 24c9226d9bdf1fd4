"""Edgeward's measurement of itself, anchored in the TPM: extend a PCR at start, quote it on request.

The attestation key is a restricted ECDSA P-256 primary key under the owner hierarchy, made from a fixed
template: the TPM recreates the same key every time, so a verifier can pin its public key once and check every
later quote against it. Nothing is persisted in the TPM (its 3 transient slots are flushed after each use).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["DEFAULT_PCR", "Quote", "extend", "extend_with", "quote", "quote_with", "verify_quote"]

DEFAULT_PCR = 23  # "application support": resettable, not used by firmware or the boot chain


def _esapi(tcti: str) -> Any:
    from tpm2_pytss import ESAPI  # noqa: PLC0415 -- only devices with a TPM need tpm2-pytss

    return ESAPI(tcti)


def extend_with(ectx: Any, measurement: bytes, pcr: int = DEFAULT_PCR) -> str:
    """Extend `pcr` (SHA-256 bank) with a 32-byte measurement over an open ESAPI context (the TPM service's own,
    where one owns the TPM); returns the PCR's new value (hex)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA  # noqa: PLC0415

    if len(measurement) != 32:
        raise ValueError("a SHA-256 measurement is 32 bytes")
    ectx.pcr_extend(ESYS_TR.parse(f"pcr{pcr}"), TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=measurement))]))
    return _read_pcr(ectx, pcr).hex()


def extend(tcti: str, measurement: bytes, pcr: int = DEFAULT_PCR) -> str:
    ectx = _esapi(tcti)
    try:
        return extend_with(ectx, measurement, pcr)
    finally:
        ectx.close()


def _read_pcr(ectx: Any, pcr: int) -> bytes:
    _, _, values = ectx.pcr_read(f"sha256:{pcr}")
    return bytes(values[0])


def _ak_template() -> Any:
    from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT  # noqa: PLC0415

    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)
    return TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)


@dataclass(frozen=True)
class Quote:
    pcr: int
    pcr_value: str  # hex
    nonce: str  # hex, as the caller gave it
    attest: str  # base64 TPMS_ATTEST, the signed structure
    signature: str  # base64 DER ECDSA signature over SHA-256(attest)
    ak_public_pem: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def quote(tcti: str, nonce: bytes, pcr: int = DEFAULT_PCR, owner_auth: bytes = b"") -> Quote:
    """A TPM quote over `pcr` with the caller's nonce (at most 64 bytes), signed by the attestation key."""
    if not 1 <= len(nonce) <= 64:
        raise ValueError("the nonce must be 1 to 64 bytes")
    ectx = _esapi(tcti)
    try:
        return quote_with(ectx, nonce, pcr, owner_auth)
    finally:
        ectx.close()


def quote_with(ectx: Any, nonce: bytes, pcr: int = DEFAULT_PCR, owner_auth: bytes = b"") -> Quote:
    """`quote` over an open ESAPI context; the attestation key is flushed before returning."""
    from tpm2_pytss import ESYS_TR, TPM2B_SENSITIVE_CREATE  # noqa: PLC0415

    if not 1 <= len(nonce) <= 64:
        raise ValueError("the nonce must be 1 to 64 bytes")
    handle = None
    try:
        if owner_auth:
            ectx.tr_set_auth(ESYS_TR.OWNER, owner_auth)
        handle, public, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), _ak_template(), ESYS_TR.OWNER)
        attest, sig = ectx.quote(handle, f"sha256:{pcr}", nonce)
        ecc = public.publicArea.unique.ecc
        ak = ec.EllipticCurvePublicNumbers(int.from_bytes(bytes(ecc.x), "big"), int.from_bytes(bytes(ecc.y), "big"),
                                           ec.SECP256R1()).public_key()
        der = encode_dss_signature(int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
                                   int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"))
        return Quote(pcr, _read_pcr(ectx, pcr).hex(), nonce.hex(), base64.b64encode(bytes(attest)).decode(),
                     base64.b64encode(der).decode(),
                     ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                     .decode())
    finally:
        if handle is not None:
            with contextlib.suppress(Exception):
                ectx.flush_context(handle)


def verify_quote(q: Quote, expected_nonce: bytes, expected_pcr_value: bytes) -> None:
    """Raise ValueError unless `q` is signed by its AK, carries the nonce, and covers the expected PCR value."""
    from tpm2_pytss import TPM2_GENERATED, TPMS_ATTEST  # noqa: PLC0415

    raw = base64.b64decode(q.attest)
    key = serialization.load_pem_public_key(q.ak_public_pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(base64.b64decode(q.signature), raw, ec.ECDSA(hashes.SHA256()))
    except Exception as e:
        raise ValueError("the quote's signature does not verify with its attestation key") from e
    attest, _ = TPMS_ATTEST.unmarshal(raw)
    if attest.magic != TPM2_GENERATED.VALUE:
        raise ValueError("not a TPM-generated structure")
    if bytes(attest.extraData) != expected_nonce:
        raise ValueError("the quote does not carry the expected nonce (replayed?)")
    if bytes(attest.attested.quote.pcrDigest) != hashlib.sha256(expected_pcr_value).digest():
        raise ValueError("the quoted PCR value is not the expected one")
