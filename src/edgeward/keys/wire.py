"""Request and response bodies of the keys API (aziot-keyd's field names), one model per route."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from .errors import InvalidParameter as _Invalid
from .model import (
    Aead,
    AeadSalted,
    EcdsaDigest,
    EcdsaMessage,
    EncryptMechanism,
    HashAlg,
    HmacSha256,
    RsaNoPadding,
    RsaPkcs1,
    RsaPss,
    SignMechanism,
)

__all__ = [
    "API_VERSIONS",
    "B64",
    "EDGEWARD_VERSION",
    "CiphertextResponse",
    "CreateKeyPairRequest",
    "CreateKeyRequest",
    "CryptRequest",
    "DeriveKeyRequest",
    "ExportDerivedKeyResponse",
    "KeyHandleRequest",
    "KeyHandleResponse",
    "MoveKeyPairRequest",
    "ParameterResponse",
    "PlaintextResponse",
    "SignRequest",
    "SignResponse",
    "encrypt_mechanism",
    "is_missing_key",
    "mechanism_body",
    "missing_key_message",
    "sign_mechanism",
]

# aziot-keyd's versions, then Edgeward's own: handle lifetimes, ECDSA over a message, RSA-PSS, AEAD-SALTED.
EDGEWARD_VERSION = "2026-11-01"
API_VERSIONS = ("2020-09-01", "2021-05-01", EDGEWARD_VERSION)

MAX_B64_CHARS = 1_000_000


def _decode_b64(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    if len(value) > MAX_B64_CHARS:
        raise ValueError("base64 value too long")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


B64 = Annotated[
    bytes,
    BeforeValidator(_decode_b64),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str),
]


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", strict=False, frozen=True)


class KeyHandleResponse(_Body):
    key_handle: str = Field(alias="keyHandle")


class KeyHandleRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)


class CreateKeyPairRequest(_Body):
    key_id: str = Field(alias="keyId")
    # The docs say preferredAlgorithms; aziot's serde types say preferred_algorithms. Accept both.
    preferred_algorithms: str | None = Field(
        default=None,
        alias="preferredAlgorithms",
        validation_alias=AliasChoices("preferredAlgorithms", "preferred_algorithms"),
    )
    handle_ttl_seconds: int | None = Field(default=None, alias="handleTtlSeconds")


class MoveKeyPairRequest(_Body):
    """``POST /keypair/{to}`` sends only ``from`` (aziot-keyd); ``POST /keypair/move`` sends both (aziot's docs)."""

    src: str = Field(alias="from")
    dst: str | None = Field(default=None, alias="to")


class ParameterResponse(_Body):
    value: str


def _check_usage(value: object) -> object:
    """aziot-key-common-http's usage list: comma-separated "derive", "encrypt", "sign"; anything else fails to
    deserialize (422), before the service sees it."""
    if isinstance(value, str):
        bad = [u for u in value.split(",") if u not in ("derive", "encrypt", "sign")]
        if bad:
            raise ValueError(f"unknown key usage {bad[0]!r}; expected derive, encrypt or sign, comma-separated")
    return value


class CreateKeyRequest(_Body):
    """Generate (``usage``/``lengthBytes``) or import (``keyBytes``) a symmetric key."""

    key_id: str = Field(alias="keyId")
    usage: Annotated[str | None, BeforeValidator(_check_usage)] = None
    length_bytes: int | None = Field(default=None, alias="lengthBytes")
    key_bytes: B64 | None = Field(default=None, alias="keyBytes")
    handle_ttl_seconds: int | None = Field(default=None, alias="handleTtlSeconds")


class DeriveKeyRequest(_Body):
    base_handle: str = Field(alias="baseKeyHandle", max_length=8192)
    derivation_data: B64 = Field(alias="derivationData")


class ExportDerivedKeyResponse(_Body):
    key: B64


class SignRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)
    algorithm: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class SignResponse(_Body):
    signature: B64


class CryptRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)
    algorithm: str
    parameters: dict[str, Any] | None = None
    plaintext: B64 | None = None
    ciphertext: B64 | None = None


class CiphertextResponse(_Body):
    ciphertext: B64


class PlaintextResponse(_Body):
    plaintext: B64


# wire -> domain -------------------------------------------------------------------------------------------
def _param_b64(params: dict[str, Any] | None, name: str, algorithm: str) -> bytes:
    if not params or name not in params:
        raise _Invalid(f"{algorithm} needs parameters.{name}")
    try:
        return _decode_b64(params[name])
    except ValueError as e:
        raise _Invalid(f"parameters.{name}: {e}") from None


