"""The TPM API over its Unix socket; implements :class:`TpmApi`, so callers can swap it for the in-process service.

Errors arrive as :class:`~edgeward.http.HttpError` carrying the service's status and message.
"""

from __future__ import annotations

from pathlib import Path

from ..attest.tpm_quote import Quote
from ..http import UnixClient
from . import wire
from .api import TpmKeys

__all__ = ["TpmClient"]


class TpmClient:
    def __init__(self, socket_path: str | Path, api_version: str = wire.API_VERSION) -> None:
        self.http = UnixClient(socket_path, api_version)

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> TpmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get_tpm_keys(self) -> TpmKeys:
        resp = await self.http.call("GET", "/get_tpm_keys", wire.GetTpmKeysResponse.parse)
        return TpmKeys(endorsement_key=resp.endorsement_key, storage_root_key=resp.storage_root_key)

    async def import_auth_key(self, key: bytes) -> None:
        await self.http.call("POST", "/import_auth_key", wire.ImportAuthKeyResponse.parse,
                            wire.ImportAuthKeyRequest(key))

    async def sign_with_auth_key(self, data: bytes) -> bytes:
        resp = await self.http.call("POST", "/sign_with_auth_key", wire.SignWithAuthKeyResponse.parse,
                                    wire.SignWithAuthKeyRequest(data))
        return resp.digest

    async def read_audit_counter(self) -> int | None:
        resp = await self.http.call("GET", "/edgeward/audit-counter", wire.AuditCounterResponse.parse,
                                    api_version=wire.EDGEWARD_VERSION)
        return resp.value

    async def increment_audit_counter(self) -> int:
        resp = await self.http.call("POST", "/edgeward/audit-counter/increment", wire.AuditCounterResponse.parse,
                                    api_version=wire.EDGEWARD_VERSION)
        if resp.value is None:
            raise ValueError("the TPM service answered an increment without the counter's value")
        return resp.value

    async def quote(self, nonce: bytes, pcr: int = 23) -> Quote:
        resp = await self.http.call("POST", "/edgeward/quote", wire.QuoteResponse.parse,
                                    wire.QuoteRequest(nonce, pcr), api_version=wire.EDGEWARD_VERSION)
        return Quote(resp.pcr, resp.pcr_value, resp.nonce, resp.attest, resp.signature, resp.ak_public_pem)
