"""IoT Hub shared access signatures: ``SharedAccessSignature sr=<resource>&sig=<b64 HMAC>&se=<expiry>``.

The resource is the lower-cased audience (``<hub>/devices/<device>``) percent-encoded; the signed string is
``<resource>\\n<expiry>``; the HMAC-SHA256 is computed by a signer so the key can stay in the keys service.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, quote_plus

__all__ = ["SasError", "SasToken", "Signer", "device_audience", "make_token", "parse_token", "verify_token"]

Signer = Callable[[bytes], Awaitable[bytes]]


class SasError(ValueError):
    pass


def _encode(resource: str) -> str:
    return quote(resource.lower(), safe="")


def device_audience(hub: str, device_id: str) -> str:
    return f"{hub}/devices/{device_id}"


async def make_token(audience: str, sign: Signer, ttl_seconds: int = 3600, now: float | None = None) -> str:
    expiry = str(int((time.time() if now is None else now) + ttl_seconds))
    resource = _encode(audience)
    signature = base64.b64encode(await sign(f"{resource}\n{expiry}".encode())).decode()
    return f"SharedAccessSignature sr={resource}&sig={quote_plus(signature)}&se={expiry}"


@dataclass(frozen=True)
class SasToken:
    resource: str  # as sent (encoded)
    signature: bytes
    expiry: int
    key_name: str | None


def parse_token(header: str) -> SasToken:
    if not header.startswith("SharedAccessSignature "):
        raise SasError("Authorization is not a SharedAccessSignature")
    fields = dict(parse_qsl(header[len("SharedAccessSignature "):], keep_blank_values=True))
    try:
        # sr was sent percent-encoded and parse_qsl decoded it once: encode it back as signed
        return SasToken(_encode(fields["sr"]), base64.b64decode(fields["sig"], validate=True), int(fields["se"]),
                        fields.get("skn"))
    except (KeyError, ValueError) as e:
        raise SasError(f"malformed SharedAccessSignature: {e}") from None


def verify_token(token: SasToken, audience: str, key: bytes, now: float | None = None) -> None:
    """Raise SasError unless ``token`` is a current signature by ``key`` for ``audience`` (or a prefix of it)."""
    expected = _encode(audience)
    if not expected.startswith(token.resource):
        raise SasError(f"token is for {token.resource}, not for {expected}")
    if token.expiry <= (time.time() if now is None else now):
        raise SasError("token has expired")
    mac = hmac.new(key, f"{token.resource}\n{token.expiry}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, token.signature):
        raise SasError("token signature does not verify")
