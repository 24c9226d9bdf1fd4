"""The keys API over its Unix socket; implements :class:`KeysApi` so callers can swap it for the in-process
service. The caller's identity is whatever the kernel reports for this process."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..http import UnixClient, quote_segment
from ..http.errors import HttpError
from ..http.wirefields import JsonBody
from . import wire
from .errors import KeyNotFound
from .model import EncryptMechanism, SignMechanism

__all__ = ["KeysClient"]

T = TypeVar("T")


class _KeydHttp(UnixClient):
    """keyd's wire answers a missing key with aziot's 400; callers get :class:`KeyNotFound`, as in-process."""

    async def request(self, method: str, path: str, body: JsonBody | Mapping[str, Any] | None = None,
                      api_version: str | None = None) -> tuple[int, bytes]:
        try:
            return await super().request(method, path, body, api_version)
        except HttpError as e:
            if wire.is_missing_key(e.status, e.message):
                raise KeyNotFound(e.message) from None
            raise


class KeysClient:
    def __init__(self, socket_path: str | Path, api_version: str = wire.EDGEWARD_VERSION) -> None:
        self.http = _KeydHttp(socket_path, api_version)

    async def close(self) -> None:
        await self.http.close()

    async def _call(self, method: str, path: str, parse: Callable[[bytes], T],
                    body: Mapping[str, object] | None = None) -> T:
        """One request whose answer is a body of the keys wire (a malformed one raises ValueError)."""
        _, raw = await self.http.request(method, path, body)
        return parse(raw)

    async def _handle(self, method: str, path: str, body: dict[str, object] | None = None) -> str:
        return (await self._call(method, path, wire.KeyHandleResponse.parse, body)).key_handle

    async def create_key_pair_if_not_exists(
        self, key_id: str, preferred_algorithms: str | None = None, ttl_seconds: int | None = None
    ) -> str:
        body: dict[str, object] = {"keyId": key_id}
        if preferred_algorithms is not None:
            body["preferredAlgorithms"] = preferred_algorithms
        if ttl_seconds is not None:
            body["handleTtlSeconds"] = ttl_seconds
        return await self._handle("POST", "/keypair", body)

    async def load_key_pair(self, key_id: str, ttl_seconds: int | None = None) -> str:
        path = f"/keypair/{quote_segment(key_id)}"
        if ttl_seconds is not None:
            path += f"?handleTtlSeconds={ttl_seconds}"
        return await self._handle("GET", path)

    async def get_key_pair_public_parameter(self, handle: str, name: str) -> str:
        resp = await self._call("POST", f"/parameters/{quote_segment(name)}", wire.ParameterResponse.parse,
                                {"keyHandle": handle})
        return resp.value

    async def move_key_pair(self, src: str, dst: str) -> None:
        await self.http.request("POST", f"/keypair/{quote_segment(dst)}", {"from": src})

    async def delete_key_pair(self, handle: str) -> None:
        await self.http.request("DELETE", "/keypair", {"keyHandle": handle})

    async def create_key_if_not_exists(self, key_id: str, usage: str, ttl_seconds: int | None = None) -> str:
        body: dict[str, object] = {"keyId": key_id, "usage": usage}
        if ttl_seconds is not None:
            body["handleTtlSeconds"] = ttl_seconds
        return await self._handle("POST", "/key", body)

    async def import_key(
        self, key_id: str, key: bytes, usage: str | None = None, ttl_seconds: int | None = None
    ) -> str:
        body: dict[str, object] = {"keyId": key_id, "keyBytes": base64.b64encode(key).decode()}
        if usage is not None:
            body["usage"] = usage
        if ttl_seconds is not None:
            body["handleTtlSeconds"] = ttl_seconds
        return await self._handle("POST", "/key", body)

    async def load_key(self, key_id: str, ttl_seconds: int | None = None) -> str:
        return await self._handle("GET", f"/key/{quote_segment(key_id)}")

    async def delete_key(self, handle: str) -> None:
        await self.http.request("DELETE", "/key", {"keyHandle": handle})

    async def create_derived_key(self, base_handle: str, derivation_data: bytes) -> str:
        return await self._handle(
            "POST",
            "/derivedkey",
            {"baseKeyHandle": base_handle, "derivationData": base64.b64encode(derivation_data).decode()},
        )

    async def export_derived_key(self, handle: str) -> bytes:
        resp = await self._call("POST", "/derivedkey/export", wire.ExportDerivedKeyResponse.parse,
                                {"keyHandle": handle})
        return resp.key

    async def sign(self, handle: str, mechanism: SignMechanism) -> bytes:
        algorithm, params = wire.mechanism_body(mechanism)
        resp = await self._call("POST", "/sign", wire.SignResponse.parse,
                                {"keyHandle": handle, "algorithm": algorithm, "parameters": params})
        return resp.signature

    async def _crypt(self, path: str, handle: str, mechanism: EncryptMechanism, field: str, data: bytes) -> bytes:
        algorithm, params = wire.mechanism_body(mechanism)
        body: dict[str, object] = {"keyHandle": handle, "algorithm": algorithm,
                                   field: base64.b64encode(data).decode()}
        if params is not None:
            body["parameters"] = params
        if path == "/encrypt":
            return (await self._call("POST", path, wire.CiphertextResponse.parse, body)).ciphertext
        return (await self._call("POST", path, wire.PlaintextResponse.parse, body)).plaintext

    async def encrypt(self, handle: str, mechanism: EncryptMechanism, plaintext: bytes) -> bytes:
        return await self._crypt("/encrypt", handle, mechanism, "plaintext", plaintext)

    async def decrypt(self, handle: str, mechanism: EncryptMechanism, ciphertext: bytes) -> bytes:
        return await self._crypt("/decrypt", handle, mechanism, "ciphertext", ciphertext)
