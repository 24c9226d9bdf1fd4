"""Request and response bodies of the keys API (aziot-keyd's field names), one model per route."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Self

from ..http.wirefields import MAX_B64_CHARS, BodyCheck, InvalidBody, decode_b64
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
    "EDGEWARD_VERSION",
    "MAX_B64_CHARS",
    "CiphertextResponse",
    "CreateKeyPairRequest",
    "CreateKeyRequest",
    "CryptRequest",
    "DeriveKeyRequest",
    "ExportDerivedKeyResponse",
    "InvalidBody",
    "KeyHandleRequest",
    "KeyHandleResponse",
    "MoveKeyPairRequest",
    "ParameterResponse",
    "PlaintextResponse",
    "SignRequest",
    "SignResponse",
    "decode_b64",
    "encrypt_mechanism",
    "is_missing_key",
    "mechanism_body",
    "missing_key_message",
    "sign_mechanism",
]

# aziot-keyd's versions, then Edgeward's own: handle lifetimes, ECDSA over a message, RSA-PSS, AEAD-SALTED.
EDGEWARD_VERSION = "2026-11-01"
API_VERSIONS = ("2020-09-01", "2021-05-01", EDGEWARD_VERSION)

MAX_HANDLE_CHARS = 8192

# Requests: each ``parse`` takes the decoded JSON object and raises InvalidBody (a 422) naming every field at
# fault. Fields are looked up under their wire name first, then their Python name (both were always accepted);
# unknown fields are ignored, as serde does by default.


@dataclass(frozen=True, slots=True)
class KeyHandleRequest:
    key_handle: str

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        handle = c.text("keyHandle", "key_handle", max_length=MAX_HANDLE_CHARS)
        c.done()
        return cls(handle)


@dataclass(frozen=True, slots=True)
class CreateKeyPairRequest:
    key_id: str
    # The docs say preferredAlgorithms; aziot's serde types say preferred_algorithms. Accept both.
    preferred_algorithms: str | None = None
    handle_ttl_seconds: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        key_id = c.text("keyId", "key_id")
        algorithms = c.optional_text("preferredAlgorithms", "preferred_algorithms")
        ttl = c.optional_int("handleTtlSeconds", "handle_ttl_seconds")
        c.done()
        return cls(key_id, algorithms, ttl)


@dataclass(frozen=True, slots=True)
class MoveKeyPairRequest:
    """``POST /keypair/{to}`` sends only ``from`` (aziot-keyd); ``POST /keypair/move`` sends both (aziot's docs)."""

    src: str
    dst: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        src = c.text("from", "src")
        dst = c.optional_text("to", "dst")
        c.done()
        return cls(src, dst)


_USAGES = ("derive", "encrypt", "sign")


def _unknown_usage(usage: str) -> str | None:
    """aziot-key-common-http's usage list: comma-separated "derive", "encrypt", "sign"; anything else fails to
    deserialize (422), before the service sees it."""
    bad = [u for u in usage.split(",") if u not in _USAGES]
    return f"unknown key usage {bad[0]!r}; expected derive, encrypt or sign, comma-separated" if bad else None


@dataclass(frozen=True, slots=True)
class CreateKeyRequest:
    """Generate (``usage``/``lengthBytes``) or import (``keyBytes``) a symmetric key."""

    key_id: str
    usage: str | None = None
    length_bytes: int | None = None
    key_bytes: bytes | None = field(default=None, repr=False)
    handle_ttl_seconds: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        key_id = c.text("keyId", "key_id")
        usage = c.optional_text("usage", check=_unknown_usage)
        length = c.optional_int("lengthBytes", "length_bytes")
        key_bytes = c.optional_b64("keyBytes", "key_bytes")
        ttl = c.optional_int("handleTtlSeconds", "handle_ttl_seconds")
        c.done()
        return cls(key_id, usage, length, key_bytes, ttl)


@dataclass(frozen=True, slots=True)
class DeriveKeyRequest:
    base_handle: str
    derivation_data: bytes

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        base = c.text("baseKeyHandle", "base_handle", max_length=MAX_HANDLE_CHARS)
        derivation = c.b64("derivationData", "derivation_data")
        c.done()
        return cls(base, derivation)


@dataclass(frozen=True, slots=True)
class SignRequest:
    key_handle: str
    algorithm: str
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        # The shape every client sends, accepted in a few look-ups (signing is the hot path); anything else is
        # checked field by field below, with the same outcome for the shape above.
        handle, algorithm, parameters = data.get("keyHandle"), data.get("algorithm"), data.get("parameters")
        if (type(handle) is str and type(algorithm) is str and type(parameters) is dict
                and len(handle) <= MAX_HANDLE_CHARS and handle.isascii()):
            return cls(handle, algorithm, parameters)
        c = BodyCheck(data)
        handle = c.text("keyHandle", "key_handle", max_length=MAX_HANDLE_CHARS)
        algorithm = c.text("algorithm")
        parameters = c.mapping("parameters", default={})
        c.done()
        return cls(handle, algorithm, parameters or {})


@dataclass(frozen=True, slots=True)
class CryptRequest:
    key_handle: str
    algorithm: str
    parameters: dict[str, Any] | None = field(default=None, repr=False)
    plaintext: bytes | None = field(default=None, repr=False)
    ciphertext: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        handle = c.text("keyHandle", "key_handle", max_length=MAX_HANDLE_CHARS)
        algorithm = c.text("algorithm")
        parameters = c.mapping("parameters")
        plaintext = c.optional_b64("plaintext")
        ciphertext = c.optional_b64("ciphertext")
        c.done()
        return cls(handle, algorithm, parameters, plaintext, ciphertext)


# Responses: one field each. ``to_json`` gives the body as the service always sent it (compact, no spaces);
# ``parse`` is the client's side, raising InvalidBody (a ValueError) for a body that does not fit.


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody("invalid response body: not JSON") from None
    if not isinstance(data, dict):
        raise InvalidBody("invalid response body: not a JSON object")
    return data


def _text_body(name: str, value: str) -> bytes:
    return b'{"%s":%s}' % (name.encode(), json.dumps(value, ensure_ascii=False).encode())


def _b64_body(name: str, value: bytes) -> bytes:
    return b'{"%s":"%s"}' % (name.encode(), base64.b64encode(value))


@dataclass(frozen=True, slots=True)
class KeyHandleResponse:
    key_handle: str

    def to_json(self) -> bytes:
        return _text_body("keyHandle", self.key_handle)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        handle = c.text("keyHandle", "key_handle")
        c.done()
        return cls(handle)


@dataclass(frozen=True, slots=True)
class ParameterResponse:
    value: str

    def to_json(self) -> bytes:
        return _text_body("value", self.value)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        value = c.text("value")
        c.done()
        return cls(value)


@dataclass(frozen=True, slots=True)
class ExportDerivedKeyResponse:
    key: bytes = field(repr=False)

    def to_json(self) -> bytes:
        return _b64_body("key", self.key)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        key = c.b64("key")
        c.done()
        return cls(key)


@dataclass(frozen=True, slots=True)
class SignResponse:
    signature: bytes

    def to_json(self) -> bytes:
        return _b64_body("signature", self.signature)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        signature = c.b64("signature")
        c.done()
        return cls(signature)


@dataclass(frozen=True, slots=True)
class CiphertextResponse:
    ciphertext: bytes

    def to_json(self) -> bytes:
        return _b64_body("ciphertext", self.ciphertext)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        ciphertext = c.b64("ciphertext")
        c.done()
        return cls(ciphertext)


@dataclass(frozen=True, slots=True)
class PlaintextResponse:
    plaintext: bytes = field(repr=False)

    def to_json(self) -> bytes:
        return _b64_body("plaintext", self.plaintext)

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(_object(raw), "response")
        plaintext = c.b64("plaintext")
        c.done()
        return cls(plaintext)


# wire -> domain -------------------------------------------------------------------------------------------
# aziot-keyd reads "algorithm" and "parameters" of /sign, /encrypt and /decrypt into serde enums (tag "algorithm",
# content "parameters"; aziot-key-common-http sign::Parameters, encrypt::Parameters), the same under every
# api-version; an unknown algorithm or a missing or undecodable parameter fails that deserialization, which
# http-common's server answers 422. These raise InvalidBody (422) for the same cases.
def _invalid(reason: str) -> InvalidBody:
    return InvalidBody(f"invalid request body: {reason}")


def _param_b64(params: dict[str, Any] | None, name: str, algorithm: str) -> bytes:
    if not params or name not in params:
        raise _invalid(f"parameters.{name}: Field required ({algorithm})")
    try:
        return decode_b64(params[name])
    except ValueError as e:
        raise _invalid(f"parameters.{name}: {e}") from None


def _hash_param(params: dict[str, Any], default: HashAlg = HashAlg.SHA256) -> HashAlg:
    value = params.get("hashAlgorithm", default.value)
    try:
        return HashAlg(str(value).lower().replace("-", ""))
    except ValueError:
        raise _invalid("parameters.hashAlgorithm must be sha256, sha384 or sha512") from None


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
    raise _invalid(f"algorithm: unknown sign algorithm {req.algorithm!r}; expected one of {known}")


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
    raise _invalid(f"algorithm: unknown algorithm {req.algorithm!r}; expected {known}")


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
