"""Request and response bodies of the TPM API, as aziot-tpmd spells them (aziot-tpm-common-http): snake_case field
names, bytes as standard base64 strings, one type per route.

Bodies are checked by hand (:mod:`edgeward.http.wirefields`) with the outcomes and 422 messages of the pydantic
models they replaced (``tests/unit/test_tpm_wire_fields.py`` compares them); ``to_json`` writes the bytes those
models wrote (compact; a null field left out).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Self

from ..http.wirefields import BodyCheck, dump_json, response_object

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "EDGEWARD_VERSION",
    "AuditCounterResponse",
    "GetTpmKeysResponse",
    "ImportAuthKeyRequest",
    "ImportAuthKeyResponse",
    "QuoteRequest",
    "QuoteResponse",
    "SignWithAuthKeyRequest",
    "SignWithAuthKeyResponse",
]

API_VERSION = "2020-09-01"
EDGEWARD_VERSION = "2026-11-01"  # Edgeward's additions (the quote and audit counter routes)
API_VERSIONS = (API_VERSION, EDGEWARD_VERSION)

DEFAULT_PCR = 23


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _response(raw: bytes) -> BodyCheck:
    return BodyCheck(response_object(raw), "response")


# Unknown fields are ignored, as serde does by default.


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    nonce: bytes
    pcr: int = DEFAULT_PCR

    def to_json(self) -> bytes:
        return dump_json({"nonce": _b64(self.nonce), "pcr": self.pcr})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        nonce = c.b64("nonce")
        pcr = c.integer("pcr", default=DEFAULT_PCR)
        c.done()
        return cls(nonce, pcr)


@dataclass(frozen=True, slots=True)
class QuoteResponse:
    pcr: int
    pcr_value: str
    nonce: str
    attest: str
    signature: str
    ak_public_pem: str

    def to_json(self) -> bytes:
        return dump_json({"pcr": self.pcr, "pcr_value": self.pcr_value, "nonce": self.nonce, "attest": self.attest,
                          "signature": self.signature, "ak_public_pem": self.ak_public_pem})

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = _response(raw)
        quote = cls(c.integer("pcr"), c.text("pcr_value"), c.text("nonce"), c.text("attest"), c.text("signature"),
                    c.text("ak_public_pem"))
        c.done()
        return quote


@dataclass(frozen=True, slots=True)
class GetTpmKeysResponse:
    """``GET /get_tpm_keys``: marshalled TPM2B_PUBLIC of the EK and of the SRK."""

    endorsement_key: bytes
    storage_root_key: bytes

    def to_json(self) -> bytes:
        return dump_json({"endorsement_key": _b64(self.endorsement_key),
                          "storage_root_key": _b64(self.storage_root_key)})

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = _response(raw)
        keys = cls(c.b64("endorsement_key"), c.b64("storage_root_key"))
        c.done()
        return keys


@dataclass(frozen=True, slots=True)
class ImportAuthKeyRequest:
    """``POST /import_auth_key``: the ``authenticationKey`` blob from DPS, decoded from DPS's base64 and re-encoded."""

    key: bytes = field(repr=False)

    def to_json(self) -> bytes:
        return dump_json({"key": _b64(self.key)})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        key = c.b64("key")
        c.done()
        return cls(key)


@dataclass(frozen=True, slots=True)
class ImportAuthKeyResponse:
    """An empty object (``{}``), with status 200."""

    def to_json(self) -> bytes:
        return b"{}"

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        response_object(raw)
        return cls()


@dataclass(frozen=True, slots=True)
class SignWithAuthKeyRequest:
    data: bytes

    def to_json(self) -> bytes:
        return dump_json({"data": _b64(self.data)})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        signed = c.b64("data")
        c.done()
        return cls(signed)


@dataclass(frozen=True, slots=True)
class SignWithAuthKeyResponse:
    """HMAC-SHA256 of ``data`` with the imported authentication key."""

    digest: bytes

    def to_json(self) -> bytes:
        return dump_json({"digest": _b64(self.digest)})

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = _response(raw)
        digest = c.b64("digest")
        c.done()
        return cls(digest)


@dataclass(frozen=True, slots=True)
class AuditCounterResponse:
    """Edgeward: the audit log's monotonic counter; ``null`` until it was first incremented."""

    value: int | None = None  # absent from the body when null

    def to_json(self) -> bytes:
        return b"{}" if self.value is None else dump_json({"value": self.value})

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = _response(raw)
        value = c.optional_int("value")
        c.done()
        return cls(value)
