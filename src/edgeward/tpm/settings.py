"""The TPM service's settings, read from an aziot-tpmd style TOML table.

aziot-tpmd reads ``tcti``, ``auth_key_index``, ``[hierarchy_authorization]``, ``max_requests`` and ``[endpoints]``
at the top of its own config file; the super config has the same keys in its ``[tpm]`` table. Pass that table and
``prefix="tpm"`` so that every message names the setting as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config.problems import Problems

__all__ = [
    "DEFAULT_AUDIT_COUNTER_INDEX",
    "DEFAULT_AUTH_KEY_INDEX",
    "ENDORSEMENT_KEY_HANDLE",
    "MAX_AUTH_KEY_INDEX",
    "MAX_HIERARCHY_AUTH_BYTES",
    "PERSISTENT_OBJECT_BASE",
    "STORAGE_ROOT_KEY_HANDLE",
    "HierarchyAuthorization",
    "TpmdSettings",
    "parse_tpmd_settings",
]

# TPM 2.0 Part 1, 37.3: owner persistent objects; TCG TPM v2.0 Provisioning Guidance, table 2: EK and SRK handles.
PERSISTENT_OBJECT_BASE = 0x81_00_00_00
ENDORSEMENT_KEY_HANDLE = PERSISTENT_OBJECT_BASE + 0x01_00_01
STORAGE_ROOT_KEY_HANDLE = PERSISTENT_OBJECT_BASE + 0x00_00_01
DEFAULT_AUTH_KEY_INDEX = 0x00_01_00
# TCG Registry of Reserved TPM 2.0 Handles: 0x01000000-0x013FFFFF are NV indexes for the owner's own use.
OWNER_NV_FIRST, OWNER_NV_LAST = 0x01_00_00_00, 0x01_3F_FF_FF
DEFAULT_AUDIT_COUNTER_INDEX = 0x01_00_ED_01  # the audit log's monotonic counter
MAX_AUTH_KEY_INDEX = 0x7F_FF_FF  # TPM 2.0 Part 3, 28.5.1: the owner's half of the persistent range
MAX_HIERARCHY_AUTH_BYTES = 64  # a TPM2B_AUTH holds at most the largest digest a TPM supports
DEFAULT_MAX_REQUESTS = 10  # aziot's http-common default, per calling user
DEFAULT_TCTI = "device"

T = TypeVar("T")

_RESERVED_INDEXES = {
    STORAGE_ROOT_KEY_HANDLE - PERSISTENT_OBJECT_BASE: "the storage root key",
    ENDORSEMENT_KEY_HANDLE - PERSISTENT_OBJECT_BASE: "the endorsement key",
}


@dataclass(frozen=True)
class HierarchyAuthorization:
    """authValues of the endorsement and owner hierarchies (empty: none set, the usual case)."""

    endorsement: str = field(default="", repr=False)
    owner: str = field(default="", repr=False)


@dataclass(frozen=True)
class TpmdSettings:
    socket_path: Path
    tcti: str = DEFAULT_TCTI
    auth_key_index: int = DEFAULT_AUTH_KEY_INDEX
    hierarchy_authorization: HierarchyAuthorization = field(default_factory=HierarchyAuthorization)
    max_requests: int = DEFAULT_MAX_REQUESTS
    audit_counter_index: int = DEFAULT_AUDIT_COUNTER_INDEX  # NV index of the audit log's monotonic counter
    prefix: str = ""  # where these settings live in the config the user wrote, e.g. "tpm"

    @property
    def auth_key_handle(self) -> int:
        """The persistent handle of the DPS authentication key."""
        return PERSISTENT_OBJECT_BASE + self.auth_key_index

    def setting(self, name: str) -> str:
        """The full name of a setting, as a message should show it."""
        return f"{self.prefix}.{name}" if self.prefix else name

    def __repr__(self) -> str:
        return (f"TpmdSettings(tcti={self.tcti!r}, auth_key_handle={self.auth_key_handle:#x}, "
                f"socket={self.socket_path})")


_KINDS = {str: "a string", int: "an integer", dict: "a table"}


def _typed(p: Problems, table: Mapping[str, Any], key: str, where: str, *, kind: type[T], default: T,
           secret: bool = False) -> T:
    """``Problems.get``, but naming top-level keys without a leading dot and never showing a secret's value."""
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = f"{where}.{key}" if where else key
        if secret:
            p.items.append(f"{name} = <redacted>: expected {_KINDS[kind]}")
        else:
            p.add(name, value, _KINDS[kind])
        return default
    return value


