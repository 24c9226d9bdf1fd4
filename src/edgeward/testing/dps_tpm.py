"""The cloud side of DPS TPM attestation, in software: what the Device Provisioning Service does with the EK and SRK
a device registers with, for the DPS emulator and for tests. Not on the production path.

The exchange (DPS device API, api-version 2021-06-01): the device's first register request carries
``"tpm": {"endorsementKey": b64, "storageRootKey": b64}`` (marshalled TPM2B_PUBLIC of each, as aziot-tpmd's
``GET /get_tpm_keys`` returns them); DPS answers 401 with ``{"authenticationKey": b64(blob)}``. The device hands
the blob to its TPM service (``POST /import_auth_key``), which persists the HMAC key inside it, and then signs its SAS
tokens with that key (``POST /sign_with_auth_key``); DPS checks them with the key it chose, :attr:`TpmChallenge.
hmac_key`. Only the TPM whose EK matches can activate the blob, and only under the SRK whose name it is bound to.

The blob is five TPM2B structures back to back (each a big-endian UINT16 size, then that many bytes), then an empty
UINT16-sized encrypted-data field that the Azure IoT C SDK's parser reads and aziot-tpmd ignores:

1. TPM2B_ID_OBJECT and 2. TPM2B_ENCRYPTED_SECRET: TPM2_MakeCredential against the EK's public area, with a random
   16-byte credential and the SRK's name as the object name;
3. TPM2B_PRIVATE and 4. TPM2B_ENCRYPTED_SECRET: the HMAC key duplicated to the SRK (TPM 2.0 Part 1, "Duplication"):
   the inner wrapper is AES-128-CFB with the credential as its key, the outer wrapper is derived from a seed
   encrypted to the SRK, which is what the device's TPM2_Import takes (encryptionKey = the activated credential);
5. TPM2B_PUBLIC: the HMAC key's public area (keyed hash, HMAC-SHA256, userWithAuth and sign, duplicable).

Written independently of :mod:`edgeward.tpm.service`, so that a layout mistake on one side cannot hide in shared code.
"""

from __future__ import annotations

import base64
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from tpm2_pytss import (
    TPM2_ALG,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPMA_OBJECT,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.utils import make_credential, wrap

__all__ = [
    "CREDENTIAL_LENGTH",
    "HMAC_KEY_LENGTH",
    "InvalidTpmPublic",
    "TpmChallenge",
    "make_tpm_challenge",
    "parse_tpm_public",
]

CREDENTIAL_LENGTH = 16  # the inner wrapper is AES-128, so the credential is its 16-byte key
HMAC_KEY_LENGTH = 32
_MAX_HMAC_KEY_LENGTH = 64  # the TPM caps keyed-hash sensitive data at the hash's block size
_HMAC_KEY_ATTRIBUTES = TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT  # no fixedTPM/fixedParent: importable
_ENCRYPTED_DATA_TRAILER = struct.pack(">H", 0)


class InvalidTpmPublic(ValueError):
    """An EK or SRK public area that is not a marshalled TPM2B_PUBLIC of a restricted decryption (storage) key."""


def parse_tpm_public(raw: bytes, what: str = "key") -> Any:
    """Unmarshal a TPM2B_PUBLIC that must be an RSA or ECC restricted decryption key with a symmetric algorithm,
    which is what MakeCredential (EK) and duplication (SRK) need of their target."""
    try:
        public, used = TPM2B_PUBLIC.unmarshal(raw)
    except TSS2_Exception as e:
        raise InvalidTpmPublic(f"the {what} is not a marshalled TPM2B_PUBLIC ({e})") from None
    if used != len(raw):
        raise InvalidTpmPublic(f"the {what} has {len(raw) - used} byte(s) after its TPM2B_PUBLIC")
    area = public.publicArea
    attrs = int(area.objectAttributes)
    if area.type not in (TPM2_ALG.RSA, TPM2_ALG.ECC):
        raise InvalidTpmPublic(f"the {what} is not an RSA or ECC key")
    if not attrs & TPMA_OBJECT.RESTRICTED or not attrs & TPMA_OBJECT.DECRYPT or attrs & TPMA_OBJECT.SIGN_ENCRYPT:
        raise InvalidTpmPublic(f"the {what} is not a restricted decryption key")
    if area.parameters.asymDetail.symmetric.algorithm == TPM2_ALG.NULL:
        raise InvalidTpmPublic(f"the {what} has no symmetric algorithm, so nothing can be wrapped to it")
    return public


@dataclass(frozen=True)
class TpmChallenge:
    """What DPS sends the device (``authentication_key``) and what it keeps to check the device's SAS tokens."""

    authentication_key: bytes
    hmac_key: bytes = field(repr=False)

    @property
    def authentication_key_b64(self) -> str:
        """The ``authenticationKey`` field of DPS's 401 answer."""
        return base64.b64encode(self.authentication_key).decode()


def _hmac_key_object(hmac_key: bytes) -> tuple[Any, Any]:
    scheme = TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.HMAC)
    scheme.details.hmac.hashAlg = TPM2_ALG.SHA256
    sensitive, public = TPM2B_SENSITIVE.keyedhash_from_secret(
        hmac_key, nameAlg=TPM2_ALG.SHA256, objectAttributes=_HMAC_KEY_ATTRIBUTES, scheme=scheme
    )
    return sensitive, public


def make_tpm_challenge(endorsement_key: bytes, storage_root_key: bytes, hmac_key: bytes | None = None) -> TpmChallenge:
    """The ``authenticationKey`` blob for the TPM with these EK and SRK publics (marshalled TPM2B_PUBLIC, as the
    device sent them), wrapping ``hmac_key`` (32 random bytes by default)."""
    ek = parse_tpm_public(endorsement_key, "endorsement key")
    srk = parse_tpm_public(storage_root_key, "storage root key")
    if hmac_key is None:
        hmac_key = secrets.token_bytes(HMAC_KEY_LENGTH)
    if not 0 < len(hmac_key) <= _MAX_HMAC_KEY_LENGTH:
        raise ValueError(f"the HMAC key must be 1 to {_MAX_HMAC_KEY_LENGTH} bytes")

    credential = secrets.token_bytes(CREDENTIAL_LENGTH)
    credential_blob, encrypted_secret = make_credential(ek, credential, srk.get_name())

    sensitive, public = _hmac_key_object(hmac_key)
    inner = TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.AES, keyBits=TPMU_SYM_KEY_BITS(aes=128),
                                mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB))
    _, duplicate, seed = wrap(srk.publicArea, public, sensitive, credential, inner)

    blob = b"".join(bytes(part.marshal()) for part in (credential_blob, encrypted_secret, duplicate, seed, public))
    return TpmChallenge(authentication_key=blob + _ENCRYPTED_DATA_TRAILER, hmac_key=hmac_key)
