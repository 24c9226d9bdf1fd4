"""The certificates API over its Unix socket; implements :class:`CertsApi`."""

from __future__ import annotations

import base64
from pathlib import Path

from ..http import UnixClient, quote_segment
from . import wire

__all__ = ["CertsClient"]


class CertsClient:
    def __init__(self, socket_path: str | Path) -> None:
        self.http = UnixClient(socket_path, wire.API_VERSIONS[-1])

    async def close(self) -> None:
        await self.http.close()

    async def create_cert(self, cert_id: str, csr: bytes, issuer: tuple[str, str] | None = None) -> str:
        body: dict[str, object] = {"certId": cert_id, "csr": base64.b64encode(csr).decode()}
        if issuer is not None:
            body["issuer"] = {"certId": issuer[0], "privateKeyHandle": issuer[1]}
        return (await self.http.call("POST", "/certificates", wire.PemResponse, body)).pem

    async def import_cert(self, cert_id: str, pem: str) -> str:
        return (await self.http.call("PUT", f"/certificates/{quote_segment(cert_id)}", wire.PemResponse,
                                     {"pem": pem})).pem

    async def get_cert(self, cert_id: str) -> str:
        return (await self.http.call("GET", f"/certificates/{quote_segment(cert_id)}", wire.PemResponse)).pem

    async def delete_cert(self, cert_id: str) -> None:
        await self.http.request("DELETE", f"/certificates/{quote_segment(cert_id)}")
