"""A local stand-in for Azure IoT Hub's registry REST API, for tests and demos (Azure is unreachable here). Not on
the production path.

What it implements, as the real SDKs (Node ``azure-iothub`` Registry, aziot-identityd's hub client) see it:

- devices ``/devices[/{id}]`` (list, create, get, update, delete) and modules ``/devices/{id}/modules[/{mid}]``
  with ``api-version``; the hub generates ``generationId``, ``etag`` and, for SAS identities created without
  keys, the keys; ``If-Match`` per RFC 7232 (``*``, ``"*"``, ``"<etag>"``; a mismatch is 412) on updates and
  deletes (a delete without ``If-Match`` is unconditional); a PUT without ``If-Match`` only creates (409 when it
  exists);
- shared access policies (the five every hub starts with: iothubowner, service, device, registryRead,
  registryReadWrite, each with its own keys; :meth:`HubEmulator.add_policy` for more) and SAS tokens checked as
  IoT Hub does (:mod:`.hub_auth`): ``skn`` names the policy whose key signed and whose rights decide; without
  ``skn`` the device (module) named by ``sr`` signed, and then only its own scope (a device may manage its own
  modules, as edge devices do); ``sr`` covers by path segment, case-insensitively;
- X.509 devices by TLS client certificate (``selfSigned``: the SHA-256 thumbprint; ``certificateAuthority``: issued by
  a CA the hub trusts and the CN is the device id). The TLS server asks every client for a certificate but does not
  require one (SAS clients send none); a certificate that chains to nothing the hub trusts fails the handshake, as
  OpenSSL does; one that verifies but is not the device's is refused with 401;
- errors as IoT Hub's JSON, ``{"Message": "ErrorCode:<code>;<text>", "ExceptionMessage": "Tracking ID:..."}``
  with an ``IotHub-ErrorCode`` header, unknown routes included.

Where it listens: the SDKs dial ``<HostName>:443`` and nothing else (the Node SDK's HTTP layer passes the host name
whole to ``https.request`` and has no port setting; the host name is also the SAS audience), so by default the
emulator listens on port 443 of a loopback address of its own (``127.x.y.z``: Linux routes all of 127/8 to ``lo``),
and that address is its host name. Binding port 443 needs root or CAP_NET_BIND_SERVICE; ``port=0`` gives an
ephemeral port on 127.0.0.1 instead, and a ``127.0.0.1:<port>`` host name that only clients taking a port can use.

As a parent device (nested edge): ``hub_name`` is the name of the IoT Hub the emulator stands for when that is not
the name it is reached by. A child device dials the parent's address (its ``parent_hostname``) and checks the TLS
certificate against the parent's CA, while its SAS tokens name the hub (``sr=<hub_name>/devices/<id>``), as a
parent's edgeHub relays them to IoT Hub, which checks them against its own name.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import secrets
import ssl
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..identity.sas import SasError, parse_token
from .est_server import generate_ca, issue_certificate
from .hub_auth import RIGHTS, AccessPolicy, covers, parse_scope, signed_by
from .hub_records import Device, Module, etag_matches, new_etag, normalised_authentication

__all__ = ["AccessPolicy", "HubEmulator", "common_name", "issued_by", "peer_certificate", "thumbprint"]

DEFAULT_POLICIES: tuple[tuple[str, frozenset[str]], ...] = (
    ("iothubowner", RIGHTS),
    ("service", frozenset({"ServiceConnect"})),
    ("device", frozenset({"DeviceConnect"})),
    ("registryRead", frozenset({"RegistryRead"})),
    ("registryReadWrite", frozenset({"RegistryRead", "RegistryWrite"})),
)
_BIND_ATTEMPTS = 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    tracking = f"Tracking ID:{uuid.uuid4().hex}-G:0-TimeStamp:{datetime.now(UTC).strftime('%m/%d/%Y %H:%M:%S')}"
    return web.json_response({"Message": f"ErrorCode:{code};{message}", "ExceptionMessage": tracking},
                             status=status, headers={"IotHub-ErrorCode": code})


class _Refused(Exception):
    """401, IotHubUnauthorizedAccess; the text says which check refused."""


class HubEmulator:
    API_VERSIONS = frozenset({"2017-11-08-preview", "2020-05-31-preview", "2021-04-12"})

    def __init__(self, *, port: int | None = None, hub_name: str | None = None) -> None:
        """``port=None``: port 443 on a loopback address of its own (what the SDKs can dial); ``port=0``: an
        ephemeral port on 127.0.0.1. ``hub_name``: the IoT Hub's name in tokens and connection strings, when the
        emulator stands in for a parent device reached by another name (default: :attr:`hostname`)."""
        self._hub_name = hub_name
        self.ca_cert, self._ca_key = generate_ca("Edgeward test IoT Hub CA")
        self.devices: dict[str, Device] = {}
        self.policies: dict[str, AccessPolicy] = {}
        for name, rights in DEFAULT_POLICIES:
            self.add_policy(name, rights)
        self.requests = 0
        self._fail: list[tuple[int, int | None]] = []
        self._runner: web.AppRunner | None = None
        self._wanted_port = 443 if port is None else port
        self.address = "127.0.0.1"
        self.port = 0
        self._client_anchors: list[x509.Certificate] = []
        self._ssl: ssl.SSLContext | None = None
        # (method, path, handler) of other emulated services sharing this TLS endpoint (the DPS emulator)
        self.extra_routes: list[tuple[str, str, Any]] = []

    @property
    def hostname(self) -> str:
        """The hub's host name as devices and services are given it (``HostName=`` of a connection string)."""
        return self.address if self.port == 443 else f"{self.address}:{self.port}"

    @property
    def hub_name(self) -> str:
        """The IoT Hub's name: what SAS tokens must name (``sr``) and connection strings carry (``HostName``)."""
        return self._hub_name or self.hostname

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    # registry set-up in code ------------------------------------------------------------------------------
    def add_policy(self, name: str, rights: Iterable[str], key: bytes | None = None) -> bytes:
        """A shared access policy (replacing one of that name); returns its primary key."""
        rights = frozenset(rights)
        if not rights or not rights <= RIGHTS:
            raise ValueError(f"rights must be some of {sorted(RIGHTS)}")
        key = key or secrets.token_bytes(32)
        self.policies[name] = AccessPolicy(name, key, secrets.token_bytes(32), rights)
        return key

    def connection_string(self, policy: str = "iothubowner") -> str:
        """A service connection string for ``policy``, as the portal shows it."""
        key = base64.b64encode(self.policies[policy].primary_key).decode()
        return f"HostName={self.hub_name};SharedAccessKeyName={policy};SharedAccessKey={key}"

    def add_device(self, device_id: str, key: bytes | None = None) -> bytes:
        """A SAS device with ``key`` as its primary key (an existing device keeps its modules and generation)."""
        key = key or secrets.token_bytes(32)
        device = self.devices.setdefault(device_id, Device())
        device.authentication = normalised_authentication(
            {"type": "sas", "symmetricKey": {"primaryKey": base64.b64encode(key).decode()}})
        device.ca, device.etag = None, new_etag()
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
        device = self.devices.setdefault(device_id, Device())
        if cert is not None:
            device.authentication = normalised_authentication(
                {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumbprint(cert)}})
        else:
            device.authentication = normalised_authentication({"type": "certificateAuthority"})
        device.ca, device.etag = ca, new_etag()

    def trust_client_cert(self, cert: x509.Certificate) -> None:
        """Let TLS client certificates that chain to ``cert`` (or are ``cert``) complete the handshake."""
        if cert in self._client_anchors:
            return
        self._client_anchors.append(cert)
        if self._ssl is not None:  # OpenSSL reads the store at each handshake: later connections see it
            self._ssl.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())

    def modules_of(self, device_id: str) -> dict[str, Module]:
        return self.devices[device_id].modules

    def fail_next(self, n: int, status: int, retry_after: int | None = None) -> None:
        self._fail.extend([(status, retry_after)] * n)

    # server ----------------------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.IPAddress(IPv4Address(self.address)), x509.DNSName("localhost")]
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.address)]))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
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

    async def _listen(self, runner: web.AppRunner) -> None:
        if self._wanted_port != 443:
            self.address = "127.0.0.1"
            site = web.TCPSite(runner, self.address, self._wanted_port, ssl_context=self._tls())
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return
        for _ in range(_BIND_ATTEMPTS):
            self.address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
            site = web.TCPSite(runner, self.address, 443, ssl_context=self._tls())
            try:
                await site.start()
            except PermissionError as e:
                raise RuntimeError("the IoT Hub emulator listens on port 443 (the only port the Azure IoT SDKs dial) "
                                   "and binding it needs root or CAP_NET_BIND_SERVICE; HubEmulator(port=0) serves "
                                   "clients that take a port") from e
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            self.port = 443
            return
        raise RuntimeError(f"no free loopback address for port 443 after {_BIND_ATTEMPTS} tries")

    async def __aenter__(self) -> HubEmulator:
        app = web.Application(middlewares=[self._json_errors])
        app.router.add_route("GET", "/devices", self._devices)
        app.router.add_route("GET", "/devices/", self._devices)  # the Node Registry lists at "/devices/"
        app.router.add_route("*", "/devices/{deviceId}", self._device)
        app.router.add_route("*", "/devices/{deviceId}/modules", self._modules)
        app.router.add_route("*", "/devices/{deviceId}/modules/{moduleId}", self._module)
        for method, path, handler in self.extra_routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await self._listen(self._runner)
        except BaseException:
            await self._runner.cleanup()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own 404/405 (no such route) in IoT Hub's error shape."""
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed:
            return _error(405, f"{request.method} is not supported on {request.path}", "MethodNotAllowed")
        except web.HTTPNotFound:
            return _error(404, f"no resource at {request.path}", "NotFound")

    # authentication and authorisation --------------------------------------------------------------------
    def _authorize(self, request: web.Request, right: str, device_scoped: bool) -> None:
        """Raise :class:`_Refused` unless the request's credential may use ``right`` on its path.
        ``device_scoped``: a device's own credential may do this to its own resource (its module registry)."""
        header = request.headers.get("Authorization")
        device_id = request.match_info.get("deviceId")
        if header is None:
            if not device_scoped or device_id is None:
                raise _Refused("no SharedAccessSignature")
            refusal = self._x509_refusal(self.devices.get(device_id), device_id, peer_certificate(request))
            if refusal is not None:
                raise _Refused(refusal)
            self._refuse_if_disabled(device_id)
            return
        try:
            token = parse_token(header)
            scope = parse_scope(token)
        except SasError as e:
            raise _Refused(str(e)) from None
        if not covers(scope, self.hub_name, request.raw_path):
            raise _Refused(f"the token's resource {scope.host}/{'/'.join(scope.segments)} does not cover "
                           f"{self.hub_name}{request.path}")
        if token.key_name is not None:
            policy = self.policies.get(token.key_name)
            if policy is None:
                raise _Refused(f"no shared access policy named {token.key_name!r}")
            try:
                signed_by(token, (policy.primary_key, policy.secondary_key))
            except SasError as e:
                raise _Refused(f"{e} (policy {policy.name!r})") from None
            if right not in policy.rights:
                raise _Refused(f"policy {policy.name!r} does not grant {right}")
            return
        # a device's (module's) own key: sr names it, and it signed; identity management is for its own modules only
        if scope.device_id is None:
            raise _Refused("a token without skn must name a device (sr=<hub>/devices/<id>)")
        if scope.module_id is not None:
            raise _Refused("a module credential cannot manage identities")
        if not device_scoped or device_id is None:
            raise _Refused("a device credential cannot do this; use a shared access policy")
        device = self.devices.get(device_id)
        if device is None or not device.keys:
            raise _Refused("unknown device, or not a SAS device")
        try:
            signed_by(token, device.keys)
        except SasError as e:
            raise _Refused(str(e)) from None
        self._refuse_if_disabled(device_id)

    def _refuse_if_disabled(self, device_id: str) -> None:
        """A disabled device's own credentials stop working (a policy can still manage it)."""
        if self.devices[device_id].status != "enabled":
            raise _Refused(f"device {device_id!r} is disabled")

    @staticmethod
    def _x509_refusal(device: Device | None, device_id: str, cert: x509.Certificate | None) -> str | None:
        if cert is None:
            return "no SAS token and no client certificate"
        if device is None:
            return "unknown device"
        kind = (device.authentication or {}).get("type")
        if kind == "selfSigned":
            matches = thumbprint(cert) in device.thumbprints
            return None if matches else "the certificate's thumbprint is not the device's"
        if kind == "certificateAuthority" and device.ca is not None:
            if not issued_by(cert, device.ca):
                return "the certificate is not issued by the device's CA"
            return None if common_name(cert) == device_id else f"the certificate's CN is not {device_id!r}"
        return "the device does not use X.509 authentication"

    def _check(self, request: web.Request, right: str, device_scoped: bool = False) -> web.Response | None:
        """Injected failures, api-version, then the credential; ``None`` when the request may proceed."""
        self.requests += 1
        if self._fail:
            status, retry_after = self._fail.pop(0)
            resp = _error(status, "injected failure", "ServerError" if status >= 500 else "ThrottlingException")
            if retry_after is not None:
                resp.headers["Retry-After"] = str(retry_after)
            return resp
        if request.query.get("api-version") not in self.API_VERSIONS:
            return _error(400, "Invalid or missing api-version", "InvalidProtocolVersion")
        try:
            self._authorize(request, right, device_scoped)
        except _Refused as e:
            return _error(401, f"Unauthorized: {e}", "IotHubUnauthorizedAccess")
        return None

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON", "ArgumentInvalid")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "ArgumentInvalid")
        return body

    # devices ---------------------------------------------------------------------------------------------
    async def _devices(self, request: web.Request) -> web.Response:
        if (refusal := self._check(request, "RegistryRead")) is not None:
            return refusal
        return web.json_response([d.body(i) for i, d in self.devices.items()])

    async def _device(self, request: web.Request) -> web.Response:
        write = request.method in ("PUT", "DELETE")
        if request.method not in ("GET", "PUT", "DELETE"):
            return _error(405, f"{request.method} is not supported on a device", "MethodNotAllowed")
        if (refusal := self._check(request, "RegistryWrite" if write else "RegistryRead")) is not None:
            return refusal
        device_id = request.match_info["deviceId"]
        device = self.devices.get(device_id)
        not_found = _error(404, f"Device {device_id} not found", "DeviceNotFound")
        if_match = request.headers.get("If-Match")
        if request.method == "GET":
            return not_found if device is None else web.json_response(device.body(device_id))
        if request.method == "DELETE":
            if device is None:
                return not_found
            if if_match is not None and not etag_matches(if_match, device.etag):
                return _error(412, "Precondition failed: Invalid ETag", "PreconditionFailed")
            del self.devices[device_id]
            return web.Response(status=204)
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        if body.get("deviceId") != device_id:
            return _error(400, "deviceId in the body must match the path", "ArgumentInvalid")
        if device is None:
            if if_match is not None:
                return not_found
            device = Device()
        elif if_match is None:
            return _error(409, f"A device with ID '{device_id}' is already registered.", "DeviceAlreadyExists")
        elif not etag_matches(if_match, device.etag):
            return _error(412, "Precondition failed: Invalid ETag", "PreconditionFailed")
        try:
            device.apply(body)
        except ValueError as e:
            return _error(400, str(e), "ArgumentInvalid")
        self.devices[device_id] = device
        return web.json_response(device.body(device_id))

    # modules ---------------------------------------------------------------------------------------------
    async def _modules(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _error(405, f"{request.method} is not supported on a module list", "MethodNotAllowed")
        if (refusal := self._check(request, "RegistryRead", device_scoped=True)) is not None:
            return refusal
        device_id = request.match_info["deviceId"]
        device = self.devices.get(device_id)
        if device is None:
            return _error(404, f"Device {device_id} not found", "DeviceNotFound")
        return web.json_response([m.body(device_id) for m in device.modules.values()])

    async def _module(self, request: web.Request) -> web.Response:
        write = request.method in ("PUT", "DELETE")
        if request.method not in ("GET", "PUT", "DELETE"):
            return _error(405, f"{request.method} is not supported on a module", "MethodNotAllowed")
        if (refusal := self._check(request, "RegistryWrite" if write else "RegistryRead", True)) is not None:
            return refusal
        device_id, module_id = request.match_info["deviceId"], request.match_info["moduleId"]
        device = self.devices.get(device_id)
        if device is None:
            return _error(404, f"Device {device_id} not found", "DeviceNotFound")
        module = device.modules.get(module_id)
        not_found = _error(404, f"Module {module_id} on device {device_id} not found", "ModuleNotFound")
        if_match = request.headers.get("If-Match")
        if request.method == "GET":
            return not_found if module is None else web.json_response(module.body(device_id))
        if request.method == "DELETE":
            if module is None:
                return not_found
            if if_match is not None and not etag_matches(if_match, module.etag):
                return _error(412, "Precondition failed: Invalid ETag", "PreconditionFailed")
            del device.modules[module_id]
            return web.Response(status=204)
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        if body.get("moduleId") != module_id or body.get("deviceId", device_id) != device_id:
            return _error(400, "moduleId and deviceId in the body must match the path", "ArgumentInvalid")
        try:
            auth = normalised_authentication(body.get("authentication"))
        except ValueError as e:
            return _error(400, str(e), "ArgumentInvalid")
        if module is None:
            if if_match is not None:
                return not_found
            module = Module(module_id, secrets.token_hex(8), new_etag(), body.get("managedBy"), auth)
            device.modules[module_id] = module
            return web.json_response(module.body(device_id))
        if if_match is None:
            return _error(409, f"Module {module_id} already exists on device {device_id}",
                          "ModuleAlreadyExistsOnDevice")
        if not etag_matches(if_match, module.etag):
            return _error(412, "Precondition failed: Invalid ETag", "PreconditionFailed")
        module.authentication = auth
        module.managed_by = body.get("managedBy", module.managed_by)
        module.etag = new_etag()
        return web.json_response(module.body(device_id))
