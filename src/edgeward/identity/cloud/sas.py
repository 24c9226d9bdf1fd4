"""Shared access signatures, as IoT Hub and DPS define them.

A token is ``SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<key name>]`` where

- ``resource`` is the audience (``<hub host>/devices/<device id>`` for a device, ``<id scope>/registrations/
  <registration id>`` for DPS), lower-cased and URL-encoded;
- ``expiry`` is whole seconds since the Unix epoch;
- ``signature`` is base64(HMAC-SHA256(key, resource + "\\n" + expiry)), URL-encoded, computed over the resource
  exactly as it appears in the token (the services verify the bytes they received, not a re-encoding);
- ``skn`` names a shared access policy; DPS symmetric-key attestation uses the fixed name ``registration``, device
  tokens for IoT Hub carry none.

The HMAC runs in a :data:`Signer`, so a device key can stay in the keys service. Parsing and checking are here too,
for the cloud emulator and for tests; they name the check that failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_plus

__all__ = [
    "DPS_KEY_NAME",
    "SasError",
    "SasToken",
    "Signer",
    "check_claims",
    "derive_device_key",
    "dps_audience",
    "encode_resource",
    "hub_audience",
    "key_signer",
    "make_token",
    "parse_token",
    "signature_matches",
    "verify_token",
]

Signer = Callable[[bytes], Awaitable[bytes]]
"""HMAC-SHA256 of the given bytes with the (hidden) key."""

DPS_KEY_NAME = "registration"
_SCHEME = "SharedAccessSignature"


class SasError(ValueError):
    """A token that is malformed, or that does not grant what was asked; the message names the failed check."""


def hub_audience(hub_hostname: str, device_id: str) -> str:
    """What a device's token for its hub is scoped to (the hub's host name, as the device knows it)."""
    return f"{hub_hostname}/devices/{device_id}"


def dps_audience(id_scope: str, registration_id: str) -> str:
    """What a DPS registration token is scoped to."""
    return f"{id_scope}/registrations/{registration_id}"


def encode_resource(audience: str) -> str:
    """The ``sr`` value for ``audience``: lower-cased, then every reserved character percent-encoded."""
    return quote(audience.lower(), safe="")


def key_signer(key: bytes) -> Signer:
    """A signer over a key held in this process (tests, and keys already exported such as a derived DPS key)."""

    async def sign(data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    return sign


def derive_device_key(group_key: bytes, registration_id: str) -> bytes:
    """The device key of a DPS group enrollment: HMAC-SHA256(group key, registration id). Keys are raw bytes here;
    the portal shows both base64-encoded."""
    return hmac.new(group_key, registration_id.encode("utf-8"), hashlib.sha256).digest()


async def make_token(
    audience: str, signer: Signer, *, ttl: int = 300, key_name: str | None = None, now: float | None = None
) -> str:
    """An ``Authorization`` header value for ``audience`` that expires ``ttl`` seconds from ``now``."""
    expiry = str(int((time.time() if now is None else now) + ttl))
    resource = encode_resource(audience)
    signature = base64.b64encode(await signer(f"{resource}\n{expiry}".encode())).decode("ascii")
    token = f"{_SCHEME} sr={resource}&sig={quote(signature, safe='')}&se={expiry}"
    if key_name is not None:
        token += f"&skn={quote(key_name, safe='')}"
    return token


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed token. ``resource`` and ``expiry_text`` are kept as sent: they are what the signature covers."""

    resource: str
    audience: str
    signature: bytes = field(repr=False)
    expiry: int
    expiry_text: str
    key_name: str | None


def parse_token(header: str) -> SasToken:
    """Parse an ``Authorization`` header value; raise :class:`SasError` if it is not a well-formed SAS token."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != _SCHEME or not rest.strip() or " " in rest.strip():
        raise SasError("Authorization is not a SharedAccessSignature token")
    fields: dict[str, str] = {}
    for part in rest.strip().split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.lower()
        if not sep or name in fields:
            raise SasError(f"malformed SharedAccessSignature field {name!r}")
        fields[name] = value
    missing = [name for name in ("sr", "sig", "se") if not fields.get(name)]
    if missing:
        raise SasError(f"SharedAccessSignature lacks {', '.join(missing)}")
    expiry_text = unquote_plus(fields["se"])
    if not expiry_text.isascii() or not expiry_text.isdigit():
        raise SasError("SharedAccessSignature expiry (se) is not a whole number of seconds")
    try:
        signature = base64.b64decode(unquote_plus(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        raise SasError("SharedAccessSignature signature (sig) is not base64") from None
    skn = fields.get("skn")
    return SasToken(
        resource=fields["sr"],
        audience=unquote_plus(fields["sr"]),
        signature=signature,
        expiry=int(expiry_text),
        expiry_text=expiry_text,
        key_name=unquote_plus(skn) if skn is not None else None,
    )


def _within(inner: str, outer: str) -> bool:
    inner, outer = inner.lower().rstrip("/"), outer.lower().rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def check_claims(
    token: SasToken,
    *,
    resource: str,
    scope: str | None = None,
    key_name: str | None = None,
    now: float | None = None,
    clock_skew: float = 0.0,
) -> None:
    """Raise :class:`SasError` unless the token covers ``resource`` (its audience is ``resource`` or a parent of it),
    stays inside ``scope`` (the most a key may grant, e.g. one device), names ``key_name`` (``None``: must name none)
    and has not expired."""
    if not _within(resource, token.audience):
        raise SasError(f"token audience {token.audience!r} does not cover {resource!r}")
    if scope is not None and not _within(token.audience, scope):
        raise SasError(f"token audience {token.audience!r} is wider than {scope!r}")
    if token.key_name != key_name:
        raise SasError(f"token key name (skn) is {token.key_name!r}, expected {key_name!r}")
    if token.expiry + clock_skew < (time.time() if now is None else now):
        raise SasError("token has expired")


def signature_matches(token: SasToken, key: bytes) -> bool:
    """Whether ``key`` made the token's signature (over the resource and expiry exactly as sent)."""
    mac = hmac.new(key, f"{token.resource}\n{token.expiry_text}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(mac, token.signature)


def verify_token(
    token: SasToken,
    keys: Sequence[bytes],
    *,
    resource: str,
    scope: str | None = None,
    key_name: str | None = None,
    now: float | None = None,
    clock_skew: float = 0.0,
) -> int:
    """Check the claims, then the signature against each of ``keys`` (primary, secondary); the index of the key that
    signed. Raise :class:`SasError` naming the first check that failed."""
    check_claims(token, resource=resource, scope=scope, key_name=key_name, now=now, clock_skew=clock_skew)
    for index, key in enumerate(keys):
        if signature_matches(token, key):
            return index
    raise SasError("token signature does not verify with the registered key")
