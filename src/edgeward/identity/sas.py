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
from urllib.parse import quote, quote_plus, unquote, unquote_plus

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
    resource: str  # exactly as sent: the signed bytes
    signature: bytes
    expiry: int
    key_name: str | None


def parse_token(header: str) -> SasToken:
    """Split a token as the services do: ``sr`` is kept exactly as sent (the HMAC covers those bytes, however the
    sender encoded them: aziot leaves '/' and ':' unencoded, the SDKs encode them), the other fields are decoded."""
    if not header.startswith("SharedAccessSignature "):
        raise SasError("Authorization is not a SharedAccessSignature")
    raw: dict[str, str] = {}
    for part in header[len("SharedAccessSignature "):].split("&"):
        name, eq, value = part.partition("=")
        if not eq:
            raise SasError(f"malformed SharedAccessSignature field {name!r}")
        raw[name] = value
    try:
        return SasToken(raw["sr"], base64.b64decode(unquote_plus(raw["sig"]), validate=True),
                        int(unquote_plus(raw["se"])), unquote_plus(raw["skn"]) if "skn" in raw else None)
    except (KeyError, ValueError) as e:
        raise SasError(f"malformed SharedAccessSignature: {e}") from None


def verify_token(token: SasToken, audience: str, key: bytes, now: float | None = None) -> None:
    """Raise SasError unless ``token`` is a current signature by ``key`` for ``audience`` (or a prefix of it)."""
    expected, claimed = audience.lower(), unquote(token.resource).lower()
    if not expected.startswith(claimed):
        raise SasError(f"token is for {claimed}, not for {expected}")
    if token.expiry <= (time.time() if now is None else now):
        raise SasError("token has expired")
    mac = hmac.new(key, f"{token.resource}\n{token.expiry}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, token.signature):
        raise SasError("token signature does not verify")
