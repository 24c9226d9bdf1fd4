"""The Device Provisioning Service's device REST API (api-version 2021-06-01): ``PUT {scope}/registrations/{id}/
register``, then poll ``GET {scope}/registrations/{id}/operations/{operationId}`` until the device is assigned.

How the device proves itself, per attestation:

- symmetric key: a SAS token for ``{scope}/registrations/{id}`` (``skn=registration``) signed with the device key,
  which stays in the keys service (for a group enrollment it is derived there from the group key and the id);
- X.509: mutual TLS with the identity certificate, its key held by the keys service; no token;
- TPM: the register body carries ``tpm: {endorsementKey, storageRootKey}`` (the marshalled TPM2B_PUBLICs from the TPM
  service) and no token; DPS answers 401 with ``{"authenticationKey": <b64>}``, a key only the TPM with that EK (and
  SRK) can activate. The TPM service imports it, signs the same SAS token as for a symmetric key with it, and the
  device registers again with that token; the operation is polled with it too. When the assigned registration state
  carries another ``tpm.authenticationKey``, that one is imported as well (the key the hub will check), as aziot does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cryptography import x509

from ..digits import is_number
from ..http.errors import HttpError
from ..tpm.api import TpmApi
from .cloud import MAX_RESPONSE, CloudTransport, HttpsTransport, X509Transport
from .dps_auth import DpsAuth, SymmetricKeyAuth, TpmAuth, X509Auth
from .hub import HubError
from .sas import make_token

__all__ = ["DPS_API_VERSION", "DpsAssignment", "DpsAuth", "DpsClient", "SymmetricKeyAuth", "TpmAuth", "X509Auth"]

DPS_API_VERSION = "2021-06-01"


@dataclass(frozen=True)
class DpsAssignment:
    registration_id: str
    assigned_hub: str
    device_id: str
    substatus: str | None = None
    payload: Any = None


class DpsClient:
    def __init__(self, endpoint: str, scope_id: str, trusted: Sequence[x509.Certificate] | None,
                 timeout: float = 30.0, max_wait: float = 120.0, *, retries: int = 0) -> None:
        """``timeout`` bounds each attempt of each call and ``retries`` is how often a call that got no answer is
        tried again (``cloud_timeout_sec``, ``cloud_retries``); ``max_wait`` bounds the wait for the assignment."""
        self.endpoint, self.scope_id = endpoint.rstrip("/"), scope_id
        self._trusted = trusted
        self._timeout = timeout
        self._retries = retries
        self._max_wait = max_wait

    def _transport(self, auth: DpsAuth) -> CloudTransport:
        peer = "DPS"
        if isinstance(auth, X509Auth):
            return X509Transport(auth.identity, self._trusted, self._timeout, peer, self._retries)
        return HttpsTransport(self._trusted, self._timeout, peer, self._retries)

    async def _call(self, transport: CloudTransport, method: str, path: str, token: str | None, *,
                    body: dict[str, Any] | None = None,
                    challenge: bool = False) -> tuple[int, Any, float | None]:
        """One request; an error status raises :class:`HubError`, except the TPM challenge (401 with an
        ``authenticationKey``) when ``challenge`` is set, which is returned."""
        url = f"{self.endpoint}/{quote(self.scope_id, safe='')}{path}?api-version={DPS_API_VERSION}"
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        status, resp_headers, raw = await transport.send(method, url, headers,
                                                         json.dumps(body).encode() if body is not None else None)
        doc: Any = None
        if raw and len(raw) <= MAX_RESPONSE:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        retry = resp_headers.get("Retry-After")
        retry_after = _retry_after(retry)
        if challenge and status == 401 and isinstance(doc, dict) and "authenticationKey" in doc:
            return status, doc, retry_after
        if status >= 400:
            message = str(doc.get("message") or doc.get("Message") or "") if isinstance(doc, dict) else ""
            mapped = status if status in (404, 409, 429) else (503 if status >= 500 else 502)
            raise HubError(f"DPS answered {status} to {method} {path}: {message[:300]}", mapped, retry_after, status)
        return status, doc, retry_after

    async def register(self, registration_id: str, auth: DpsAuth, payload: Any = None) -> DpsAssignment:
        """Register and wait (bounded) for the assignment."""
        audience = f"{self.scope_id}/registrations/{registration_id}"
        path = f"/registrations/{quote(registration_id, safe='')}"
        body: dict[str, Any] = {"registrationId": registration_id}
        if payload is not None:
            body["payload"] = payload
        transport = self._transport(auth)
        token: str | None = None
        challenge_key: bytes | None = None
        if isinstance(auth, SymmetricKeyAuth):
            token = await make_token(audience, auth.sign, 3600) + "&skn=registration"
        elif isinstance(auth, TpmAuth):
            keys = await auth.tpm.get_tpm_keys()
            body["tpm"] = {"endorsementKey": base64.b64encode(keys.endorsement_key).decode(),
                           "storageRootKey": base64.b64encode(keys.storage_root_key).decode()}
        deadline = time.monotonic() + self._max_wait
        status, doc, retry_after = await self._call(transport, "PUT", f"{path}/register", token, body=body,
                                                    challenge=isinstance(auth, TpmAuth))
        if isinstance(auth, TpmAuth):
            if status != 401:
                raise HubError("DPS accepted a TPM registration without challenging the TPM", cloud_status=0)
            challenge_key = _authentication_key(doc)
            await _import(auth.tpm, challenge_key, registration_id)
            token = await make_token(audience, auth.tpm.sign_with_auth_key, 3600) + "&skn=registration"
            _, doc, retry_after = await self._call(transport, "PUT", f"{path}/register", token, body=body)
        while True:
            if not isinstance(doc, dict):
                raise HubError("DPS answered with something that is not a registration operation", cloud_status=0)
            state = doc.get("registrationState") if "registrationState" in doc else None
            status_text = str((state or doc).get("status", doc.get("status", "")))
            if status_text == "assigned" and isinstance(state, dict):
                if isinstance(auth, TpmAuth) and isinstance(state.get("tpm"), dict):
                    final_key = _authentication_key(state["tpm"])
                    if final_key != challenge_key:
                        await _import(auth.tpm, final_key, registration_id)
                return DpsAssignment(registration_id, str(state["assignedHub"]), str(state["deviceId"]),
                                     state.get("substatus"), state.get("payload"))
            if status_text in ("failed", "disabled"):
                detail = (state or {}).get("errorMessage") or status_text
                raise HubError(f"DPS refused registration {registration_id!r}: {detail}", status=502,
                               cloud_status=0)
            operation = doc.get("operationId")
            if not operation:
                raise HubError(f"DPS answered status {status_text!r} without an operation to poll", cloud_status=0)
            wait = min(max(2.0 if retry_after is None else retry_after, 0.1), 30.0)
            if time.monotonic() + wait > deadline:
                raise HubError(f"DPS did not assign {registration_id!r} within {self._max_wait:.0f}s", 504)
            await asyncio.sleep(wait)
            _, doc, retry_after = await self._call(transport, "GET", f"{path}/operations/{quote(operation)}", token)


def _retry_after(value: str | None) -> float | None:
    """A Retry-After of seconds, whole or not, as DPS sends it; anything else counts as none given."""
    if value is None:
        return None
    whole, _, fraction = value.strip().partition(".")
    return float(f"{whole}.{fraction or 0}") if is_number(whole, 9) and (not fraction or is_number(fraction, 9)) \
        else None


def _authentication_key(doc: Any) -> bytes:
    try:
        return base64.b64decode(str(doc["authenticationKey"]), validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise HubError("DPS sent a TPM authenticationKey that is not base64", cloud_status=0) from None


async def _import(tpm: TpmApi, blob: bytes, registration_id: str) -> None:
    """Hand DPS's key to the TPM; a refusal means this TPM is not the one enrolled (not worth retrying)."""
    try:
        await tpm.import_auth_key(blob)
    except HttpError as e:
        if e.status >= 500:
            raise
        raise HubError(f"the TPM could not activate the authentication key DPS sent for {registration_id!r} "
                       f"({e.message}); is this device's TPM the one enrolled?", status=502, cloud_status=0) from e
