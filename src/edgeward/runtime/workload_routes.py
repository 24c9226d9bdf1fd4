"""HTTP handlers of IoT Edge's workload API: every module, for itself only.

Each handler first attests the caller for the module named in the path (and its generation, where the route
names one); the module's keys, certificates and trust bundle follow from that registration, never from the path.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..attest.pipeline import AttestationRefused, Attestor
from ..http import RouteTable, build_app, read_json_object
from ..http.errors import BadRequest, HttpError, UnprocessableEntity
from ..http.limits import UidLimiter
from ..keys.api import KeysApi
from ..keys.model import Aead, HmacSha256
from ..runtime.registry import Registration
from .edge_ca import EdgeCa, IssuedCert
from .identities import module_key_handle
from .mgmt_wire import module_details
from .model import valid_module_name
from .service import ModuleRuntime
from .sockets import WorkloadSockets

__all__ = ["API_VERSIONS", "WORKLOAD", "Workload", "build_workload_app", "routes"]

API_VERSIONS = ("2018-06-28", "2019-01-30", "2019-10-22", "2019-11-05", "2020-07-07", "2021-12-07", "2022-08-03")
ENCRYPTION_KEY_ID = "edgeward-workload-encryption"
MAX_DATA = 64 * 1024  # bytes of a sign/encrypt payload, decoded

routes = RouteTable(API_VERSIONS)


@dataclass
class Workload:
    attestor: Attestor
    sockets: WorkloadSockets
    keys: KeysApi
    edge_ca: EdgeCa
    hostname: str
    # Key handles of module SAS keys, by (module, generation, keyId): deriving one costs two keys-service calls,
    # and a handle stays valid as long as the master key does.
    handles: dict[tuple[str, str, str], str] = field(default_factory=dict)
    runtime: ModuleRuntime | None = None  # for GET /modules; set once the runtime exists


WORKLOAD = web.AppKey("edgeward.runtime.workload", Workload)


async def _module(request: web.Request, with_generation: bool) -> tuple[Workload, Registration]:
    wl = request.app[WORKLOAD]
    name = request.match_info["name"]
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
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    key_id = _str(body, "keyId")
    algo = _str(body, "algo")
    if algo != "HMACSHA256":
        raise BadRequest(f"algo {str(algo)[:40]!r} is not supported; expected HMACSHA256")
    data = _b64(body, "data")
    assert key_id is not None
    cache_key = (reg.name, reg.generation_id, key_id)
    handle = wl.handles.get(cache_key)
    if handle is None:
        if len(wl.handles) > 4096:  # old generations of removed modules
            wl.handles.clear()
        handle = wl.handles[cache_key] = await module_key_handle(wl.keys, reg.name, reg.generation_id, key_id)
    try:
        digest = await wl.keys.sign(handle, HmacSha256(data))
    except HttpError as e:
        if e.status != 401:
            raise
        # The master key was replaced since the handle was made: derive again.
        handle = wl.handles[cache_key] = await module_key_handle(wl.keys, reg.name, reg.generation_id, key_id)
        digest = await wl.keys.sign(handle, HmacSha256(data))
    return web.json_response({"digest": base64.b64encode(digest).decode()})


async def _encryption(wl: Workload, reg: Registration, body: dict[str, Any]) -> tuple[str, Aead]:
    """One AES-256-GCM key for the workload API, with the module and its generation as associated data, so a
    ciphertext only opens for the module (and generation) that sealed it."""
    iv = _b64(body, "initializationVector", 128)
    handle = await wl.keys.create_key_if_not_exists(ENCRYPTION_KEY_ID, "encrypt")
    return handle, Aead(iv, f"{reg.name}{reg.generation_id}".encode())


@routes.post("/modules/{name}/genid/{genid}/encrypt", since="2018-06-28")
async def encrypt(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    plaintext = _b64(body, "plaintext")
    handle, mechanism = await _encryption(wl, reg, body)
    sealed = await wl.keys.encrypt(handle, mechanism, plaintext)
    return web.json_response({"ciphertext": base64.b64encode(sealed).decode()})


@routes.post("/modules/{name}/genid/{genid}/decrypt", since="2018-06-28")
async def decrypt(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    ciphertext = _b64(body, "ciphertext", MAX_DATA + 64)
    handle, mechanism = await _encryption(wl, reg, body)
    opened = await wl.keys.decrypt(handle, mechanism, ciphertext)
    return web.json_response({"plaintext": base64.b64encode(opened).decode()})


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
    return {"privateKey": {"type": "key", "bytes": cert.private_key_pem}, "certificate": cert.certificate_pem,
            "expiration": cert.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}


@routes.post("/modules/{name}/certificate/identity", since="2018-06-28")
async def identity_certificate(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=False)
    body = await read_json_object(request)
    cert = await wl.edge_ca.issue(reg.name, server=False, expiration=_expiration(body))
    return web.json_response(_certificate_body(cert), status=201)


@routes.post("/modules/{name}/genid/{genid}/certificate/server", since="2018-06-28")
async def server_certificate(request: web.Request) -> web.Response:
    wl, reg = await _module(request, with_generation=True)
    body = await read_json_object(request)
    common_name = _str(body, "commonName")
    assert common_name is not None
    if len(common_name) > 64:
        raise BadRequest("commonName must be at most 64 characters (the X.509 limit)")
    names = (common_name, reg.name, wl.hostname)
    cert = await wl.edge_ca.issue(common_name, server=True, dns_names=names, expiration=_expiration(body))
    return web.json_response(_certificate_body(cert), status=201)


@routes.get("/trust-bundle", since="2018-06-28")
async def trust_bundle(request: web.Request) -> web.Response:
    wl = request.app[WORKLOAD]
    return web.json_response({"certificate": await wl.edge_ca.trust_bundle()})


@routes.get("/manifest-trust-bundle", since="2018-06-28")
async def manifest_trust_bundle(request: web.Request) -> web.Response:
    wl = request.app[WORKLOAD]
    return web.json_response({"certificate": await wl.edge_ca.manifest_trust_bundle()})


@routes.get("/modules", since="2018-06-28")
async def list_modules(request: web.Request) -> web.Response:
    """The modules, as the management API lists them (edgeHub reads it); for modules and root, not for any
    host process that happens to reach a socket."""
    wl = request.app[WORKLOAD]
    got = await wl.attestor.attest(request)
    if got.registration is None and got.caller.uid not in (0, os.getuid()):
        raise AttestationRefused("container_of", f"process {got.caller.pid} (uid {got.caller.uid}) is not a module")
    if wl.runtime is None:
        return web.json_response({"modules": []})
    return web.json_response({"modules": [module_details(v) for v in await wl.runtime.list_modules()]})


def build_workload_app(workload: Workload, limiter: UidLimiter | None = None) -> web.Application:
    app = build_app(routes, limiter=limiter)
    app[WORKLOAD] = workload
    return app
