"""HTTP handlers of the keys API: parse -> call the service as the caller -> serialize. Nothing else."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..digits import number_or_none
from ..http import RouteTable, build_app, caller_of, read_json_object, reply_empty, reply_json
from ..http.errors import BadRequest, UnprocessableEntity
from ..http.server import Handler
from . import wire
from .api import KeysApi
from .errors import KeyNotFound
from .service import KeyService

__all__ = ["KEYS_SERVICE", "build_keys_app", "routes"]

KEYS_SERVICE = web.AppKey("edgeward.keys.service", KeyService)

OURS = wire.EDGEWARD_VERSION
T = TypeVar("T")
R = TypeVar("R")  # a parsed request body
M = TypeVar("M")  # the mechanism it names


class _AziotRoutes(RouteTable):
    """Every handler answers a missing key as aziot-keyd does: 400 naming the parameter (the domain keeps its
    KeyNotFound, a 404, for Edgeward's own callers; the client maps the 400 back)."""

    def route(self, method: str, path: str, since: str, until: str | None = None) -> Callable[[Handler], Handler]:
        register = super().route(method, path, since, until)

        def wrap(handler: Handler) -> Handler:
            @functools.wraps(handler)
            async def answered(request: web.Request) -> web.StreamResponse:
                try:
                    return await handler(request)
                except KeyNotFound as e:
                    raise BadRequest(wire.missing_key_message(e.message)) from None

            return register(answered)

        return wrap


routes = _AziotRoutes(wire.API_VERSIONS)


async def _body(request: web.Request, parse: Callable[[dict[str, Any]], T]) -> T:
    """aziot-keyd answers a POST or DELETE without a body with 400 "missing request body", whatever its type."""
    if not request.body_exists:
        raise BadRequest("missing request body")
    data = await read_json_object(request)
    try:
        return parse(data)
    except wire.InvalidBody as e:
        raise UnprocessableEntity(str(e)) from None


def _mechanism(read: Callable[[R, str], M], body: R, request: web.Request) -> M:
    """The body's algorithm and parameters: what aziot's serde reads with the body, so a 422 as a body error is."""
    try:
        return read(body, request.query["api-version"])
    except wire.InvalidBody as e:
        raise UnprocessableEntity(str(e)) from None


def _api(request: web.Request) -> KeysApi:
    return request.app[KEYS_SERVICE].for_caller(caller_of(request))


def _ours(request: web.Request) -> bool:
    """Under Edgeward's own api-version (its extensions: handle lifetimes), not aziot-keyd's."""
    return request.query.get("api-version", "") >= OURS


def _ttl(request: web.Request, ttl: int | None) -> int | None:
    # Handle lifetimes are an Edgeward extension: older api-versions keep aziot's non-expiring handles.
    return ttl if _ours(request) else None


def _query_ttl(request: web.Request) -> int | None:
    """``?handleTtlSeconds=``: looked at only under Edgeward's api-version (aziot-keyd has no such parameter and
    ignores it, as it ignores every parameter it does not know); there, anything but whole seconds is a 400."""
    raw = request.query.get("handleTtlSeconds")
    if raw is None or not _ours(request):
        return None
    ttl = number_or_none(raw)
    if ttl is None:
        raise BadRequest(f"handleTtlSeconds must be a whole number of seconds, got {raw[:20]!r}")
    return ttl


@routes.post("/keypair", since="2020-09-01")
async def create_key_pair(request: web.Request) -> web.Response:
    body = await _body(request, wire.CreateKeyPairRequest.parse)
    handle = await _api(request).create_key_pair_if_not_exists(
        body.key_id, body.preferred_algorithms, _ttl(request, body.handle_ttl_seconds)
    )
    return reply_json(wire.KeyHandleResponse(key_handle=handle).to_json())


@routes.get("/keypair/{keyId}", since="2020-09-01")
async def load_key_pair(request: web.Request) -> web.Response:
    handle = await _api(request).load_key_pair(request.match_info["keyId"], _query_ttl(request))
    return reply_json(wire.KeyHandleResponse(key_handle=handle).to_json())


async def _move(request: web.Request, dst: str | None) -> web.Response:
    body = await _body(request, wire.MoveKeyPairRequest.parse)
    target = body.dst if body.dst is not None else dst
    if target is None:
        raise UnprocessableEntity("invalid request body: to: Field required")
    if target == body.src:
        raise BadRequest("source and destination for move are identical")
    await _api(request).move_key_pair(body.src, target)
    return reply_empty()


@routes.post("/keypair/move", since="2020-09-01")
async def move_key_pair(request: web.Request) -> web.Response:
    """The documented form, ``{from, to}``; a body without ``to`` moves into the key id "move" (aziot's form)."""
    return await _move(request, "move")


@routes.post("/keypair/{keyId}", since="2020-09-01")
async def move_key_pair_into(request: web.Request) -> web.Response:
    """aziot-keyd's form: ``POST /keypair/{to}`` with ``{from}``."""
    return await _move(request, request.match_info["keyId"])


@routes.delete("/keypair", since="2020-09-01")
async def delete_key_pair(request: web.Request) -> web.Response:
    body = await _body(request, wire.KeyHandleRequest.parse)
    await _api(request).delete_key_pair(body.key_handle)
    return reply_empty()


@routes.post("/parameters/{parameterName}", since="2020-09-01")
async def get_parameter(request: web.Request) -> web.Response:
    body = await _body(request, wire.KeyHandleRequest.parse)
    value = await _api(request).get_key_pair_public_parameter(body.key_handle, request.match_info["parameterName"])
    return reply_json(wire.ParameterResponse(value=value).to_json())


@routes.post("/key", since="2020-09-01")
async def create_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.CreateKeyRequest.parse)
    api, ttl = _api(request), _ttl(request, body.handle_ttl_seconds)
    if body.key_bytes is not None:
        handle = await api.import_key(body.key_id, body.key_bytes, body.usage, ttl)
    else:
        if body.length_bytes is not None and body.length_bytes != 32:
            raise UnprocessableEntity("lengthBytes: only 32-byte keys are generated (HMAC-SHA256, AES-256-GCM)")
        handle = await api.create_key_if_not_exists(body.key_id, body.usage or "derive,sign", ttl)
    return reply_json(wire.KeyHandleResponse(key_handle=handle).to_json())


