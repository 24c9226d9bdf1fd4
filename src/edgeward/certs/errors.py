"""Domain errors of the certificates service; each maps to one HTTP status with a message safe for callers."""

from __future__ import annotations

from ..http.errors import BadRequest, HttpError, NotFound, Unauthorized

__all__ = ["CertNotFound", "InvalidCsr", "IssuanceFailed", "NotAuthorized"]


class CertNotFound(NotFound):
    pass


class InvalidCsr(BadRequest):
    pass


class NotAuthorized(Unauthorized):
    """The caller's uid is not a principal allowed to change this certificate id (aziot answers 401)."""


class IssuanceFailed(HttpError):
    """The issuer (local CA, EST server, issuer key) could not issue; the message says which and why."""

    status = 502
