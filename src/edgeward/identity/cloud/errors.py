"""The one error the cloud clients raise: what went wrong, the service's HTTP status, and when to try again."""

from __future__ import annotations

__all__ = ["CloudError"]


class CloudError(Exception):
    """A refusal or failure of IoT Hub or DPS, or of the way to them.

    ``status`` is the HTTP status the service answered, or ``None`` when no answer came (connection refused, TLS
    failure, timeout). ``retry_after`` is the service's ``Retry-After`` in seconds, when it sent one (429, 503, or a
    long-running operation). ``error_code`` is the service's own code when it named one: IoT Hub's name
    (``IotHubUnauthorizedAccess``, ``ModuleNotFound``) or DPS's six-digit number (``401002``).
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        error_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.error_code = error_code

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later: no answer, throttling (429) or a server-side failure (5xx)."""
        return self.status is None or self.status == 429 or self.status >= 500

    def __repr__(self) -> str:
        return (
            f"CloudError({self.message!r}, status={self.status!r}, retry_after={self.retry_after!r}, "
            f"error_code={self.error_code!r})"
        )
