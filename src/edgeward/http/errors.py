"""Errors that cross the wire as ``{"message": ...}`` bodies.

Services raise :class:`HttpError` subclasses (or domain errors mapped to them); the error middleware turns them into
the aziot error shape. Anything else becomes a 500 whose details stay in the log, never in the response.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "HttpError",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
]


class HttpError(Exception):
    """An error with an HTTP status and a message safe to show the caller."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(HttpError):
    status = 400


class Unauthorized(HttpError):
    status = 401


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class Conflict(HttpError):
    status = 409


class PayloadTooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    status = 415


class UnprocessableEntity(HttpError):
    status = 422


class TooManyRequests(HttpError):
    status = 429
