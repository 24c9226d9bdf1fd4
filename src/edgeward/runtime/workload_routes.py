"""HTTP handlers of IoT Edge's workload API: every module, for itself only.

Each handler first attests the caller for the module named in the path (and its generation, where the route
names one); the module's keys, certificates and trust bundle follow from that registration, never from the path.

Encryption: each (module, generation) has its own AES-256-GCM key, derived inside the keys service from one master
HMAC key and never leaving it; the service picks every message's nonce (AEAD-SALTED), so the caller's
``initializationVector`` is bound to the ciphertext but cannot make two messages share a keystream. Ciphertexts of
the earlier format (one key for every module, the caller's IV as the nonce) still open for the module and generation
that sealed them, and are never produced again: a module re-seals one by decrypting and encrypting it. So do the
ciphertexts IoT Edge's workload API sealed (1.1's v1, 1.5's v2) under the device's master encryption key, once
``imported_master_encryption_key`` names it.

Server certificates carry the requested commonName (a DNS name; wildcards and IP addresses only when configured),
the module's name (when it is a valid DNS label) and the device's hostname.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..access.wiring import guard_attested_service
from ..attest.pipeline import AttestationRefused, Attestor
from ..http import RouteTable, build_app, read_json_object
from ..http.body import reply_object
from ..http.errors import BadRequest, Forbidden, HttpError, UnprocessableEntity
from ..http.limits import UidLimiter
from ..keys.aead import IMPORTED_MASTER_KEY_ID, V1, V2, V3, length_prefixed
from ..keys.api import KeysApi
from ..keys.model import Aead, AeadSalted, HmacSha256
from ..runtime.registry import Registration
from .aliases import serve_trailing_slash_aliases
from .edge_ca import EdgeCa, IssuedCert
from .identities import module_key_handle
from .mgmt_wire import module_details
from .model import hub_identity_name, valid_module_name, workload_caller_name
from .service import ModuleRuntime, ModuleView
from .sockets import WorkloadSockets

__all__ = ["API_VERSIONS", "WORKLOAD", "Workload", "build_workload_app", "module_encryption_handle", "routes"]

API_VERSIONS = ("2018-06-28", "2019-01-30", "2019-10-22", "2019-11-05", "2020-07-07", "2021-12-07", "2022-08-03")
# An HMAC key: each (module, generation)'s encryption key is derived from it inside the keys service.
ENCRYPTION_MASTER_KEY_ID = "edgeward-workload-encryption-master"
# The AES key that sealed every module's data before; only opened, never created or used to seal again.
LEGACY_ENCRYPTION_KEY_ID = "edgeward-workload-encryption"
MAX_DATA = 64 * 1024  # bytes of a sign/encrypt payload, decoded
MAX_IV = 128

routes = RouteTable(API_VERSIONS)


@dataclass
class Workload:
    attestor: Attestor
    sockets: WorkloadSockets
    keys: KeysApi
    edge_ca: EdgeCa
    hostname: str
    # Handles of module primary SAS keys, by (module, generation): deriving one costs two keys-service calls, and
    # a handle stays valid as long as the master key does.
    handles: dict[tuple[str, str], str] = field(default_factory=dict)
    # Derived-key handles of module encryption keys, by (module, generation): the key itself stays in the service.
    encryption_handles: dict[tuple[str, str], str] = field(default_factory=dict)
    runtime: ModuleRuntime | None = None  # for GET /modules and the settings; set once the runtime exists

    @property
    def server_cert_wildcards(self) -> bool:
        return self.runtime is not None and self.runtime.settings.server_cert_allow_wildcards

    @property
    def server_cert_ip_addresses(self) -> bool:
        return self.runtime is not None and self.runtime.settings.server_cert_allow_ip_addresses


WORKLOAD = web.AppKey("edgeward.runtime.workload", Workload)


async def _module(request: web.Request, with_generation: bool) -> tuple[Workload, Registration]:
    wl = request.app[WORKLOAD]
    name = workload_caller_name(request.match_info["name"])
    if not valid_module_name(name):
        raise BadRequest(f"invalid module name {name[:140]!r}")
    genid = request.match_info["genid"] if with_generation else None
    transport = request.transport
    arrived = wl.sockets.module_of(transport.get_extra_info("sockname") if transport is not None else None)
    reg = await wl.attestor.module(request, name, genid)
    if arrived is not None and arrived != reg.name:
        raise AttestationRefused("registration_for", f"module {reg.name} called on module {arrived}'s socket")
    return wl, reg


def _b64(body: dict[str, Any], key: str, limit: int = MAX_DATA) -> bytes:
    raw = body.get(key)
    if not isinstance(raw, str):
        raise UnprocessableEntity(f"{key} must be a base64 string")
    if len(raw) > limit * 4 // 3 + 4:
        raise UnprocessableEntity(f"{key} is over the limit of {limit} bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{key} is not valid base64") from None


def _str(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise UnprocessableEntity(f"{key} must be a non-empty string")
    return value


@routes.post("/modules/{name}/genid/{genid}/sign", since="2018-06-28")
async def sign(request: web.Request) -> web.Response:
    """HMAC-SHA256 of ``data`` with the module's primary SAS key. As in IoT Edge 1.5 (whose SignRequest holds
    ``data`` only), ``keyId`` and ``algo`` are not read: the SDKs send "primary" and "HMACSHA256" anyway."""
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    data = _b64(body, "data")
    cache_key = (reg.name, reg.generation_id)
    identity = hub_identity_name(reg.name, reg.system)  # the hub holds the key derived for this name
    handle = wl.handles.get(cache_key)
    if handle is None:
        if len(wl.handles) > 4096:  # old generations of removed modules
            wl.handles.clear()
        handle = wl.handles[cache_key] = await module_key_handle(wl.keys, identity, reg.generation_id)
    try:
        digest = await wl.keys.sign(handle, HmacSha256(data))
    except HttpError as e:
        if e.status != 401:
            raise
        # The master key was replaced since the handle was made: derive again.
        handle = wl.handles[cache_key] = await module_key_handle(wl.keys, identity, reg.generation_id)
        digest = await wl.keys.sign(handle, HmacSha256(data))
    return reply_object({"digest": base64.b64encode(digest).decode()})


async def module_encryption_handle(keys: KeysApi, module: str, generation: str) -> str:
    """A handle to the module generation's encryption key: derived from the master key over the module name and
    generation id, length-prefixed, so no other (module, generation) pair encodes to the same bytes."""
    master = await keys.create_key_if_not_exists(ENCRYPTION_MASTER_KEY_ID, "derive")
    derivation = b"edgeward-workload-encryption-v2\x00" + length_prefixed(module.encode(), generation.encode())
    return await keys.create_derived_key(master, derivation)


async def _encryption_handle(wl: Workload, reg: Registration, fresh: bool) -> str:
    cache_key = (reg.name, reg.generation_id)
    handle = None if fresh else wl.encryption_handles.get(cache_key)
    if handle is None:
        if len(wl.encryption_handles) > 4096:  # old generations of removed modules
            wl.encryption_handles.clear()
        handle = await module_encryption_handle(wl.keys, reg.name, reg.generation_id)
        wl.encryption_handles[cache_key] = handle
    return handle


async def _salted(wl: Workload, reg: Registration, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    mechanism = AeadSalted(iv, b"")
    handle = await _encryption_handle(wl, reg, fresh=False)
    op = wl.keys.encrypt if encrypt else wl.keys.decrypt
    try:
        return await op(handle, mechanism, data)
    except HttpError as e:
        if e.status != 401:
            raise
    # The master key was replaced since the handle was made: derive again.
    return await op(await _encryption_handle(wl, reg, fresh=True), mechanism, data)


async def _load_if_present(wl: Workload, key_id: str) -> str | None:
    try:
        return await wl.keys.load_key(key_id)
    except HttpError as e:
        if e.status != 404:
            raise
        return None


async def _open_legacy(wl: Workload, reg: Registration, iv: bytes, ciphertext: bytes) -> bytes:
    """A ciphertext of a single-key format: IoT Edge's (v1 from 1.1, v2 from 1.5) under the device's imported
    master encryption key, or earlier Edgeward releases' (v2). Either opens only with the associated data of the
    module and generation that sealed it (name and generation id, concatenated, as those formats have it)."""
    aad = Aead(iv, f"{reg.name}{reg.generation_id}".encode())
    handles = [h for h in (await _load_if_present(wl, IMPORTED_MASTER_KEY_ID),
                           await _load_if_present(wl, LEGACY_ENCRYPTION_KEY_ID)) if h is not None]
    if not handles:
        raise BadRequest("ciphertext does not decrypt: it is in a single-key format (IoT Edge's or earlier "
                         "Edgeward releases'), and this device has no key of that format (set "
                         "imported_master_encryption_key to the IoT Edge 1.1 device's key file)")
    refusal: HttpError | None = None
    for handle in handles:  # GCM's tag tells the right key; a wrong one opens nothing
        try:
            return await wl.keys.decrypt(handle, aad, ciphertext)
        except HttpError as e:
            if e.status != 400:
                raise
            refusal = e
    assert refusal is not None
    raise refusal


@routes.post("/modules/{name}/genid/{genid}/encrypt", since="2018-06-28")
async def encrypt(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    plaintext = _b64(body, "plaintext")
    iv = _b64(body, "initializationVector", MAX_IV)
    sealed = await _salted(wl, reg, iv, plaintext, encrypt=True)
    return reply_object({"ciphertext": base64.b64encode(sealed).decode()})


@routes.post("/modules/{name}/genid/{genid}/decrypt", since="2018-06-28")
async def decrypt(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    ciphertext = _b64(body, "ciphertext", MAX_DATA + 64)
    iv = _b64(body, "initializationVector", MAX_IV)
    version = ciphertext[0] if ciphertext else None
    if version == V3:
        opened = await _salted(wl, reg, iv, ciphertext, encrypt=False)
    elif version in (V1, V2):
        opened = await _open_legacy(wl, reg, iv, ciphertext)
    else:
        raise BadRequest("ciphertext does not decrypt: it is not a ciphertext this API produced "
                         f"(format {version!r})")
    return reply_object({"plaintext": base64.b64encode(opened).decode()})


def _expiration(body: dict[str, Any]) -> dt.datetime | None:
    raw = body.get("expiration")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise UnprocessableEntity("expiration must be an RFC 3339 time")
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"expiration {raw[:40]!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when <= dt.datetime.now(dt.UTC):
        raise BadRequest("expiration must be in the future")
    return when


def _certificate_body(cert: IssuedCert) -> dict[str, Any]:
    # aziot-edged writes chrono's to_rfc3339() of the certificate's notAfter: "2027-03-04T19:56:02+00:00"
    expiration = cert.expiration.astimezone(dt.UTC).replace(microsecond=0).isoformat()
    return {"privateKey": {"type": "key", "bytes": cert.private_key_pem}, "certificate": cert.certificate_pem,
            "expiration": expiration}


@routes.post("/modules/{name}/certificate/identity", since="2018-06-28")
async def identity_certificate(request: web.Request) -> web.Response:
    """IoT Edge 1.5 reads no body here (any body, or none); an ``expiration`` in a body is still honoured."""
    wl, reg = await _module(request, with_generation=False)
    body = await read_json_object(request) if request.body_exists else {}
    cert = await wl.edge_ca.issue(reg.name, server=False, expiration=_expiration(body))
    return reply_object(_certificate_body(cert), status=201)


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
# A last label a URL parser reads as a number makes the whole name an IPv4 address to it ("10.1", "0x7f000001").
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*", re.ASCII)


def _server_name(wl: Workload, name: str) -> str:
    """The commonName as a SAN: an ASCII DNS name; a wildcard or an IP address only where the operator allows."""
    if len(name) > 64:
        raise BadRequest("commonName must be at most 64 characters (the X.509 limit)")
    if not name.isascii() or not name.isprintable():
        raise BadRequest(f"commonName {name!r} is not a DNS name: it must be printable ASCII (an internationalized "
                         "name goes in its xn-- form)")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if not wl.server_cert_ip_addresses:
            raise BadRequest(f"commonName {name!r} is an IP address; server certificates for IP addresses are off "
                             "(edgeward.runtime.server_cert_allow_ip_addresses)")
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise BadRequest(f"commonName {name!r} has an IPv6 zone, which a certificate cannot carry")
        return name
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        if not wl.server_cert_wildcards:
            raise BadRequest(f"commonName {name!r} is a wildcard; wildcard server certificates are off "
                             "(edgeward.runtime.server_cert_allow_wildcards)")
        labels = labels[1:]
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise BadRequest(f"commonName {name!r} is not a DNS name: labels of letters, digits and inner hyphens, "
                         "1 to 63 characters, separated by single dots (a wildcard only as the whole first label)")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise BadRequest(f"commonName {name!r} ends in a numeric label, which clients read as an IP address")
    return name


def _names_held(wl: Workload, reg: Registration) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names a module may hold in a server certificate: (names it may ask for, names every cert of it carries).

    A module holds its own name (when a client could resolve it as a host name: modules dial each other by it).
    The device's host names are held only by the modules that serve downstream devices (the edge hub), or every
    module could impersonate the hub to them; anything more is configured per module."""
    own: tuple[str, ...] = (reg.name,) if _DNS_LABEL.fullmatch(reg.name) and not _NUMERIC_LABEL.fullmatch(reg.name) \
        else ()
    settings = wl.runtime.settings if wl.runtime is not None else None
    device_names = {wl.hostname.lower(), *((settings.gateway_hostname.lower(),) if settings is not None else ())}
    hostnames: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    if settings is not None:
        if reg.name in settings.server_cert_hostname_modules:
            hostnames = tuple(dict.fromkeys((wl.hostname, settings.gateway_hostname)))
        extra = settings.server_cert_names.get(reg.name, ())
    if not hostnames:  # a module named like the device holds that name no more than any other module
        own = tuple(n for n in own if n.lower() not in device_names)
    return (*own, *hostnames, *extra), (*own, *hostnames)


