"""The one error the cloud clients raise, and how what the network does becomes it.

IoT Hub and DPS refuse in two dialects: IoT Hub answers ``{"Message": "ErrorCode:<Name>;<text>", "ExceptionMessage":
"Tracking ID:..."}`` with an ``iothub-errorcode: <Name>`` header (newer hubs put a JSON document with a numeric
``errorCode`` inside ``Message``); DPS answers ``{"errorCode": <6 digits>, "trackingId": ..., "message": ...,
"timestampUtc": ...}``. Both may send ``Retry-After``. :func:`error_from_response` reads either; the transport
helpers turn connection, TLS and timeout failures into a :class:`CloudError` without a status.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import yarl
from cryptography import x509

from ...certs.est import ClientIdentity, EstError, build_ssl_context

__all__ = ["MAX_RESPONSE_BYTES", "CloudError", "client_ssl_context", "error_from_response", "exchange",
           "retry_after_seconds"]

MAX_RESPONSE_BYTES = 1 << 20  # a module list of a full device is well under this; more is a misbehaving peer
_MAX_SERVER_TEXT = 300


class CloudError(Exception):
    """A refusal or failure of IoT Hub or DPS, or of the way to them.

    ``status`` is the HTTP status the service answered, or ``None`` when no answer came (connection refused, TLS
    failure, timeout, a long-running operation that did not finish in time). ``retry_after`` is the service's
    ``Retry-After`` in seconds, when it sent one (429, 503, a registration still in progress). ``error_code`` is the
    service's own code when it named one: IoT Hub's name (``IotHubUnauthorizedAccess``, ``ModuleNotFound``) or a
    DPS six-digit number (``401002``).
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


# ---------------------------------------------------------------------- reading refusals
def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date, RFC 9110 section 10.2.3); ``None`` when
    absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.fromtimestamp(time.time(), UTC)).total_seconds(), 0.0)


def error_from_response(
    service: str, method: str, url: yarl.URL, status: int, headers: Mapping[str, str], body: bytes
) -> CloudError:
    """The :class:`CloudError` for a non-2xx answer: status, the service's code and text, and its Retry-After."""
    code, text = _service_error(headers, body)
    said = f": {text}" if text else ""
    where = f"{service} at {url.host}" + (f":{url.port}" if url.port and not url.is_default_port() else "")
    message = f"{where} answered {status} to {method} {url.path}{said}"
    if status == 401:
        message += (
            "; the service did not accept the device's credentials (check the key or certificate, the registration "
            "or device id, and the clock: SAS tokens carry an expiry)"
        )
    return CloudError(message, status, retry_after_seconds(headers.get("Retry-After")), error_code=code)


def _service_error(headers: Mapping[str, str], body: bytes) -> tuple[str | None, str]:
    """(code, text) from either service's error body, falling back on the error-code headers."""
    code = headers.get("iothub-errorcode") or headers.get("x-ms-error-code") or None
    text = ""
    try:
        doc: Any = json.loads(body) if body.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        hub_message = doc.get("Message")
        if isinstance(hub_message, str):
            code, text = _hub_message(hub_message, code)
        elif "errorCode" in doc:  # DPS
            code = str(doc["errorCode"])
            text = str(doc.get("message") or doc.get("errorMessage") or "")
        elif isinstance(doc.get("message"), str):
            text = doc["message"]
    elif body.strip():
        text = body.decode("utf-8", errors="replace")
    return code, _printable(text)


def _hub_message(message: str, code: str | None) -> tuple[str | None, str]:
    try:
        nested: Any = json.loads(message)
    except ValueError:
        nested = None
    if isinstance(nested, dict):  # {"errorCode": 404010, "message": ..., "trackingId": ...}
        return str(nested.get("errorCode") or code or "") or None, str(nested.get("message") or "")
    if message.startswith("ErrorCode:"):
        name, _, rest = message[len("ErrorCode:") :].partition(";")
        return name or code, rest
    return code, message


def _printable(text: str) -> str:
    """Made safe for a log line: printable, one line, truncated."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= _MAX_SERVER_TEXT else text[: _MAX_SERVER_TEXT - 3] + "..."


# ---------------------------------------------------------------------- the way there
def client_ssl_context(
    service: str, trusted_certs: Sequence[x509.Certificate] | None, identity: ClientIdentity | None
) -> ssl.SSLContext:
    """A client TLS context trusting exactly ``trusted_certs`` (``None``: the system's defaults, as for Azure's
    public endpoints) with the device's X.509 identity loaded. The environment's ``SSL_CERT_FILE`` is not consulted
    when anchors are given, so it cannot widen who may impersonate the hub or DPS."""
    if trusted_certs is not None and not trusted_certs:
        raise CloudError(f"no trusted certificates configured for {service}; give at least one CA certificate")
    try:
        return build_ssl_context(trusted_certs, identity)
    except EstError as e:
        cause = e.__cause__ or e
        where = f" with the key in {identity.key_pem_path}" if identity and identity.key_pem_path else ""
        raise CloudError(f"cannot load the device's client certificate for {service}{where} ({cause})") from e


async def exchange(
    service: str,
    method: str,
    url: yarl.URL,
    *,
    ssl_context: ssl.SSLContext,
    headers: Mapping[str, str],
    body: bytes | None,
    timeout: float,
) -> tuple[int, Mapping[str, str], bytes]:
    """One HTTPS request on a fresh connection (cloud calls are rare; a forgotten client must not hold sockets):
    the status, headers and body (at most :data:`MAX_RESPONSE_BYTES`), or a :class:`CloudError` without a status
    when no answer came."""
    where = f"{service} at {url.host}:{url.port}"
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as session,
            session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                allow_redirects=False,  # a moved endpoint is configuration to fix, not a hop to take with credentials
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp,
        ):
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise CloudError(f"{where} sent more than {MAX_RESPONSE_BYTES} bytes", resp.status)
                chunks.append(chunk)
            return resp.status, resp.headers, b"".join(chunks)
    except aiohttp.ClientConnectorCertificateError as e:
        raise CloudError(
            f"TLS verification of {where} failed ({_describe(e.certificate_error)}); check that the configured "
            "trusted certificates include the CA that issued its certificate"
        ) from e
    except aiohttp.ClientSSLError as e:
        raise CloudError(f"TLS handshake with {where} failed ({_describe(e)})") from e
    except aiohttp.ClientConnectorError as e:
        raise CloudError(f"could not connect to {where} ({_describe(e.os_error)})") from e
    except TimeoutError as e:
        raise CloudError(f"{where} did not answer within {timeout:g} s") from e
    except (aiohttp.ClientError, OSError) as e:
        raise CloudError(f"could not talk to {where} ({_describe(e)})") from e


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
