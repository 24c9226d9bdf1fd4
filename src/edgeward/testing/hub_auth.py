"""How IoT Hub decides whether a shared access signature authorises a request, for the hub emulator (tests only).

From IoT Hub's access-control documentation: a token is ``SharedAccessSignature sr=<resource>&sig=<sig>&se=<expiry>
[&skn=<policy>]``. ``sr`` is the URL-encoded resource URI, host name first and no scheme; it authorises that URI and
everything below it *by path segment* (``hub/devices/d1`` covers ``hub/devices/d1/modules/m`` but not
``hub/devices/d10``). The docs ask senders to lower-case it, so it is compared case-insensitively. ``sig`` is the
HMAC-SHA256 of ``<sr as sent>\\n<se>`` under:

- with ``skn``: the key of the hub's shared access policy of that name; the policy's rights then decide the
  operation (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect);
- without ``skn``: the key of the device (or module) that ``sr`` names, so a device key only ever authorises
  that device's own scope; a token whose ``sr`` names no device (the whole hub) cannot be a device token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import unquote

from ..identity.sas import SasError, SasToken

__all__ = ["RIGHTS", "AccessPolicy", "Scope", "b64key", "covers", "parse_scope", "signed_by"]

RIGHTS = frozenset({"RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect"})


@dataclass(frozen=True)
class AccessPolicy:
    """One of the hub's shared access policies (``iothubowner``, ``registryReadWrite``, ...)."""

    name: str
    primary_key: bytes
    secondary_key: bytes
    rights: frozenset[str]

    def __repr__(self) -> str:
        return f"AccessPolicy({self.name!r}, rights={sorted(self.rights)})"


@dataclass(frozen=True)
class Scope:
    """A decoded ``sr``: the host and the path segments below it (lower case, as compared)."""

    host: str
    segments: tuple[str, ...]

    @property
    def device_id(self) -> str | None:
        """The device a device-credential token names: ``devices/<id>`` or ``devices/<id>/modules/<mid>``."""
        if len(self.segments) in (2, 4) and self.segments[0] == "devices" and (
                len(self.segments) == 2 or self.segments[2] == "modules"):
            return self.segments[1]
        return None

    @property
    def module_id(self) -> str | None:
        return self.segments[3] if self.device_id is not None and len(self.segments) == 4 else None


def parse_scope(token: SasToken) -> Scope:
    """``sr`` URL-decoded, split into host and path segments; empty segments (``a//b``, a trailing ``/``) are not
    resources, so they are refused rather than normalised away."""
    decoded = unquote(token.resource).lower()
    if "://" in decoded:
        raise SasError("sr must not carry a scheme")
    host, _, path = decoded.partition("/")
    segments = tuple(path.split("/")) if path else ()
    if not host or any(s == "" for s in segments):
        raise SasError(f"sr {decoded!r} is not a resource URI")
    return Scope(host, segments)


def covers(scope: Scope, host: str, raw_path: str) -> bool:
    """Whether ``scope`` authorises the resource ``host`` + ``raw_path`` (the request path as sent, each segment
    decoded once): same host, and ``scope``'s segments are a leading run of the path's segments."""
    wanted = tuple(unquote(s).lower() for s in raw_path.split("?", 1)[0].split("/") if s)
    return scope.host == host.lower() and wanted[:len(scope.segments)] == scope.segments


def signed_by(token: SasToken, keys: tuple[bytes, ...], now: float | None = None) -> None:
    """Raise SasError unless ``token`` is current and signed with one of ``keys`` (primary or secondary)."""
    if token.expiry <= (time.time() if now is None else now):
        raise SasError("token has expired")
    signed = f"{token.resource}\n{token.expiry}".encode()
    for key in keys:
        if key and hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), token.signature):
            return
    raise SasError("token signature does not verify")


def b64key(value: object) -> bytes:
    """A key as the registry holds it (base64 text); anything else is no key."""
    try:
        return base64.b64decode(str(value), validate=True) if value else b""
    except ValueError:
        return b""
