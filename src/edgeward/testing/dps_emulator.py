"""A local stand-in for the Device Provisioning Service's device REST API, for tests and demos: register + operation
polling with Retry-After, fault injection, custom payload echo, and the three attestations:

- api-versions: those the service serves to the device SDKs (:attr:`DpsEmulator.API_VERSIONS`: 2019-03-31, what the
  Node, Python and C SDKs send; 2021-06-01, what aziot-identityd sends; 2021-10-01, the published GA spec); any
  other is refused as DPS refuses it (400, errorCode 400004, "Unsupported API version");
- symmetric key: SAS validation for individual and group enrollments (device key = HMAC-SHA256(group key,
  registration id)): ``sr`` must be ``{idScope}/registrations/{registrationId}`` (URL-decoded, case-insensitive)
  and ``skn`` ``registration``, as DPS's access-control documentation gives them;
- X.509 by TLS client certificate: an individual enrollment pins the device certificate (its SHA-256 thumbprint), a
  group enrollment accepts certificates its CA issued; either way the registration id must be the certificate's CN.
  Certificates that chain to nothing enrolled fail the TLS handshake; verified ones that match no enrollment get 401;
- TPM: an individual enrollment holds the EK; the first register request (no token, ``tpm`` in the body) is answered
  401 with an ``authenticationKey`` made by :func:`~edgeward.testing.dps_tpm.make_tpm_challenge` for the EK and SRK
  sent, so only that TPM can use it; the device then signs its SAS token with the key it imported.

Assigned devices are registered in a :class:`HubEmulator` with the matching credential, so the device can go on to
use "its hub". Not on the production path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509

from ..identity.sas import SasError, SasToken, parse_token
from .hub_auth import parse_scope, signed_by
from .hub_emulator import HubEmulator, common_name, issued_by, peer_certificate, thumbprint

__all__ = ["DpsEmulator"]


@dataclass
class _Enrollment:
    key: bytes | None = None  # symmetric key, or the TPM's current authentication key
    device_id: str | None = None  # individual enrollments may name the device id
    cert: x509.Certificate | None = None  # X.509 individual: the device certificate
    ca: x509.Certificate | None = None  # X.509 group: the CA
    endorsement_key: bytes | None = None  # TPM: the EK's marshalled TPM2B_PUBLIC
    challenge: bytes | None = field(default=None, repr=False)  # TPM: the authenticationKey blob last sent


class Refused(Exception):
    """The request does not authenticate as any enrollment (401)."""


def _error(status: int, message: str, code: int) -> web.Response:
    return web.json_response({"errorCode": code, "trackingId": secrets.token_hex(8), "message": message,
                              "timestampUtc": datetime.now(UTC).isoformat().replace("+00:00", "Z")}, status=status)


def _registration_token(header: str, scope_id: str, reg_id: str) -> SasToken:
    token = parse_token(header)
    if token.key_name != "registration":
        raise SasError(f"skn must be 'registration', not {token.key_name!r}")
    scope = parse_scope(token)
    claimed = "/".join((scope.host, *scope.segments))
    if claimed != f"{scope_id}/registrations/{reg_id}".lower():
        raise SasError(f"the token is for {claimed}, not for this registration")
    return token


class DpsEmulator:
    """Mounted on a HubEmulator's HTTPS server (one TLS endpoint plays both, as a test convenience)."""

    API_VERSIONS = frozenset({"2019-03-31", "2021-06-01", "2021-10-01"})

    def __init__(self, hub: HubEmulator, scope_id: str = "0ne00000001", polls_before_assigned: int = 1,
                 retry_after: int = 0) -> None:
        self.hub, self.scope_id = hub, scope_id
        self.polls_before_assigned = polls_before_assigned
        self.retry_after = retry_after
        self.individual: dict[str, _Enrollment] = {}
        self.groups: list[bytes] = []
        self.x509_groups: list[x509.Certificate] = []
        self.registrations = 0
        self.registered_certs: list[x509.Certificate] = []  # X.509: the certificate of each registration
        self._operations: dict[str, dict[str, Any]] = {}
        self._fail: list[tuple[int, int | None]] = []
        hub.extra_routes.append(("PUT", "/{scope}/registrations/{regId}/register", self._register))
        hub.extra_routes.append(("GET", "/{scope}/registrations/{regId}/operations/{opId}", self._operation))

    @property
    def endpoint(self) -> str:
        return f"https://{self.hub.hostname}"

    # enrollments --------------------------------------------------------------------------------------------
    def add_individual_enrollment(self, registration_id: str, key: bytes | None = None,
                                  device_id: str | None = None) -> bytes:
        key = key or secrets.token_bytes(32)
        self.individual[registration_id] = _Enrollment(key, device_id)
        return key

    def add_group_enrollment(self, key: bytes | None = None) -> bytes:
        key = key or secrets.token_bytes(32)
        self.groups.append(key)
        return key

    def add_x509_enrollment(self, cert: x509.Certificate, device_id: str | None = None) -> str:
        """An individual X.509 enrollment for ``cert``; the registration id is its CN (returned)."""
        reg_id = common_name(cert)
        if reg_id is None:
            raise ValueError("an X.509 enrollment needs a certificate with a CN")
        self.individual[reg_id] = _Enrollment(device_id=device_id, cert=cert)
        self.hub.trust_client_cert(cert)
        return reg_id

    def add_x509_group_enrollment(self, ca: x509.Certificate) -> None:
        self.x509_groups.append(ca)
        self.hub.trust_client_cert(ca)

    def trust_ca(self, ca: x509.Certificate) -> None:
        """A CA "verified" in the DPS instance but in no enrollment: its certificates pass TLS, then get 401."""
        self.hub.trust_client_cert(ca)

    def add_tpm_enrollment(self, registration_id: str, endorsement_key: bytes, device_id: str | None = None) -> None:
        self.individual[registration_id] = _Enrollment(device_id=device_id, endorsement_key=endorsement_key)

    def fail_next(self, n: int, status: int, retry_after: int | None = None) -> None:
        self._fail.extend([(status, retry_after)] * n)

    # authentication -----------------------------------------------------------------------------------------
    def _sas(self, request: web.Request, reg_id: str) -> _Enrollment:
        token = _registration_token(request.headers.get("Authorization", ""), self.scope_id, reg_id)
        enrollment = self.individual.get(reg_id)
        if enrollment is not None:
            if enrollment.key is None:
                raise SasError("this enrollment has no key to check the token with (yet)")
            signed_by(token, (enrollment.key,))
            return enrollment
        for group_key in self.groups:
            device_key = hmac.new(group_key, reg_id.encode(), hashlib.sha256).digest()
            try:
                signed_by(token, (device_key,))
            except SasError:
                continue
            return _Enrollment(device_key)
        raise SasError("no enrollment accepts this token")

    def _x509(self, request: web.Request, reg_id: str) -> _Enrollment:
        cert = peer_certificate(request)
        if cert is None:
            raise Refused("no SAS token and no client certificate")
        if common_name(cert) != reg_id:
            raise Refused(f"the registration id must be the certificate's CN ({common_name(cert)!r})")
        enrollment = self.individual.get(reg_id)
        if enrollment is not None and enrollment.cert is not None:
            if thumbprint(cert) != thumbprint(enrollment.cert):
                raise Refused("the certificate is not the one enrolled for this registration id")
            return enrollment
        for ca in self.x509_groups:
            if issued_by(cert, ca):
                return _Enrollment(ca=ca, cert=cert)
        raise Refused("no X.509 enrollment matches the certificate")

    def _authenticate(self, request: web.Request, reg_id: str) -> _Enrollment:
        try:
            if "Authorization" in request.headers:
                return self._sas(request, reg_id)
            return self._x509(request, reg_id)
        except SasError as e:
            raise Refused(str(e)) from None

    def _tpm_challenge(self, reg_id: str, tpm: Any) -> web.Response:
        """The first step of TPM attestation: 401 with a key only the enrolled TPM can activate."""
        from .dps_tpm import InvalidTpmPublic, make_tpm_challenge  # noqa: PLC0415  # tpm2-pytss only when used

        enrollment = self.individual.get(reg_id)
        if enrollment is None or enrollment.endorsement_key is None:
            return _error(401, "Unauthorized: no TPM enrollment for this registration id", 401002)
        try:
            ek = base64.b64decode(str(tpm.get("endorsementKey")), validate=True)
            srk = base64.b64decode(str(tpm.get("storageRootKey")), validate=True)
        except (binascii.Error, ValueError, AttributeError):
            return _error(400, "tpm.endorsementKey and tpm.storageRootKey must be base64", 400004)
        if ek != enrollment.endorsement_key:
            return _error(401, "Unauthorized: the endorsement key is not the enrolled one", 401002)
        try:
            challenge = make_tpm_challenge(ek, srk)
        except InvalidTpmPublic as e:
            return _error(400, str(e), 400004)
        enrollment.key, enrollment.challenge = challenge.hmac_key, challenge.authentication_key
        return web.json_response({"authenticationKey": challenge.authentication_key_b64}, status=401)

    # routes -------------------------------------------------------------------------------------------------
    def _injected(self) -> web.Response | None:
        if not self._fail:
            return None
        status, retry_after = self._fail.pop(0)
        resp = _error(status, "injected failure", status * 1000)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    def _api_version_refusal(self, request: web.Request) -> web.Response | None:
        version = request.query.get("api-version")
        if version in self.API_VERSIONS:
            return None
        return _error(400, f"Unsupported API version {version}." if version else "api-version is missing.", 400004)

    async def _register(self, request: web.Request) -> web.Response:
        if (injected := self._injected()) is not None:
            return injected
        if (refused := self._api_version_refusal(request)) is not None:
            return refused
        if request.match_info["scope"] != self.scope_id:
            return _error(404, "unknown ID scope", 404001)
        reg_id = request.match_info["regId"]
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON", 400004)
        if not isinstance(body, dict) or body.get("registrationId") != reg_id:
            return _error(400, "registrationId in the body must match the path", 400004)
        if "tpm" in body and "Authorization" not in request.headers:
            return self._tpm_challenge(reg_id, body["tpm"])
        try:
            enrollment = self._authenticate(request, reg_id)
        except Refused as e:
            return _error(401, f"Unauthorized: {e}", 401002)
        self.registrations += 1
        op = secrets.token_hex(12)
        device_id = enrollment.device_id or reg_id
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        state: dict[str, Any] = {
            "registrationId": reg_id, "createdDateTimeUtc": now, "lastUpdatedDateTimeUtc": now,
            "assignedHub": self.hub.hostname, "deviceId": device_id,
            "status": "assigned", "substatus": "initialAssignment", "payload": body.get("payload")}
        if enrollment.endorsement_key is not None:
            assert enrollment.challenge is not None
            state["tpm"] = {"authenticationKey": base64.b64encode(enrollment.challenge).decode()}
        self._operations[op] = {"regId": reg_id, "polls": 0, "state": state}
        if enrollment.cert is not None or enrollment.ca is not None:
            cert = peer_certificate(request)
            assert cert is not None
            self.registered_certs.append(cert)
            if enrollment.ca is not None:
                self.hub.add_x509_device(device_id, ca=enrollment.ca)
            else:
                self.hub.add_x509_device(device_id, cert=cert)
        else:
            self.hub.add_device(device_id, enrollment.key)
        resp = web.json_response({"operationId": op, "status": "assigning"}, status=202)
        resp.headers["Retry-After"] = str(self.retry_after)
        return resp

    async def _operation(self, request: web.Request) -> web.Response:
        if (injected := self._injected()) is not None:
            return injected
        if (refused := self._api_version_refusal(request)) is not None:
            return refused
        op = self._operations.get(request.match_info["opId"])
        reg_id = request.match_info["regId"]
        if op is None or op["regId"] != reg_id:
            return _error(404, "unknown operation", 404002)
        try:
            self._authenticate(request, reg_id)
        except Refused as e:
            return _error(401, f"Unauthorized: {e}", 401002)
        op["polls"] += 1
        if op["polls"] < self.polls_before_assigned:
            resp = web.json_response({"operationId": request.match_info["opId"], "status": "assigning"}, status=202)
            resp.headers["Retry-After"] = str(self.retry_after)
            return resp
        return web.json_response({"operationId": request.match_info["opId"], "status": "assigned",
                                  "registrationState": op["state"]})