@routes.post("/modules/{name}/genid/{genid}/certificate/server", since="2018-06-28")
async def server_certificate(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    common_name = _str(body, "commonName")
    assert common_name is not None
    name = _server_name(wl, common_name)
    may_ask, always = _names_held(wl, reg)
    if name.lower() not in {n.lower() for n in may_ask}:
        held = ", ".join(may_ask) or "no name"
        raise Forbidden(f"module {reg.name} may not hold the name {name!r} in a server certificate (it holds: "
                        f"{held}); the device host name is the edge hub's, and more names are configured in "
                        f"[edgeward.runtime] server_cert_names")
    names = tuple(dict.fromkeys((name, *always)))
    cert = await wl.edge_ca.issue(common_name, server=True, dns_names=names, expiration=_expiration(body))
    return reply_object(_certificate_body(cert), status=201)


@routes.get("/trust-bundle", since="2018-06-28")
async def trust_bundle(request: web.Request) -> web.Response:
    wl = request.app[WORKLOAD]
    return reply_object({"certificate": await wl.edge_ca.trust_bundle()})


@routes.get("/manifest-trust-bundle", since="2018-06-28")
async def manifest_trust_bundle(request: web.Request) -> web.Response:
    wl = request.app[WORKLOAD]
    return reply_object({"certificate": await wl.edge_ca.manifest_trust_bundle()})


@routes.get("/modules", since="2018-06-28")
async def list_modules(request: web.Request) -> web.Response:
    """The modules, names and status only (edgeHub reads it); who may ask is the access table's row."""
    wl = request.app[WORKLOAD]
    await wl.attestor.attest(request)  # still the process that connected
    if wl.runtime is None:
        return reply_object({"modules": []})
    return reply_object({"modules": [_listed(v) for v in await wl.runtime.list_modules()]})


def _listed(view: ModuleView) -> dict[str, Any]:
    """A module as another module may see it: name, type and status. IoT Edge's ModuleDetails requires id and
    config.settings too; they are the name and an empty object, never the module's spec: its image, createOptions
    and environment values (connection strings, credentials) are the edge agent's, through the management API."""
    details = module_details(view)
    return {"id": details["name"], "name": details["name"], "type": details["type"], "config": {"settings": {}},
            "status": details["status"]}


def build_workload_app(workload: Workload, limiter: UidLimiter | None = None) -> web.Application:
    """The workload API, behind the access table's guard (modules, and host root for the public routes)."""
    app = build_app(routes, limiter=limiter)
    serve_trailing_slash_aliases(app, (("GET", "/modules"),))  # aziot-edged's workload list answers both forms
    app[WORKLOAD] = workload
    return guard_attested_service(app, "workload", workload.attestor)
