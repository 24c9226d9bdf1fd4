"""Request and response bodies of the certificates API (aziot-certd's field names)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "API_VERSIONS",
    "CREATED",
    "CreateCertRequest",
    "ImportCertRequest",
    "IssuerBody",
    "PemResponse",
    "is_missing_cert",
    "missing_cert_message",
]

API_VERSIONS = ("2020-09-01",)
CREATED = 201  # create and import: aziot-cert-client-async accepts nothing else

# aziot-certd answers a GET of a missing cert with InvalidParameter("id", "not found"): a 400 with this message.
_MISSING_PREFIX = 'parameter "id" has an invalid value\ncaused by: '


def missing_cert_message(detail: str) -> str:
    return _MISSING_PREFIX + detail


def is_missing_cert(status: int, message: str) -> bool:
    """Whether an answer is certd's "no such cert" (aziot's wire gives it no status of its own)."""
    return status == 400 and message.startswith(_MISSING_PREFIX) and message.endswith("not found")


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class IssuerBody(_Body):
    cert_id: str = Field(alias="certId")
    private_key_handle: str = Field(alias="privateKeyHandle", max_length=8192)


class CreateCertRequest(_Body):
    """``csr`` is PEM text, as aziot-cert-common-http's ``Pem`` carries it; base64 of DER (or of PEM) is also
    taken, for clients that followed the prose of aziot's API page."""

    cert_id: str = Field(alias="certId")
    csr: str
    issuer: IssuerBody | None = None


class ImportCertRequest(_Body):
    pem: str = Field(max_length=256 * 1024)


class PemResponse(_Body):
    pem: str
