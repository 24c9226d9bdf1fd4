"""IoT Hub's registry REST API for a device's own modules (``/devices/{id}/modules/{mid}``), authenticated either with
a SAS token signed by the device key (in the keys service, or the TPM's authentication key) or, for an X.509 device,
by mutual TLS with the device identity certificate (its key in the keys service). Implements :class:`HubModules`.

Nested edge (``parent_hostname``): the requests go to the parent device (``gateway``), whose edge hub relays them to
IoT Hub, but everything that names the hub stays the hub's: the SAS token's audience (``sr``) is still
``<hub>/devices/<id>``, and the paths are the registry's own, as aziot-identityd's hub client builds them."""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any
from urllib.parse import quote

from ..digits import is_number
from ..http.errors import HttpError
from .cloud import CloudTransport
from .model import ModuleInfo
from .sas import Signer, device_audience, make_token

__all__ = ["HUB_API_VERSION", "HubClient", "HubError"]

HUB_API_VERSION = "2017-11-08-preview"  # what aziot-identityd uses for module identities
MAX_RESPONSE = 1024 * 1024


class HubError(HttpError):
    """A hub failure, carrying the hub's status so callers can tell outages (429/5xx) from refusals."""

    def __init__(self, message: str, status: int = 502, retry_after: float | None = None,
                 cloud_status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        # what the cloud answered (0: an answer that made no sense); None when it could not be reached
        self.cloud_status = cloud_status

    @property
    def transient(self) -> bool:
        """Worth retrying: throttled, a server-side failure, or no answer at all."""
        return self.cloud_status is None or self.cloud_status == 429 or self.cloud_status >= 500


def _segment(value: str) -> str:
    return quote(value, safe="")


def _host(name: str) -> str:
    """A host for a URL: an IPv6 address (a parent_hostname may be one) in brackets."""
    try:
        return f"[{name}]" if ipaddress.ip_address(name).version == 6 else name
    except ValueError:
        return name


def _module(doc: Any) -> ModuleInfo:
    if not isinstance(doc, dict) or "moduleId" not in doc:
        raise HubError("the hub answered with something that is not a module", cloud_status=0)
    return ModuleInfo(str(doc["moduleId"]), str(doc.get("generationId") or ""), doc.get("managedBy"))


class HubClient:
    def __init__(self, hub: str, device_id: str, transport: CloudTransport, signer: Signer | None,
                 gateway: str | None = None) -> None:
        """``signer`` signs SAS tokens; ``None`` for an X.509 device, which ``transport`` authenticates by TLS.
        ``gateway``: the host the requests go to when it is not the hub itself (the parent device)."""
        self.hub, self.device_id = hub, device_id
        self._gateway = gateway
        self._transport = transport
        self._signer = signer

    @property
    def gateway(self) -> str:
        """Where the requests go: the parent device, or the hub itself."""
        return self._gateway or self.hub

    def __repr__(self) -> str:
        via = f" via {self.gateway}" if self.gateway != self.hub else ""
        return f"HubClient({self.hub}, {self.device_id}{via})"

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       if_match: bool = False) -> tuple[int, Any]:
        url = f"https://{_host(self.gateway)}/devices/{_segment(self.device_id)}{path}?api-version={HUB_API_VERSION}"
        headers = {"Accept": "application/json"}
        if self._signer is not None:
            headers["Authorization"] = await make_token(device_audience(self.hub, self.device_id), self._signer, 300)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if if_match:
            headers["If-Match"] = "*"
        status, resp_headers, raw = await self._transport.send(
            method, url, headers, json.dumps(body).encode() if body is not None else None)
        retry_after = resp_headers.get("Retry-After")
        if len(raw) > MAX_RESPONSE:
            raise HubError(f"IoT Hub {self.hub} answered with an oversized body", cloud_status=0)
        doc: Any = None
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        if status >= 400:
            message = ""
            if isinstance(doc, dict):
                message = str(doc.get("Message") or doc.get("message") or "")
            # The caller of the identity API is not the one the hub refused: 401/403 become 502 (bad gateway).
            mapped = status if status in (404, 409, 412, 429) else (503 if status >= 500 else 502)
            via = f" (through {self.gateway})" if self.gateway != self.hub else ""
            raise HubError(f"IoT Hub {self.hub}{via} answered {status} to {method} {path}: {message[:300]}", mapped,
                           float(retry_after) if retry_after and is_number(retry_after) else None, status)
        return status, doc

    def _body(self, module_id: str, managed_by: str | None, keys: tuple[bytes, bytes] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"moduleId": module_id, "deviceId": self.device_id}
        if managed_by is not None:
            body["managedBy"] = managed_by
        if keys is not None:
            body["authentication"] = {"type": "sas", "symmetricKey": {
                "primaryKey": base64.b64encode(keys[0]).decode(), "secondaryKey": base64.b64encode(keys[1]).decode()}}
        return body

    async def create_module(self, module_id: str, managed_by: str | None = None) -> ModuleInfo:
        _, doc = await self._request("PUT", f"/modules/{_segment(module_id)}", self._body(module_id, managed_by, None))
        return _module(doc)

    async def get_module(self, module_id: str) -> ModuleInfo | None:
        try:
            _, doc = await self._request("GET", f"/modules/{_segment(module_id)}")
        except HubError as e:
            if e.status == 404:
                return None
            raise
        return _module(doc)

    async def list_modules(self) -> list[ModuleInfo]:
        _, doc = await self._request("GET", "/modules")
        if not isinstance(doc, list):
            raise HubError("the hub answered the module list with something that is not a list")
        return [_module(d) for d in doc]

    async def update_module(self, module_id: str, primary_key: bytes, secondary_key: bytes) -> ModuleInfo:
        current = await self.get_module(module_id)
        _, doc = await self._request("PUT", f"/modules/{_segment(module_id)}",
                                     self._body(module_id, current.managed_by if current else None,
                                                (primary_key, secondary_key)), if_match=True)
        return _module(doc)

    async def delete_module(self, module_id: str) -> None:
        await self._request("DELETE", f"/modules/{_segment(module_id)}", if_match=True)