@routes.get("/key/{keyId}", since="2020-09-01")
async def load_key(request: web.Request) -> web.Response:
    handle = await _api(request).load_key(request.match_info["keyId"], None)
    return reply_json(wire.KeyHandleResponse(key_handle=handle).to_json())


@routes.delete("/key", since="2020-09-01")
async def delete_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.KeyHandleRequest.parse)
    await _api(request).delete_key(body.key_handle)
    return reply_empty()


@routes.post("/derivedkey", since="2020-09-01")
async def create_derived_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.DeriveKeyRequest.parse)
    handle = await _api(request).create_derived_key(body.base_handle, body.derivation_data)
    return reply_json(wire.KeyHandleResponse(key_handle=handle).to_json())


@routes.post("/derivedkey/export", since="2020-09-01")
async def export_derived_key(request: web.Request) -> web.Response:
    body = await _body(request, wire.KeyHandleRequest.parse)
    key = await _api(request).export_derived_key(body.key_handle)
    return reply_json(wire.ExportDerivedKeyResponse(key=key).to_json())


@routes.post("/sign", since="2020-09-01")
async def sign(request: web.Request) -> web.Response:
    body = await _body(request, wire.SignRequest.parse)
    mechanism = _mechanism(wire.sign_mechanism, body, request)
    signature = await _api(request).sign(body.key_handle, mechanism)
    return reply_json(wire.SignResponse(signature=signature).to_json())


@routes.post("/encrypt", since="2020-09-01")
async def encrypt(request: web.Request) -> web.Response:
    body = await _body(request, wire.CryptRequest.parse)
    if body.plaintext is None:
        raise UnprocessableEntity("invalid request body: plaintext: Field required")
    mechanism = _mechanism(wire.encrypt_mechanism, body, request)
    ciphertext = await _api(request).encrypt(body.key_handle, mechanism, body.plaintext)
    return reply_json(wire.CiphertextResponse(ciphertext=ciphertext).to_json())


@routes.post("/decrypt", since="2020-09-01")
async def decrypt(request: web.Request) -> web.Response:
    body = await _body(request, wire.CryptRequest.parse)
    if body.ciphertext is None:
        raise UnprocessableEntity("invalid request body: ciphertext: Field required")
    mechanism = _mechanism(wire.encrypt_mechanism, body, request)
    plaintext = await _api(request).decrypt(body.key_handle, mechanism, body.ciphertext)
    return reply_json(wire.PlaintextResponse(plaintext=plaintext).to_json())


def build_keys_app(service: KeyService, **kwargs: object) -> web.Application:
    app = build_app(routes, **kwargs)  # type: ignore[arg-type]
    app[KEYS_SERVICE] = service
    return app
