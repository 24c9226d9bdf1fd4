"""A local stand-in for Azure IoT Hub's registry REST API, for tests and demos (Azure is unreachable here).

It implements what a device does with its own modules, faithfully to the wire: ``/devices/{id}/modules[/{mid}]``
with ``api-version``, SAS tokens validated against the device key (resource, expiry, HMAC of the encoded resource
and expiry), ``If-Match`` on updates and deletes, a new ``generationId`` whenever a module is created, ``etag``s,
and error bodies ``{"Message": ..., "ExceptionMessage": ...}``. Not on the production path.

X.509 devices authenticate by TLS client certificate, as IoT Hub's ``selfSigned`` (the SHA-256 thumbprint of the
device certificate is registered) and ``certificateAuthority`` (the certificate is issued by a CA the hub trusts
and its CN is the device id) authentication types. The TLS server asks every client for a certificate but does not
require one (SAS clients send none); a certificate that chains to nothing the hub trusts fails the handshake, as
OpenSSL does; one that verifies but is not the device's is refused with 401.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..identity.sas import SasError, device_audience, parse_token, verify_token
from .est_server import generate_ca, issue_certificate

__all__ = ["HubEmulator", "common_name", "issued_by", "peer_certificate", "thumbprint"]


@dataclass
class _Module:
    module_id: str
    generation_id: str
    etag: str
    managed_by: str | None = None
    authentication: dict[str, Any] | None = None

    def body(self, device_id: str) -> dict[str, Any]:
        return {"moduleId": self.module_id, "deviceId": device_id, "generationId": self.generation_id,
                "etag": self.etag, "managedBy": self.managed_by, "connectionState": "Disconnected",
                "authentication": self.authentication or {"type": "none"}}


@dataclass
class _Device:
    key: bytes | None = None  # SAS
    thumbprint: str | None = None  # X.509 selfSigned: SHA-256 of the certificate's DER, upper-case hex
    ca: x509.Certificate | None = None  # X.509 certificateAuthority
    modules: dict[str, _Module] = field(default_factory=dict)


def thumbprint(cert: x509.Certificate) -> str:
    """IoT Hub's and DPS's certificate thumbprint (SHA-256 of the DER, upper-case hex)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The TLS client certificate of ``request`` (already verified by the TLS layer), if the client sent one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"Message": f"ErrorCode:{code};{message}", "ExceptionMessage": ""}, status=status)


