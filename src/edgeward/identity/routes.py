"""HTTP handlers of the identity API: parse -> authorize the caller -> call the service -> serialize."""

from __future__ import annotations

from aiohttp import web

from ..certs.errors import CertNotFound
from ..http import RouteTable, build_app, caller_of, read_body, read_json_object, reply_empty
from ..http.body import reply_object
from ..http.errors import BadRequest
from . import wire
from .service import IdentityService

__all__ = ["IDENTITY_SERVICE", "build_identity_app", "routes"]

IDENTITY_SERVICE = web.AppKey("edgeward.identity.service", IdentityService)
TRUST_BUNDLE = web.AppKey("edgeward.identity.trust_bundle", str)

routes = RouteTable(wire.API_VERSIONS)


def _svc(request: web.Request) -> IdentityService:
    return request.app[IDENTITY_SERVICE]


def _daemon(request: web.Request) -> IdentityService:
    svc = _svc(request)
    svc.require_daemon(caller_of(request))
    return svc


def _invalid(parameter: str, reason: str) -> BadRequest:
    """aziot-identityd's InvalidParameter: a 400 naming the parameter, then the reason."""
    return BadRequest(f'parameter "{parameter}" has an invalid value\ncaused by: {reason}')


def _type(request: web.Request, allowed: tuple[str, ...] = ("aziot",)) -> str:
    """The ``type`` query parameter, which aziot's module routes require (its client always sends it); checked
    after the caller is authorized, as aziot does."""
    t = request.query.get("type")
    if t is None:
        raise _invalid("type", "missing parameter")
    if t not in allowed:
        raise _invalid("type", f"invalid type: {t}")
    return t


@routes.get("/identities/identity", since="2020-09-01")
async def caller_identity(request: web.Request) -> web.Response:
    return reply_object(wire.identity_body(await _svc(request).caller_identity(caller_of(request))))


@routes.get("/identities/provisioning", since="2021-12-01")
async def provisioning(request: web.Request) -> web.Response:
    """aziot-identityd serves this to any caller; Edgeward to any principal of the service (no secrets in it)."""
    svc = _svc(request)
    svc.require_principal(caller_of(request))
    return reply_object(wire.provisioning_body(await svc.provisioning_info()))


@routes.post("/identities/device", since="2020-09-01")
async def device_identity(request: web.Request) -> web.Response:
    """aziot's GetDevice: a daemon, or a host principal whose idtype holds "device"; the body (``{type}``) is
    required but its type is not otherwise used."""
    svc = _svc(request)
    svc.may_read_device(caller_of(request))
    if not request.body_exists:
        raise BadRequest("missing request body")
    await read_body(request, wire.IdTypeRequest.parse)
    return reply_object(wire.identity_body(await svc.device_identity()))


@routes.post("/identities/device/reprovision", since="2020-09-01")
async def reprovision(request: web.Request) -> web.Response:
    """aziot ignores the body (its client sends ``{"type": "aziot"}``); daemons only."""
    svc = _daemon(request)
    if request.body_exists:
        await read_json_object(request)
    await svc.reprovision()
    return reply_empty()


@routes.get("/identities/modules", since="2020-09-01")
async def list_modules(request: web.Request) -> web.Response:
    svc = _daemon(request)
    _type(request)
    return reply_object({"identities": [wire.identity_body(i) for i in await svc.list_modules()]})


@routes.post("/identities/modules", since="2020-09-01")
async def create_module(request: web.Request) -> web.Response:
    svc = _daemon(request)
    body = await read_body(request, wire.CreateModuleRequest.parse)
    if body.type not in ("aziot", "local"):
        raise _invalid("type", f"invalid type: {body.type}")
    if body.type == "local":
        if body.module_id in svc.local_principal_names():  # its identity is the principal's, read by GET
            raise _invalid("moduleId", f"local identity for {body.module_id} already exists")
        opts = body.local_id_opts or wire.LocalIdOpts()
        identity = await svc.local_identity(body.module_id, server=opts.attributes == "server")
        return reply_object(wire.identity_body(identity))
    return reply_object(wire.identity_body(await svc.create_module(body.module_id)))


@routes.get("/identities/modules/{moduleId}", since="2020-09-01")
async def get_module(request: web.Request) -> web.Response:
    """A daemon reads any module identity; a host principal (idtype module or local) only its own, by its name."""
    svc = _svc(request)
    module_id = request.match_info["moduleId"]
    principal = svc.may_read_module(caller_of(request), module_id)
    if _type(request, ("aziot", "local")) == "local":
        local = svc.local_principal(module_id)
        if local is None:
            raise _invalid("moduleId", f"local identity for {module_id} doesn't exist")
        return reply_object(wire.identity_body(await svc.local_identity(module_id,
                                                                              server=local.local_server)))
    if principal.idtype is not None:  # a host principal: the hub identity made for it, never a namesake's
        return reply_object(wire.identity_body(await svc.own_hub_module(principal)))
    return reply_object(wire.identity_body(await svc.get_module(module_id)))


@routes.put("/identities/modules/{moduleId}", since="2020-09-01")
async def update_module(request: web.Request) -> web.Response:
    """aziot: the module comes from the path and ``type`` from the query; the body (the client sends ``{type,
    moduleId}``, the docs also ``{}``) is not used, but a moduleId in it must be the path's."""
    svc = _daemon(request)
    module_id = request.match_info["moduleId"]
    _type(request)
    body = await read_json_object(request) if request.body_exists else {}
    if body.get("moduleId", module_id) != module_id:
        raise BadRequest("moduleId in the body differs from the one in the path")
    return reply_object(wire.identity_body(await svc.update_module(module_id)))


@routes.delete("/identities/modules/{moduleId}", since="2020-09-01")
async def delete_module(request: web.Request) -> web.Response:
    svc = _daemon(request)
    _type(request)
    await svc.delete_module(request.match_info["moduleId"])
    return reply_empty()


@routes.get("/trust-bundle", since="2020-09-01")
async def trust_bundle(request: web.Request) -> web.Response:
    """Every caller may read the trust bundle: it holds only public CA certificates."""
    svc = _svc(request)
    try:
        pem = await svc.certs.get_cert(request.app[TRUST_BUNDLE])
    except CertNotFound:  # none configured: aziot-identityd's answer, an empty bundle
        pem = ""
    return reply_object({"certificate": pem})


def build_identity_app(service: IdentityService, trust_bundle_cert: str = "trust-bundle",
                       **kwargs: object) -> web.Application:
    app = build_app(routes, **kwargs)  # type: ignore[arg-type]
    app[IDENTITY_SERVICE] = service
    app[TRUST_BUNDLE] = trust_bundle_cert
    return app
