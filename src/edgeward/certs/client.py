"""The certificates API over its Unix socket; implements :class:`CertsApi`.

It sends what aziot-cert-client-async sends (the CSR as PEM text) and gives callers the same meanings as the
in-process service: a missing cert, a 400 on aziot's wire, is raised as :class:`CertNotFound`."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..http import UnixClient, quote_segment
from ..http.errors import HttpError
from . import wire
from .errors import CertNotFound

__all__ = ["CertsClient"]


def _csr_text(csr: bytes) -> str:
    """PEM text for the wire; a DER CSR is re-encoded (its bytes, signature included, are unchanged). Anything
    else goes as base64, for the service to judge: its refusal is the one callers see."""
    if csr.lstrip().startswith(b"-----BEGIN") and csr.isascii():
        return csr.decode("ascii")
    try:
        return x509.load_der_x509_csr(csr).public_bytes(serialization.Encoding.PEM).decode()
    except ValueError:
        return base64.b64encode(csr).decode()


class CertsClient:
    def __init__(self, socket_path: str | Path) -> None:
        self.http = UnixClient(socket_path, wire.API_VERSIONS[-1])

    async def close(self) -> None:
        await self.http.close()

    async def create_cert(self, cert_id: str, csr: bytes, issuer: tuple[str, str] | None = None) -> str:
        body: dict[str, object] = {"certId": cert_id, "csr": _csr_text(csr)}
        if issuer is not None:
            body["issuer"] = {"certId": issuer[0], "privateKeyHandle": issuer[1]}
        return (await self.http.call("POST", "/certificates", wire.PemResponse.parse, body)).pem

    async def import_cert(self, cert_id: str, pem: str) -> str:
        return (await self.http.call("PUT", f"/certificates/{quote_segment(cert_id)}", wire.PemResponse.parse,
                                     {"pem": pem})).pem

    async def get_cert(self, cert_id: str) -> str:
        try:
            return (await self.http.call("GET", f"/certificates/{quote_segment(cert_id)}",
                                          wire.PemResponse.parse)).pem
        except HttpError as e:
            if wire.is_missing_cert(e.status, e.message):
                raise CertNotFound(e.message) from None
            raise

    async def delete_cert(self, cert_id: str) -> None:
        await self.http.request("DELETE", f"/certificates/{quote_segment(cert_id)}")
