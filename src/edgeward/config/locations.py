"""Where the super config points at certificates and keys: file URIs, PKCS#11 URIs, or Edgeward ids.

IoT Edge's super config names certificates and keys by location (``file:///...``, ``pkcs11:...``, or
``{ uri = "pkcs11:..." }``); the services name them by id. These helpers tell the two apart and check a location
once, reporting problems at the path the user wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..keys.uri import KeyUriError, Pkcs11Uri, parse_key_uri, redact_uri
from .problems import Problems

__all__ = ["Location", "cert_location", "key_location", "valid_id"]


@dataclass(frozen=True)
class Location:
    """A certificate or key given by URI (to be preloaded under an id) or by the id of one a service holds."""

    kind: Literal["uri", "id"]
    value: str


def valid_id(value: str) -> bool:
    """Ids become file names and URL path segments in the services: no separators, no whitespace."""
    return bool(value) and len(value) <= 256 and not any(c in value for c in "/\\\0 \t\r\n") and value not in (
        ".", "..")


def cert_location(value: Any, where: str, p: Problems, *, allow_id: bool = True) -> Location | None:
    """A certificate as ``file:///path.pem`` (preloaded) or, with ``allow_id``, as a cert id (Edgeward's form)."""
    expected = "a file:// URI or a cert id" if allow_id else "a file:// URI"
    if not isinstance(value, str):
        p.add(where, value, expected)
        return None
    if value.startswith("file://"):
        if len(value) <= len("file://") or not value[len("file://"):].startswith("/"):
            p.add(where, value, "a file:// URI with an absolute path (file:///path/cert.pem)")
            return None
        return Location("uri", value)
    if not allow_id or "://" in value or not valid_id(value):
        p.add(where, value, expected)
        return None
    return Location("id", value)


def key_location(value: Any, where: str, p: Problems, *, has_pkcs11_lib: bool) -> Location | None:
    """A private key as ``file://``, ``pkcs11:`` (also in IoT Edge 1.5's ``{ uri = "..." }`` form) or a key id."""
    if isinstance(value, dict):
        if set(value) != {"uri"} or not isinstance(value["uri"], str):
            p.add(where, {k: (redact_uri(v) if isinstance(v, str) else v) for k, v in value.items()},
                  'a key URI string or { uri = "<file:// or pkcs11: URI>" }')
            return None
        value = value["uri"]
    if not isinstance(value, str):
        p.add(where, value, "a file:// or pkcs11: URI, or a key id")
        return None
    if value.startswith(("file://", "pkcs11:")):
        try:
            parsed = parse_key_uri(value)
        except KeyUriError as e:
            p.add(where, redact_uri(value), f"a valid key URI ({e})")
            return None
        if isinstance(parsed, Pkcs11Uri) and not has_pkcs11_lib and parsed.module_path is None:
            p.add(where, redact_uri(value), "aziot_keys.pkcs11_lib_path set for pkcs11: keys")
            return None
        return Location("uri", value)
    if "://" in value or ":" in value or not valid_id(value):
        p.add(where, redact_uri(value), "a file:// or pkcs11: URI, or a key id")
        return None
    return Location("id", value)
