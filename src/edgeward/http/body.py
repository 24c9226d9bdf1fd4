"""Request bodies in, response bodies out: the only place JSON meets the typed wire bodies.

The wire types check their fields by hand (:mod:`.wirefields`) and write their own JSON, so no daemon loads a
validation library.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from .errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType
from .wirefields import InvalidBody, JsonBody

__all__ = ["JsonBody", "read_body", "read_json_object", "reply", "reply_empty", "reply_json", "reply_object"]

T = TypeVar("T")

_JSON_TYPES = frozenset({"application/json", "text/json"})


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body, for bodies validated by hand (where every problem is reported at once).

    A missing Content-Type is accepted because the Azure IoT Python SDK sends none; a wrong one is a 415.
    """
    declared = request.headers.get("Content-Type")
    if declared is not None and declared not in _JSON_TYPES and request.content_type not in _JSON_TYPES:
        raise UnsupportedMediaType(f"expected an application/json body, got {request.content_type!r}")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):  # serde_json reads UTF-8 only
        raise UnsupportedMediaType(f"expected a UTF-8 body, got charset {charset[:40]!r}")
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":  # aziot's services decode no content coding either; RFC 9110 15.5.16 says 415
        raise UnsupportedMediaType(f"Content-Encoding {coding[:40]!r} is not supported; send the body as is")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge(f"request body exceeds the limit of {request.app._client_max_size} bytes") from e
    if not raw:
        raise UnprocessableEntity("request body is empty; a JSON object is required")
    _refuse_shapeless(raw)
    try:
        # decoded here, strictly: json.loads on bytes would also take UTF-16 and UTF-32, which serde_json does not
        data = _decode(raw.decode())
    except _NumberTooLong:
        raise BadRequest("request body holds a number too long to read") from None
    except _TooManyFloats:
        raise BadRequest(f"request body holds more numbers with a fraction or an exponent than any API takes (more "
                         f"than {MAX_FLOATS})") from None
    except _DuplicateField as e:
        raise UnprocessableEntity(f"invalid request body: duplicate field `{e.name}`") from None
    except _NotJsonConstant as e:
        raise BadRequest(f"request body is not valid JSON: {e.name} is not a JSON value") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise BadRequest("request body is not valid UTF-8 JSON") from e
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack: hostile, never a 500
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise UnprocessableEntity("request body must be a JSON object")
    # "\ud800": json.loads takes it; serde_json refuses it (aziot: 422, as any body its serde cannot read), and
    # UTF-8 cannot hold it
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise UnprocessableEntity("invalid request body: a lone surrogate escape is not a character")
    return data


# The most JSON objects and arrays a body may hold, and the most separators (',': one fewer than the values of an
# array or the members of an object). The largest bodies any API takes (a module spec: its env as one object per
# variable, its createOptions; aziot's key, cert and identity bodies hold a handful) hold tens to a few thousand; a
# bracket or comma inside a string counts too, so the bounds sit far above them.
MAX_CONTAINERS = 16_384
MAX_SEPARATORS = 16_384

# Only a \u escape of a surrogate (U+D800-U+DFFF) can put a lone surrogate in a decoded body: the raw body is
# strict UTF-8, which cannot hold one. A body without such an escape (or with an escaped backslash before "ud8..",
# which this over-matches) skips the walk over every decoded value.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_shapeless(raw: bytes) -> None:
    """Refuse, before decoding, a body of more objects, arrays or values than any API takes: 1 MB of "{}," is 340,000
    objects, each a call of the duplicate-field hook on the event loop (~100 ms a body, h/brk13a a09), where
    counting the brackets at C speed costs ~0.1 ms. An over-count (brackets inside strings) only ever refuses
    bodies near the bound, which no caller sends."""
    count = raw.count(b"{") + raw.count(b"[")
    if count > MAX_CONTAINERS:
        raise BadRequest(f"request body holds more JSON objects and arrays than any API takes (more than "
                         f"{MAX_CONTAINERS})")
    # 1 MB of "1," is 520,000 numbers: ~26 ms to decode and ~100 ms for the surrogate walk, on the event loop
    if raw.count(b",") > MAX_SEPARATORS:
        raise BadRequest(f"request body holds more JSON values than any API takes (more than {MAX_SEPARATORS} "
                         f"separated values)")


