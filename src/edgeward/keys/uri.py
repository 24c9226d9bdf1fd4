"""Key location URIs of preloaded keys: ``file:///path`` and RFC 7512 ``pkcs11:`` URIs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..digits import is_number

__all__ = ["FileUri", "KeyUriError", "Pkcs11Uri", "parse_key_uri", "redact_uri"]

_PATH_ATTRS = {"token", "slot-id", "object", "type", "id", "manufacturer", "model", "serial", "library-description",
               "library-manufacturer", "library-version", "slot-description", "slot-manufacturer"}
_QUERY_ATTRS = {"pin-value", "pin-source", "module-path", "module-name"}


class KeyUriError(ValueError):
    pass


@dataclass(frozen=True)
class FileUri:
    path: Path


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    slot_id: int | None = None
    object: str | None = None
    pin_value: str | None = None
    module_path: str | None = None

    def __repr__(self) -> str:  # the PIN is a secret
        pin = "<redacted>" if self.pin_value is not None else None
        return (f"Pkcs11Uri(token={self.token!r}, slot_id={self.slot_id!r}, object={self.object!r}, "
                f"pin_value={pin}, module_path={self.module_path!r})")


def redact_uri(uri: str) -> str:
    """The URI with its PIN hidden, for messages and logs."""
    return re.sub(r"(pin-value=)[^&;]*", r"\1<redacted>", uri)


def _attrs(part: str, sep: str, allowed: set[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not part:
        return out
    for item in part.split(sep):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise KeyUriError(f"malformed pkcs11 URI {where} attribute {item!r}: expected name=value")
        if name not in allowed:
            raise KeyUriError(f"unknown pkcs11 URI {where} attribute {name!r}")
        if name in out:
            raise KeyUriError(f"pkcs11 URI attribute {name!r} given twice")
        out[name] = unquote(value, errors="strict")
    return out


def parse_key_uri(uri: str) -> FileUri | Pkcs11Uri:
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise KeyUriError(f"file URI {uri!r} names a host; only local files are allowed")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise KeyUriError(f"file URI {uri!r} must hold an absolute path (file:///...)")
        return FileUri(Path(path))
    if uri.startswith("pkcs11:"):
        body = uri[len("pkcs11:"):]
        path_part, _, query_part = body.partition("?")
        try:
            path_attrs = _attrs(path_part, ";", _PATH_ATTRS, "path")
            query_attrs = _attrs(query_part, "&", _QUERY_ATTRS, "query")
        except UnicodeDecodeError as e:
            raise KeyUriError(f"pkcs11 URI has invalid percent-encoding: {e}") from None
        slot = path_attrs.get("slot-id")
        if slot is not None and not is_number(slot):
            raise KeyUriError(f"pkcs11 URI slot-id must be a number, got {slot!r}")
        if "token" not in path_attrs and slot is None:
            raise KeyUriError("pkcs11 URI must name a token (token=...) or a slot (slot-id=...)")
        return Pkcs11Uri(
            token=path_attrs.get("token"),
            slot_id=int(slot) if slot is not None else None,
            object=path_attrs.get("object"),
            pin_value=query_attrs.get("pin-value"),
            module_path=query_attrs.get("module-path"),
        )
    raise KeyUriError("unsupported scheme: expected file:///... or pkcs11:...")