class HubEmulator:
    API_VERSIONS = frozenset({"2017-11-08-preview", "2020-05-31-preview", "2021-04-12"})

    def __init__(self) -> None:
        self.ca_cert, self._ca_key = generate_ca("Edgeward test IoT Hub CA")
        self.devices: dict[str, _Device] = {}
        self.requests = 0
        self._fail: list[tuple[int, int | None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._client_anchors: list[x509.Certificate] = []
        self._ssl: ssl.SSLContext | None = None
        # (method, path, handler) of other emulated services sharing this TLS endpoint (the DPS emulator)
        self.extra_routes: list[tuple[str, str, Any]] = []

    @property
    def hostname(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def add_device(self, device_id: str, key: bytes | None = None) -> bytes:
        key = key or secrets.token_bytes(32)
        self.devices[device_id] = _Device(key)
        return key

    def add_x509_device(self, device_id: str, cert: x509.Certificate | None = None,
                        ca: x509.Certificate | None = None) -> None:
        """An X.509 device: ``cert`` registers its thumbprint (selfSigned), ``ca`` any cert that CA issued with the
        device id as CN (certificateAuthority). Either is added to what the TLS server accepts."""
        if (cert is None) == (ca is None):
            raise ValueError("give the device certificate or its CA")
        anchor = cert if cert is not None else ca
        assert anchor is not None
        self.trust_client_cert(anchor)
        self.devices[device_id] = _Device(thumbprint=thumbprint(cert) if cert is not None else None, ca=ca)

    def trust_client_cert(self, cert: x509.Certificate) -> None:
        """Let TLS client certificates that chain to ``cert`` (or are ``cert``) complete the handshake."""
        if cert in self._client_anchors:
            return
        self._client_anchors.append(cert)
        if self._ssl is not None:  # OpenSSL reads the store at each handshake: later connections see it
            self._ssl.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())

    def modules_of(self, device_id: str) -> dict[str, _Module]:
        return self.devices[device_id].modules

    def fail_next(self, n: int, status: int, retry_after: int | None = None) -> None:
        self._fail.extend([(status, retry_after)] * n)

    # server ----------------------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
               .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")),
                                                           x509.DNSName("localhost")]), critical=False)
               .sign(key, hashes.SHA256()))
        cert = issue_certificate(csr, self.ca_cert, self._ca_key, timedelta(days=2))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="edgeward-hub-") as tmp:  # ssl loads keys from paths only
            (Path(tmp) / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.ca_pem)
            (Path(tmp) / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
            ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
        ctx.verify_mode = ssl.CERT_OPTIONAL  # ask for a client certificate; SAS clients send none
        ctx.load_verify_locations(cadata=self.ca_pem.decode())  # never empty; no client cert is issued by it
        for anchor in self._client_anchors:
            ctx.load_verify_locations(cadata=anchor.public_bytes(serialization.Encoding.PEM).decode())
        self._ssl = ctx
        return ctx

    async def __aenter__(self) -> HubEmulator:
        app = web.Application()
        app.router.add_route("*", "/devices/{deviceId}/modules", self._modules)
        app.router.add_route("*", "/devices/{deviceId}/modules/{moduleId}", self._module)
        for method, path, handler in self.extra_routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # the protocol ----------------------------------------------------------------------------------------
    def _check(self, request: web.Request) -> _Device | web.Response:
        self.requests += 1
        if self._fail:
            status, retry_after = self._fail.pop(0)
            resp = _error(status, "injected failure", "ServerError" if status >= 500 else "ThrottlingException")
            if retry_after is not None:
                resp.headers["Retry-After"] = str(retry_after)
            return resp
        if request.query.get("api-version") not in self.API_VERSIONS:
            return _error(400, "Invalid or missing api-version", "InvalidProtocolVersion")
        device_id = request.match_info["deviceId"]
        device = self.devices.get(device_id)
        header = request.headers.get("Authorization")
        if header is None:
            refusal = self._x509_refusal(device, device_id, peer_certificate(request))
            if refusal is not None:
                return _error(401, f"Unauthorized: {refusal}", "IotHubUnauthorizedAccess")
            assert device is not None
            return device
        try:
            token = parse_token(header)
            if device is None or device.key is None:
                raise SasError("unknown device, or not a SAS device")
            verify_token(token, device_audience(self.hostname, device_id), device.key)
        except SasError as e:
            return _error(401, f"Unauthorized: {e}", "IotHubUnauthorizedAccess")
        return device

    @staticmethod
    def _x509_refusal(device: _Device | None, device_id: str, cert: x509.Certificate | None) -> str | None:
        if cert is None:
            return "no SAS token and no client certificate"
        if device is None:
            return "unknown device"
        if device.thumbprint is not None:
            return None if thumbprint(cert) == device.thumbprint else "the certificate's thumbprint is not the device's"
        if device.ca is not None:
            if not issued_by(cert, device.ca):
                return "the certificate is not issued by the device's CA"
            return None if common_name(cert) == device_id else f"the certificate's CN is not {device_id!r}"
        return "the device does not use X.509 authentication"

    async def _modules(self, request: web.Request) -> web.Response:
        device = self._check(request)
        if isinstance(device, web.Response):
            return device
        if request.method != "GET":
            return _error(405, "method not allowed", "MethodNotAllowed")
        return web.json_response([m.body(request.match_info["deviceId"]) for m in device.modules.values()])

    async def _module(self, request: web.Request) -> web.Response:
        device = self._check(request)
        if isinstance(device, web.Response):
            return device
        device_id, module_id = request.match_info["deviceId"], request.match_info["moduleId"]
        module = device.modules.get(module_id)
        if request.method == "GET":
            if module is None:
                return _error(404, f"Module {module_id} on device {device_id} not found", "ModuleNotFound")
            return web.json_response(module.body(device_id))
        if request.method == "DELETE":
            if request.headers.get("If-Match") is None:
                return _error(412, "If-Match header required", "PreconditionFailed")
            if module is None:
                return _error(404, f"Module {module_id} on device {device_id} not found", "ModuleNotFound")
            del device.modules[module_id]
            return web.Response(status=204)
        if request.method != "PUT":
            return _error(405, "method not allowed", "MethodNotAllowed")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON", "ArgumentInvalid")
        if not isinstance(body, dict) or body.get("moduleId") != module_id:
            return _error(400, "moduleId in the body must match the path", "ArgumentInvalid")
        if_match = request.headers.get("If-Match")
        if module is None:
            if if_match is not None:
                return _error(404, f"Module {module_id} on device {device_id} not found", "ModuleNotFound")
            auth = body.get("authentication") or {"type": "sas", "symmetricKey": {
                "primaryKey": "", "secondaryKey": ""}}
            module = _Module(module_id, secrets.token_hex(8), secrets.token_hex(6), body.get("managedBy"), auth)
            device.modules[module_id] = module
            return web.json_response(module.body(device_id))
        if if_match is None:
            return _error(409, f"Module {module_id} already exists on device {device_id}",
                          "ModuleAlreadyExistsOnDevice")
        if if_match not in ("*", module.etag):
            return _error(412, "etag mismatch", "PreconditionFailed")
        module.authentication = body.get("authentication") or module.authentication
        module.managed_by = body.get("managedBy", module.managed_by)
        module.etag = secrets.token_hex(6)
        return web.json_response(module.body(device_id))
