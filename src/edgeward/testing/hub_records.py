"""The hub emulator's registry records (devices, modules) and their wire form, per IoT Hub's service REST API
("Devices" and "Modules" operations, api-version 2021-04-12): what a PUT may set, what the hub generates (keys,
generation ids, ETags), and ``If-Match`` as RFC 7232 reads it. Tests only."""

from __future__ import annotations

import base64
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from .hub_auth import b64key

__all__ = ["Device", "Module", "etag_matches", "new_etag", "normalised_authentication"]

_etags = itertools.count(1)
_NEVER = "0001-01-01T00:00:00Z"  # what the hub reports for "never happened"


def new_etag() -> str:
    """Opaque, changes with every write; IoT Hub's look like base64 text, so do these."""
    return base64.b64encode(f"{next(_etags)}:{secrets.token_hex(4)}".encode()).decode()


def etag_matches(if_match: str, etag: str) -> bool:
    """RFC 7232 If-Match: ``*`` (the SDKs quote it: ``"*"``), or a list of quoted entity tags, weak (``W/"..."``)
    allowed, compared weakly as the docs say. An unquoted tag is not an entity tag: it matches nothing (IoT Hub
    answers 412 "Invalid ETag" to it)."""
    for raw in if_match.split(","):
        tag = raw.strip()
        if tag in ("*", '"*"'):
            return True
        tag = tag.removeprefix("W/")
        if len(tag) >= 2 and tag[0] == tag[-1] == '"' and tag[1:-1] == etag:
            return True
    return False


def normalised_authentication(auth: Any) -> dict[str, Any]:
    """``authentication`` as the hub stores it: a SAS identity without keys (or with empty ones) gets generated
    keys; X.509 identities keep their thumbprints; an unknown type is refused by the caller (ValueError)."""
    if auth is None:
        auth = {"type": "sas"}
    if not isinstance(auth, dict):
        raise ValueError("authentication must be an object")
    kind = auth.get("type", "sas")
    if kind == "sas":
        sym = auth.get("symmetricKey") or {}
        if not isinstance(sym, dict):
            raise ValueError("authentication.symmetricKey must be an object")
        keys = [sym.get("primaryKey"), sym.get("secondaryKey")]
        for i, key in enumerate(keys):
            if not key:
                keys[i] = base64.b64encode(secrets.token_bytes(32)).decode()
            elif not b64key(key) or len(b64key(key)) < 16 or len(b64key(key)) > 64:
                raise ValueError("symmetric keys must be base64 of 16 to 64 bytes")
        return {"type": "sas", "symmetricKey": {"primaryKey": keys[0], "secondaryKey": keys[1]},
                "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None}}
    if kind in ("selfSigned", "certificateAuthority", "none"):
        prints = auth.get("x509Thumbprint") or {}
        if not isinstance(prints, dict):
            raise ValueError("authentication.x509Thumbprint must be an object")
        if kind == "selfSigned" and not (prints.get("primaryThumbprint") or prints.get("secondaryThumbprint")):
            raise ValueError("a selfSigned identity needs a thumbprint")
        return {"type": kind, "symmetricKey": {"primaryKey": None, "secondaryKey": None},
                "x509Thumbprint": {"primaryThumbprint": prints.get("primaryThumbprint"),
                                   "secondaryThumbprint": prints.get("secondaryThumbprint")}}
    raise ValueError(f"unknown authentication type {kind!r}")


def _keys(auth: dict[str, Any] | None) -> tuple[bytes, ...]:
    sym = (auth or {}).get("symmetricKey") or {}
    return tuple(k for k in (b64key(sym.get("primaryKey")), b64key(sym.get("secondaryKey"))) if k)


@dataclass
class Module:
    module_id: str
    generation_id: str
    etag: str
    managed_by: str | None = None
    authentication: dict[str, Any] | None = None

    @property
    def keys(self) -> tuple[bytes, ...]:
        return _keys(self.authentication)

    def body(self, device_id: str) -> dict[str, Any]:
        return {"moduleId": self.module_id, "deviceId": device_id, "generationId": self.generation_id,
                "etag": self.etag, "managedBy": self.managed_by, "connectionState": "Disconnected",
                "connectionStateUpdatedTime": _NEVER, "lastActivityTime": _NEVER, "cloudToDeviceMessageCount": 0,
                "authentication": self.authentication or {"type": "none"}}


@dataclass
class Device:
    generation_id: str = field(default_factory=lambda: secrets.token_hex(8))
    etag: str = field(default_factory=new_etag)
    authentication: dict[str, Any] | None = None  # as the registry API shows it
    ca: x509.Certificate | None = None  # X.509 certificateAuthority added in code: the CA it trusts
    status: str = "enabled"
    status_reason: str | None = None
    capabilities: dict[str, Any] = field(default_factory=lambda: {"iotEdge": False})
    device_scope: str | None = None
    modules: dict[str, Module] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[bytes, ...]:
        return _keys(self.authentication)

    @property
    def key(self) -> bytes | None:
        """The primary SAS key (what :meth:`HubEmulator.add_device` set), if a SAS device."""
        return self.keys[0] if self.keys else None

    @property
    def thumbprints(self) -> tuple[str, ...]:
        prints = (self.authentication or {}).get("x509Thumbprint") or {}
        return tuple(str(p).upper() for p in (prints.get("primaryThumbprint"), prints.get("secondaryThumbprint")) if p)

    @property
    def thumbprint(self) -> str | None:
        return self.thumbprints[0] if self.thumbprints else None

    def body(self, device_id: str) -> dict[str, Any]:
        return {"deviceId": device_id, "generationId": self.generation_id, "etag": self.etag,
                "connectionState": "Disconnected", "status": self.status, "statusReason": self.status_reason,
                "connectionStateUpdatedTime": _NEVER, "statusUpdatedTime": _NEVER, "lastActivityTime": _NEVER,
                "cloudToDeviceMessageCount": 0, "authentication": self.authentication or {"type": "none"},
                "capabilities": self.capabilities, "deviceScope": self.device_scope}

    def apply(self, body: dict[str, Any]) -> None:
        """What a PUT may change (deviceId and generationId are the hub's)."""
        self.authentication = normalised_authentication(body.get("authentication"))
        status = body.get("status", self.status)
        if status not in ("enabled", "disabled"):
            raise ValueError("status must be enabled or disabled")
        self.status, self.status_reason = status, body.get("statusReason", self.status_reason)
        capabilities = body.get("capabilities", self.capabilities)
        if not isinstance(capabilities, dict):
            raise ValueError("capabilities must be an object")
        self.capabilities = {"iotEdge": bool(capabilities.get("iotEdge", False))}
        self.device_scope = body.get("deviceScope", self.device_scope)
        self.etag = new_etag()
