"""HTTP handlers of the TPM API (aziot-tpmd's routes): parse -> call the service -> serialize. Nothing else.

aziot-tpmd does no per-caller authorization: whoever may open its socket (the identity service's user) may use it,
so the socket's mode and owner are the access control.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..http import RouteTable, build_app, read_body, reply
from ..http.errors import BadRequest
from ..http.limits import UidLimiter
from . import wire
from .api import TpmApi

__all__ = ["TPM_API", "build_tpm_app", "routes"]

T = TypeVar("T")

TPM_API: web.AppKey[TpmApi] = web.AppKey("edgeward.tpm.api")

routes = RouteTable(wire.API_VERSIONS)


async def _body(request: web.Request, parse: Callable[[dict[str, Any]], T]) -> T:
    # aziot-tpmd answers a POST without a body with 400 "missing request body"; other bad bodies get
    # the shared treatment (400 for bad JSON, 415 for a wrong content type, 422 for wrong fields).
    if not request.body_exists:
        raise BadRequest("missing request body")
    return await read_body(request, parse)


@routes.get("/get_tpm_keys", since="2020-09-01")
async def get_tpm_keys(request: web.Request) -> web.Response:
    keys = await request.app[TPM_API].get_tpm_keys()
    return reply(wire.GetTpmKeysResponse(keys.endorsement_key, keys.storage_root_key))


@routes.post("/import_auth_key", since="2020-09-01")
async def import_auth_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.ImportAuthKeyRequest.parse)
    await request.app[TPM_API].import_auth_key(body.key)
    return reply(wire.ImportAuthKeyResponse())


@routes.post("/sign_with_auth_key", since="2020-09-01")
async def sign_with_auth_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.SignWithAuthKeyRequest.parse)
    digest = await request.app[TPM_API].sign_with_auth_key(body.data)
    return reply(wire.SignWithAuthKeyResponse(digest))


@routes.post("/edgeward/quote", since="2026-11-01")
async def quote(request: web.Request) -> web.Response:
    """Edgeward: a quote over the PCR holding Edgeward's own measurement, for a verifier's nonce."""
    body = await _body(request, wire.QuoteRequest.parse)
    if not 0 <= body.pcr <= 23:
        raise BadRequest("pcr must be 0 to 23")
    q = await request.app[TPM_API].quote(body.nonce, body.pcr)
    return reply(wire.QuoteResponse(**q.as_dict()))


def build_tpm_app(api: TpmApi, max_requests: int | None = None, **kwargs: object) -> web.Application:
    """The TPM API over ``api``; ``max_requests`` is aziot-tpmd's per-user concurrency limit."""
    if max_requests is not None:
        kwargs["limiter"] = UidLimiter(max_in_flight=max_requests)
    app = build_app(routes, **kwargs)  # type: ignore[arg-type]
    app[TPM_API] = api
    return app
