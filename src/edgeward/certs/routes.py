"""HTTP handlers of the certificates API: parse -> call the service as the caller -> serialize."""

from __future__ import annotations

from aiohttp import web

from ..http import RouteTable, build_app, caller_of, read_body, reply, reply_empty
from ..http.errors import BadRequest
from . import wire
from .api import CertsApi
from .errors import CertNotFound
from .service import CertService

__all__ = ["CERTS_SERVICE", "build_certs_app", "routes"]

CERTS_SERVICE = web.AppKey("edgeward.certs.service", CertService)

routes = RouteTable(wire.API_VERSIONS)


def _api(request: web.Request) -> CertsApi:
    return request.app[CERTS_SERVICE].for_caller(caller_of(request))


@routes.post("/certificates", since="2020-09-01")
async def create_cert(request: web.Request) -> web.Response:
    if not request.body_exists:
        raise BadRequest("missing request body")  # aziot-certd's answer to a POST without a body
    body = await read_body(request, wire.CreateCertRequest.parse)
    issuer = (body.issuer.cert_id, body.issuer.private_key_handle) if body.issuer else None
    pem = await _api(request).create_cert(body.cert_id, body.csr.encode(), issuer)
    return reply(wire.PemResponse(pem), status=wire.CREATED)


@routes.put("/certificates/{certId}", since="2020-09-01")
async def import_cert(request: web.Request) -> web.Response:
    body = await read_body(request, wire.ImportCertRequest.parse)
    pem = await _api(request).import_cert(request.match_info["certId"], body.pem)
    return reply(wire.PemResponse(pem), status=wire.CREATED)


@routes.get("/certificates/{certId}", since="2020-09-01")
async def get_cert(request: web.Request) -> web.Response:
    try:
        pem = await _api(request).get_cert(request.match_info["certId"])
    except CertNotFound as e:  # the domain's "not found" is a 400 on aziot's wire
        raise BadRequest(wire.missing_cert_message(e.message)) from None
    return reply(wire.PemResponse(pem))


@routes.delete("/certificates/{certId}", since="2020-09-01")
async def delete_cert(request: web.Request) -> web.Response:
    """204 whether or not the cert existed, as aziot-certd (its client's ``no_content_response`` takes only 204)."""
    await _api(request).delete_cert(request.match_info["certId"])
    return reply_empty()


def build_certs_app(service: CertService, **kwargs: object) -> web.Application:
    app = build_app(routes, **kwargs)  # type: ignore[arg-type]
    app[CERTS_SERVICE] = service
    return app
