"""Request bodies in, response bodies out: the only place JSON meets the typed wire models.

pydantic is imported only by the functions that take its models (identity, certs, tpm): the keys service validates
its bodies by hand and answers with :func:`reply_json`, so a daemon serving only keys never loads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from .errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

__all__ = ["read_body", "read_json_object", "reply", "reply_empty", "reply_json"]

M = TypeVar("M", bound="BaseModel")

_JSON_TYPES = frozenset({"application/json", "text/json"})


def _describe(error: ValidationError) -> str:
    # Field paths and reasons only: input values may be secrets (key bytes, PINs) and must not be echoed.
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "invalid request body: " + "; ".join(parts)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body, for bodies validated by hand (where every problem is reported at once).

    A missing Content-Type is accepted because the Azure IoT Python SDK sends none; a wrong one is a 415.
    """
    declared = request.headers.get("Content-Type")
    if declared is not None and declared not in _JSON_TYPES and request.content_type not in _JSON_TYPES:
        raise UnsupportedMediaType(f"expected an application/json body, got {request.content_type!r}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge(f"request body exceeds the limit of {request.app._client_max_size} bytes") from e
    if not raw:
        raise UnprocessableEntity("request body is empty; a JSON object is required")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise BadRequest("request body is not valid UTF-8 JSON") from e
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack: hostile, never a 500
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise UnprocessableEntity("request body must be a JSON object")
    return data


async def read_body(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body against a wire model."""
    from pydantic import ValidationError  # noqa: PLC0415 -- only services with pydantic models pay for it

    data = await read_json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UnprocessableEntity(_describe(e)) from e


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json(by_alias=True, exclude_none=True).encode(),
        content_type="application/json",
    )


def reply_json(body: bytes, status: int = 200) -> web.Response:
    """A body already serialized as JSON."""
    return web.Response(status=status, body=body, content_type="application/json")


def reply_empty() -> web.Response:
    return web.Response(status=204)
