"""The Device Provisioning Service's device REST API (api-version 2021-06-01): ``PUT {scope}/registrations/{id}/
register``, then poll ``GET {scope}/registrations/{id}/operations/{operationId}`` until the device is assigned.

Symmetric-key attestation signs a SAS token for ``{scope}/registrations/{id}`` (``skn=registration``) with the
device key, which stays in the keys service (for a group enrollment the device key is derived there from the group
key and the registration id).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .hub import HubError
from .sas import Signer, make_token

__all__ = ["DPS_API_VERSION", "DpsAssignment", "DpsClient"]

DPS_API_VERSION = "2021-06-01"
MAX_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class DpsAssignment:
    registration_id: str
    assigned_hub: str
    device_id: str
    substatus: str | None = None
    payload: Any = None


class DpsClient:
    def __init__(self, endpoint: str, scope_id: str, trusted: Sequence[x509.Certificate] | None,
                 timeout: float = 30.0, max_wait: float = 120.0) -> None:
        self.endpoint, self.scope_id = endpoint.rstrip("/"), scope_id
        self._ssl = ssl.create_default_context()
        if trusted is not None:
            self._ssl = ssl.create_default_context(cadata="".join(
                c.public_bytes(serialization.Encoding.PEM).decode() for c in trusted))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_wait = max_wait

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str, token: str,
                    body: dict[str, Any] | None = None) -> tuple[int, Any, float | None]:
        url = f"{self.endpoint}/{quote(self.scope_id, safe='')}{path}?api-version={DPS_API_VERSION}"
        headers = {"Authorization": token, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        try:
            async with session.request(method, url, data=json.dumps(body) if body is not None else None,
                                       headers=headers, ssl=self._ssl, allow_redirects=False) as resp:
                raw = await resp.content.read(MAX_RESPONSE + 1)
                retry = resp.headers.get("Retry-After")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise HubError(f"DPS at {self.endpoint} is unreachable: {e or type(e).__name__}", status=503) from e
        doc: Any = None
        if raw and len(raw) <= MAX_RESPONSE:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        if status >= 400:
            message = str(doc.get("message") or doc.get("Message") or "") if isinstance(doc, dict) else ""
            mapped = status if status in (404, 409, 429) else (503 if status >= 500 else 502)
            raise HubError(f"DPS answered {status} to {method} {path}: {message[:300]}", mapped, retry_after, status)
        return status, doc, retry_after

    async def register(self, registration_id: str, sign: Signer, payload: Any = None) -> DpsAssignment:
        """Register and wait (bounded) for the assignment."""
        audience = f"{self.scope_id}/registrations/{registration_id}"
        token = await make_token(audience, sign, 3600) + "&skn=registration"
        path = f"/registrations/{quote(registration_id, safe='')}"
        body: dict[str, Any] = {"registrationId": registration_id}
        if payload is not None:
            body["payload"] = payload
        deadline = time.monotonic() + self._max_wait
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            _, doc, retry_after = await self._call(session, "PUT", f"{path}/register", token, body)
            while True:
                if not isinstance(doc, dict):
                    raise HubError("DPS answered with something that is not a registration operation", cloud_status=0)
                state = doc.get("registrationState") if "registrationState" in doc else None
                status = str((state or doc).get("status", doc.get("status", "")))
                if status == "assigned" and isinstance(state, dict):
                    return DpsAssignment(registration_id, str(state["assignedHub"]), str(state["deviceId"]),
                                         state.get("substatus"), state.get("payload"))
                if status in ("failed", "disabled"):
                    detail = (state or {}).get("errorMessage") or status
                    raise HubError(f"DPS refused registration {registration_id!r}: {detail}", status=502,
                                   cloud_status=0)
                operation = doc.get("operationId")
                if not operation:
                    raise HubError(f"DPS answered status {status!r} without an operation to poll", cloud_status=0)
                wait = min(max(2.0 if retry_after is None else retry_after, 0.1), 30.0)
                if time.monotonic() + wait > deadline:
                    raise HubError(f"DPS did not assign {registration_id!r} within {self._max_wait:.0f}s", 504)
                await asyncio.sleep(wait)
                _, doc, retry_after = await self._call(session, "GET", f"{path}/operations/{operation}", token)
