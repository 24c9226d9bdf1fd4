"""Shared HTTP plumbing: aiohttp over Unix sockets, api-version, the error shape, caller credentials, limits."""

from .apiversion import ApiVersions, check_api_version
from .body import read_body, read_json_object, reply, reply_empty, reply_json
from .client import UnixClient, quote_segment
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HttpError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from .limits import UidLimiter
from .peercred import Caller, caller_of, peer_credentials
from .server import DEFAULT_MAX_BODY, Listener, RouteTable, build_app, start_server

__all__ = [
    "DEFAULT_MAX_BODY",
    "ApiVersions",
    "BadRequest",
    "Caller",
    "Conflict",
    "Forbidden",
    "HttpError",
    "Listener",
    "NotFound",
    "PayloadTooLarge",
    "RouteTable",
    "TooManyRequests",
    "UidLimiter",
    "Unauthorized",
    "UnixClient",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "build_app",
    "caller_of",
    "check_api_version",
    "peer_credentials",
    "quote_segment",
    "read_body",
    "read_json_object",
    "reply",
    "reply_empty",
    "reply_json",
    "start_server",
]
