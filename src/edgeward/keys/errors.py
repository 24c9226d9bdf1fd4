"""Domain errors of the keys service. Each maps to one HTTP status; messages are safe to show callers."""

from __future__ import annotations

from ..http.errors import BadRequest, Forbidden, HttpError, NotFound, Unauthorized

__all__ = [
    "BackendUnavailable",
    "InvalidHandle",
    "InvalidParameter",
    "KeyNotFound",
    "NotAuthorized",
    "UnsupportedOperation",
]


class InvalidHandle(Unauthorized):
    """A key handle that is forged, tampered with, from another device, expired, or names a deleted key."""


class NotAuthorized(Forbidden):
    """The caller's uid is not a principal allowed to use this key id."""

    status = 401  # aziot-keyd answers 401 for principals it does not know; clients rely on it


class KeyNotFound(NotFound):
    pass


class InvalidParameter(BadRequest):
    pass


class UnsupportedOperation(BadRequest):
    """The key exists but cannot do this (wrong algorithm, usage not granted, backend lacks the mechanism)."""


class BackendUnavailable(HttpError):
    """The HSM or TPM could not be reached; the message names the setting to check."""

    status = 503