def _hash_param(params: dict[str, Any], default: HashAlg = HashAlg.SHA256) -> HashAlg:
    value = params.get("hashAlgorithm", default.value)
    try:
        return HashAlg(str(value).lower().replace("-", ""))
    except ValueError:
        raise _Invalid("parameters.hashAlgorithm must be sha256, sha384 or sha512") from None


def sign_mechanism(req: SignRequest, api_version: str) -> SignMechanism:
    """The aziot algorithms everywhere; message-signing and RSA-PSS only under Edgeward's api-version."""
    ours = api_version >= EDGEWARD_VERSION
    params = req.parameters
    if req.algorithm == "HMAC-SHA256":
        return HmacSha256(_param_b64(params, "message", req.algorithm))
    if req.algorithm == "ECDSA":
        if ours and "message" in params:
            return EcdsaMessage(_param_b64(params, "message", req.algorithm), _hash_param(params))
        return EcdsaDigest(_param_b64(params, "digest", req.algorithm))
    if req.algorithm == "RSA-PSS" and ours:
        if "digest" in params:
            return RsaPss(_param_b64(params, "digest", req.algorithm), True, _hash_param(params))
        return RsaPss(_param_b64(params, "message", req.algorithm), False, _hash_param(params))
    known = "ECDSA, HMAC-SHA256" + (", RSA-PSS" if ours else "")
    raise _Invalid(f"unsupported sign algorithm {req.algorithm!r}; expected one of {known}")


def encrypt_mechanism(req: CryptRequest, api_version: str) -> EncryptMechanism:
    """aziot's algorithms everywhere; AEAD-SALTED (nonces chosen by the service) only under Edgeward's api-version."""
    ours = api_version >= EDGEWARD_VERSION
    if req.algorithm == "AEAD":
        return Aead(_param_b64(req.parameters, "iv", "AEAD"), _param_b64(req.parameters, "aad", "AEAD"))
    if req.algorithm == "AEAD-SALTED" and ours:
        return AeadSalted(_param_b64(req.parameters, "iv", req.algorithm),
                          _param_b64(req.parameters, "aad", req.algorithm))
    if req.algorithm == "RSA-PKCS1":
        return RsaPkcs1()
    if req.algorithm == "RSA-NO-PADDING":
        return RsaNoPadding()
    known = "AEAD, " + ("AEAD-SALTED, " if ours else "") + "RSA-PKCS1 or RSA-NO-PADDING"
    raise _Invalid(f"unsupported algorithm {req.algorithm!r}; expected {known}")


def _b64s(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mechanism_body(mechanism: SignMechanism | EncryptMechanism) -> tuple[str, dict[str, str] | None]:
    """domain -> wire, for the client: (algorithm, parameters)."""
    if isinstance(mechanism, HmacSha256):
        return "HMAC-SHA256", {"message": _b64s(mechanism.message)}
    if isinstance(mechanism, EcdsaDigest):
        return "ECDSA", {"digest": _b64s(mechanism.digest)}
    if isinstance(mechanism, EcdsaMessage):
        return "ECDSA", {"message": _b64s(mechanism.message), "hashAlgorithm": mechanism.hash.value}
    if isinstance(mechanism, RsaPss):
        field = "digest" if mechanism.prehashed else "message"
        return "RSA-PSS", {field: _b64s(mechanism.data), "hashAlgorithm": mechanism.hash.value}
    if isinstance(mechanism, Aead | AeadSalted):
        algorithm = "AEAD" if isinstance(mechanism, Aead) else "AEAD-SALTED"
        return algorithm, {"iv": _b64s(mechanism.iv), "aad": _b64s(mechanism.aad)}
    if isinstance(mechanism, RsaPkcs1):
        return "RSA-PKCS1", None
    return "RSA-NO-PADDING", None


# aziot-keys reports a key it cannot find as err_invalid_parameter("id", "not found"): keyd answers 400 with this.
_MISSING_PREFIX = 'parameter "id" has an invalid value\ncaused by: '


def missing_key_message(detail: str) -> str:
    return _MISSING_PREFIX + detail


def is_missing_key(status: int, message: str) -> bool:
    """Whether an answer is keyd's "no such key" (aziot's wire gives it no status of its own)."""
    return status == 400 and message.startswith(_MISSING_PREFIX) and message.endswith("not found")
