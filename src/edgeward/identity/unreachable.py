"""The error of a cloud that gave no answer. Apart from the cloud transports (cloud.py) so the identity service can
tell it from a refusal without loading them."""

from __future__ import annotations

from ..http.errors import HttpError

__all__ = ["Unreachable"]


class Unreachable(HttpError):
    """The cloud gave no (complete) answer: connection refused, TLS refused, timeout. Always worth a retry."""

    status = 503
