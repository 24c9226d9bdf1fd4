"""Request and response bodies of the certificates API (aziot-certd's field names)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..keys.wire import B64

__all__ = ["API_VERSIONS", "CreateCertRequest", "ImportCertRequest", "IssuerBody", "PemResponse"]

API_VERSIONS = ("2020-09-01",)


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class IssuerBody(_Body):
    cert_id: str = Field(alias="certId")
    private_key_handle: str = Field(alias="privateKeyHandle", max_length=8192)


class CreateCertRequest(_Body):
    cert_id: str = Field(alias="certId")
    csr: B64
    issuer: IssuerBody | None = None


class ImportCertRequest(_Body):
    pem: str = Field(max_length=256 * 1024)


class PemResponse(_Body):
    pem: str
