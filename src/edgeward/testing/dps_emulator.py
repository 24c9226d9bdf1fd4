"""A local stand-in for the Device Provisioning Service's device REST API (api-version 2021-06-01), for tests and
demos: register + operation polling with Retry-After, SAS validation for individual and group symmetric-key
enrollments (device key = HMAC-SHA256(group key, registration id)), custom payload echo, fault injection.
Assigned devices are registered in a :class:`HubEmulator`, so the device can go on to use "its hub".
Not on the production path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..identity.sas import SasError, parse_token, verify_token
from .hub_emulator import HubEmulator

__all__ = ["DpsEmulator"]


@dataclass
class _Enrollment:
    key: bytes
    device_id: str | None = None  # individual enrollments may name the device id


def _error(status: int, message: str, code: int) -> web.Response:
    return web.json_response({"errorCode": code, "message": message, "trackingId": secrets.token_hex(8)},
                             status=status)


class DpsEmulator:
    """Mounted on a HubEmulator's HTTPS server (one TLS endpoint plays both, as a test convenience)."""

    def __init__(self, hub: HubEmulator, scope_id: str = "0ne00000001", polls_before_assigned: int = 1,
                 retry_after: int = 0) -> None:
        self.hub, self.scope_id = hub, scope_id
        self.polls_before_assigned = polls_before_assigned
        self.retry_after = retry_after
        self.individual: dict[str, _Enrollment] = {}
        self.groups: list[bytes] = []
        self.registrations = 0
        self._operations: dict[str, dict[str, Any]] = {}
        self._fail: list[int] = []
        hub.extra_routes.append(("PUT", "/{scope}/registrations/{regId}/register", self._register))
        hub.extra_routes.append(("GET", "/{scope}/registrations/{regId}/operations/{opId}", self._operation))

    @property
    def endpoint(self) -> str:
        return f"https://{self.hub.hostname}"

    def add_individual_enrollment(self, registration_id: str, key: bytes | None = None,
                                  device_id: str | None = None) -> bytes:
        key = key or secrets.token_bytes(32)
        self.individual[registration_id] = _Enrollment(key, device_id)
        return key

    def add_group_enrollment(self, key: bytes | None = None) -> bytes:
        key = key or secrets.token_bytes(32)
        self.groups.append(key)
        return key

    def fail_next(self, n: int, status: int) -> None:
        self._fail.extend([status] * n)

    def _authenticate(self, request: web.Request, reg_id: str) -> _Enrollment:
        token = parse_token(request.headers.get("Authorization", ""))
        audience = f"{self.scope_id}/registrations/{reg_id}"
        if reg_id in self.individual:
            verify_token(token, audience, self.individual[reg_id].key)
            return self.individual[reg_id]
        for group_key in self.groups:
            device_key = hmac.new(group_key, reg_id.encode(), hashlib.sha256).digest()
            try:
                verify_token(token, audience, device_key)
            except SasError:
                continue
            return _Enrollment(device_key)
        raise SasError("no enrollment accepts this token")

    async def _register(self, request: web.Request) -> web.Response:
        if self._fail:
            return _error(self._fail.pop(0), "injected failure", 500000)
        if request.match_info["scope"] != self.scope_id:
            return _error(404, "unknown ID scope", 404001)
        if request.query.get("api-version") != "2021-06-01":
            return _error(400, "invalid api-version", 400001)
        reg_id = request.match_info["regId"]
        try:
            enrollment = self._authenticate(request, reg_id)
        except SasError as e:
            return _error(401, f"Unauthorized: {e}", 401002)
        body = await request.json()
        if not isinstance(body, dict) or body.get("registrationId") != reg_id:
            return _error(400, "registrationId in the body must match the path", 400004)
        self.registrations += 1
        op = secrets.token_hex(12)
        device_id = enrollment.device_id or reg_id
        self._operations[op] = {"regId": reg_id, "polls": 0, "state": {
            "registrationId": reg_id, "assignedHub": self.hub.hostname, "deviceId": device_id,
            "status": "assigned", "substatus": "initialAssignment", "payload": body.get("payload")}}
        self.hub.add_device(device_id, enrollment.key)
        resp = web.json_response({"operationId": op, "status": "assigning"}, status=202)
        resp.headers["Retry-After"] = str(self.retry_after)
        return resp

    async def _operation(self, request: web.Request) -> web.Response:
        op = self._operations.get(request.match_info["opId"])
        reg_id = request.match_info["regId"]
        if op is None or op["regId"] != reg_id:
            return _error(404, "unknown operation", 404002)
        try:
            self._authenticate(request, reg_id)
        except SasError as e:
            return _error(401, f"Unauthorized: {e}", 401002)
        op["polls"] += 1
        if op["polls"] < self.polls_before_assigned:
            resp = web.json_response({"operationId": request.match_info["opId"], "status": "assigning"}, status=202)
            resp.headers["Retry-After"] = str(self.retry_after)
            return resp
        return web.json_response({"operationId": request.match_info["opId"], "status": "assigned",
                                  "registrationState": op["state"]})
