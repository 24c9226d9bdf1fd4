"""Request and response bodies of the TPM API, as aziot-tpmd spells them (aziot-tpm-common-http): snake_case field
names, bytes as standard base64 strings, one model per route."""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from ..keys.wirefields import decode_b64

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

# Bytes on the wire: standard base64, checked and bounded as the keys API checks them.
B64 = Annotated[
    bytes,
    BeforeValidator(decode_b64),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str),
]


class QuoteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    nonce: B64
    pcr: int = 23


class QuoteResponse(BaseModel):
    model_config = ConfigDict(frozen=True)
    pcr: int
    pcr_value: str
    nonce: str
    attest: str
    signature: str
    ak_public_pem: str


class _Body(BaseModel):
    # Unknown fields are ignored, as serde does by default.
    model_config = ConfigDict(extra="ignore", frozen=True)


class GetTpmKeysResponse(_Body):
    """``GET /get_tpm_keys``: marshalled TPM2B_PUBLIC of the EK and of the SRK."""

    endorsement_key: B64
    storage_root_key: B64


class ImportAuthKeyRequest(_Body):
    """``POST /import_auth_key``: the ``authenticationKey`` blob from DPS, decoded from DPS's base64 and re-encoded."""

    key: B64


class ImportAuthKeyResponse(_Body):
    """An empty object (``{}``), with status 200."""


class SignWithAuthKeyRequest(_Body):
    data: B64


class SignWithAuthKeyResponse(_Body):
    """HMAC-SHA256 of ``data`` with the imported authentication key."""

    digest: B64


class AuditCounterResponse(BaseModel):
    """Edgeward: the audit log's monotonic counter; ``null`` until it was first incremented."""

    model_config = ConfigDict(frozen=True)
    value: int | None = None  # absent from the body when null (replies leave out null fields)