def _has_lone_surrogate(data: dict[str, Any]) -> bool:
    """Whether any key or string of ``data`` holds a lone surrogate (walked with a stack: no recursion limit)."""
    stack: list[Any] = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


class _DuplicateField(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object naming a field twice is refused (aziot's serde refuses it too): with the last one winning, two
    readers of one body, a proxy or a log and the service, could take it for two different requests."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateField(name[:64])
            seen.add(name)
    return data


# The widest integer any field of any API holds is a u64 (20 digits), and no field is a float. int() of decimal
# text is quadratic: 232 integers of 4,299 digits (int()'s own limit is 4,300) held the loop ~16.6 ms a body
# (h/brk14a F2). A double needs at most 17 significant digits (24 characters with sign and exponent), but float()
# of a long mantissa near a rounding boundary costs ~26 us (1 MB: ~35 ms), and even a short subnormal or
# underflowing literal costs ~0.5 us (16,384 of them: ~9 ms): so float literals are bounded in length and number.
MAX_INTEGER_DIGITS = 20
MAX_FLOAT_CHARS = 40
MAX_FLOATS = 1_024


class _NumberTooLong(Exception):
    pass


class _TooManyFloats(Exception):
    pass


# floats read so far in the body being decoded on this thread (a decode runs start to end on one thread)
_floats = threading.local()


def _read_int(text: str) -> int:
    """An integer literal, its length checked before int() reads it (the scanner hands over -?[0-9]+)."""
    if len(text) > MAX_INTEGER_DIGITS and len(text) - text.startswith("-") > MAX_INTEGER_DIGITS:
        raise _NumberTooLong
    return int(text)


def _read_float(text: str) -> float:
    """A literal with a fraction or an exponent, its length and the body's count of them checked first."""
    if len(text) > MAX_FLOAT_CHARS:
        raise _NumberTooLong
    _floats.count += 1
    if _floats.count > MAX_FLOATS:
        raise _TooManyFloats
    return float(text)


# One decoder for every body: json.loads with a hook builds a new JSONDecoder per call, about half of a small
# body's decoding time.
class _NotJsonConstant(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity: Python's decoder takes them, JSON (and serde_json) does not, and a stored one
    would make every later answer that echoes it unreadable to strict clients (h/brk14c F3)."""
    raise _NotJsonConstant(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_duplicates, parse_int=_read_int, parse_float=_read_float,
                            parse_constant=_refuse_constant)


def _decode(text: str) -> Any:
    _floats.count = 0
    return _DECODER.decode(text)


async def read_body(request: web.Request, parse: Callable[[dict[str, Any]], T]) -> T:
    """A JSON object body checked by a wire type's ``parse``: every field at fault is one 422."""
    data = await read_json_object(request)
    try:
        return parse(data)
    except InvalidBody as e:
        raise UnprocessableEntity(str(e)) from None


def reply(body: JsonBody, status: int = 200) -> web.Response:
    return reply_json(body.to_json(), status)


def reply_json(body: bytes, status: int = 200) -> web.Response:
    """A body already serialized as JSON, typed exactly ``application/json`` (no charset parameter), as aziot's and
    edgelet's http-common answer: aziot's synchronous clients take anything else for a malformed response."""
    return web.Response(status=status, body=body, content_type="application/json")


def reply_object(data: object, status: int = 200) -> web.Response:
    """``data`` as a JSON body (aiohttp's json_response would add "; charset=utf-8" to the type)."""
    return reply_json(json.dumps(data).encode(), status)


def reply_empty() -> web.Response:
    return web.Response(status=204)