def _auth_key_index(value: object, path: str, p: Problems) -> int:
    expected = f"an integer from 0x000000 to {MAX_AUTH_KEY_INDEX:#08x} (an offset from {PERSISTENT_OBJECT_BASE:#x})"
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        # aziotctl's config template writes the index quoted ("0x00_01_00"); accept that spelling too.
        try:
            index = int(value.replace("_", ""), 0)
        except ValueError:
            index = None
    if index is None or not 0 <= index <= MAX_AUTH_KEY_INDEX:
        p.add(path, value, expected)
        return DEFAULT_AUTH_KEY_INDEX
    if index in _RESERVED_INDEXES:
        p.add(path, value, f"an index other than {index:#08x}, which holds {_RESERVED_INDEXES[index]}")
        return DEFAULT_AUTH_KEY_INDEX
    return index


def _hierarchy_auth(table: Mapping[str, Any], name: str, where: str, p: Problems) -> str:
    value = _typed(p, table, name, where, kind=str, default="", secret=True)
    if "\x00" in value or len(value.encode()) > MAX_HIERARCHY_AUTH_BYTES:
        # the value is a secret: describe it, never show it
        p.items.append(f"{where}.{name} = <redacted>: expected at most {MAX_HIERARCHY_AUTH_BYTES} bytes "
                       "without NUL characters")
        return ""
    return value


def parse_tpmd_settings(doc: Mapping[str, Any], run_dir: Path, problems: Problems | None = None,
                        prefix: str = "") -> TpmdSettings:
    """Read an aziot-tpmd config (or the super config's ``[tpm]`` table, with ``prefix="tpm"``)."""
    p = problems or Problems("TPM configuration")
    at = f"{prefix}." if prefix else ""
    p.warn_unknown(doc, {"tcti", "auth_key_index", "hierarchy_authorization", "max_requests", "endpoints",
                         "audit_counter_index"}, prefix)

    tcti = _typed(p, doc, "tcti", prefix, kind=str, default=DEFAULT_TCTI)
    if "\x00" in tcti:
        p.add(f"{at}tcti", tcti, "a TCTI loader string such as device:/dev/tpmrm0 or swtpm:port=2321")
        tcti = DEFAULT_TCTI
    # An empty TCTI is meaningful: the TCTI loader then tries its default list of TCTIs.

    index = DEFAULT_AUTH_KEY_INDEX
    if "auth_key_index" in doc:
        index = _auth_key_index(doc["auth_key_index"], f"{at}auth_key_index", p)

    hier = _typed(p, doc, "hierarchy_authorization", prefix, kind=dict, default={})
    p.warn_unknown(hier, {"endorsement", "owner"}, f"{at}hierarchy_authorization")
    auth = HierarchyAuthorization(
        endorsement=_hierarchy_auth(hier, "endorsement", f"{at}hierarchy_authorization", p),
        owner=_hierarchy_auth(hier, "owner", f"{at}hierarchy_authorization", p),
    )

    max_requests = _typed(p, doc, "max_requests", prefix, kind=int, default=DEFAULT_MAX_REQUESTS)
    if not 1 <= max_requests <= 10_000:
        p.add(f"{at}max_requests", max_requests, "1 to 10000")
        max_requests = DEFAULT_MAX_REQUESTS

    counter_index = _typed(p, doc, "audit_counter_index", prefix, kind=int, default=DEFAULT_AUDIT_COUNTER_INDEX)
    if not OWNER_NV_FIRST <= counter_index <= OWNER_NV_LAST:
        p.add(f"{at}audit_counter_index", counter_index,
              f"an owner NV index from {OWNER_NV_FIRST:#010x} to {OWNER_NV_LAST:#010x}")
        counter_index = DEFAULT_AUDIT_COUNTER_INDEX

    endpoints = _typed(p, doc, "endpoints", prefix, kind=dict, default={})
    socket = run_dir / "tpmd.sock"
    sock_uri = _typed(p, endpoints, "aziot_tpmd", f"{at}endpoints", kind=str, default="")
    if sock_uri:
        if sock_uri.startswith("unix://") and len(sock_uri) > len("unix://"):
            socket = Path(sock_uri[len("unix://"):])
        else:
            p.add(f"{at}endpoints.aziot_tpmd", sock_uri, "a unix:///path URI")
    if problems is None:
        p.raise_if_any()
    return TpmdSettings(socket_path=socket, tcti=tcti, auth_key_index=index, hierarchy_authorization=auth,
                        max_requests=max_requests, audit_counter_index=counter_index, prefix=prefix)
