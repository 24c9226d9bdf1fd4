"""Request and response bodies of the certificates API (aziot-certd's field names).

Bodies are checked by hand (:mod:`edgeward.http.wirefields`) with the outcomes and 422 messages the pydantic
models they replaced gave (``tests/unit/test_certs_wire_fields.py`` compares them), so the daemons need no pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Self

from ..http.wirefields import BodyCheck, response_object

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

MAX_HANDLE_CHARS = 8192
MAX_PEM_CHARS = 256 * 1024

# aziot-certd answers a GET of a missing cert with InvalidParameter("id", "not found"): a 400 with this message.
_MISSING_PREFIX = 'parameter "id" has an invalid value\ncaused by: '


def missing_cert_message(detail: str) -> str:
    return _MISSING_PREFIX + detail


def is_missing_cert(status: int, message: str) -> bool:
    """Whether an answer is certd's "no such cert" (aziot's wire gives it no status of its own)."""
    return status == 400 and message.startswith(_MISSING_PREFIX) and message.endswith("not found")


# Fields are looked up under their wire name first, then their Python name (both were always accepted); unknown
# fields are ignored, as serde does by default.


@dataclass(frozen=True, slots=True)
class IssuerBody:
    cert_id: str
    private_key_handle: str

    @classmethod
    def check(cls, c: BodyCheck) -> Self:
        return cls(c.text("certId", "cert_id"),
                   c.text("privateKeyHandle", "private_key_handle", max_length=MAX_HANDLE_CHARS))


@dataclass(frozen=True, slots=True)
class CreateCertRequest:
    """``csr`` is PEM text, as aziot-cert-common-http's ``Pem`` carries it; base64 of DER (or of PEM) is also
    taken, for clients that followed the prose of aziot's API page."""

    cert_id: str
    csr: str
    issuer: IssuerBody | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        cert_id = c.text("certId", "cert_id")
        csr = c.text("csr")
        issuer_body = c.nested("issuer", model="IssuerBody")
        issuer = IssuerBody.check(issuer_body) if issuer_body is not None else None
        c.done()
        return cls(cert_id, csr, issuer)


@dataclass(frozen=True, slots=True)
class ImportCertRequest:
    pem: str

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        pem = c.text("pem", max_length=MAX_PEM_CHARS)
        c.done()
        return cls(pem)


@dataclass(frozen=True, slots=True)
class PemResponse:
    pem: str

    def to_json(self) -> bytes:
        """What ``dump_json({"pem": pem})`` writes, without building a JSON encoder for every answer (json.dumps
        does, given options): the string escaped as that encoder escapes it, in the one-field object around it."""
        return b'{"pem":' + encode_basestring(self.pem).encode() + b"}"

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        c = BodyCheck(response_object(raw), "response")
        pem = c.text("pem")
        c.done()
        return cls(pem)
