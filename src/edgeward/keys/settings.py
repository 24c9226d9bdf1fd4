"""The keys service's settings, read from an aziot-keyd style TOML table (plus Edgeward's own keys)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config.problems import Problems
from .principals import KeyPrincipal
from .uri import KeyUriError, Pkcs11Uri, parse_key_uri, redact_uri

__all__ = ["BackendKind", "KeysSettings", "parse_keys_settings"]

BackendKind = Literal["software", "pkcs11", "tpm"]


@dataclass(frozen=True)
class KeysSettings:
    homedir: Path
    socket_path: Path
    backend: BackendKind = "software"
    pkcs11_lib_path: str | None = None
    pkcs11_base_slot: Pkcs11Uri | None = None
    tpm_tcti: str | None = None
    tpm_owner_auth: str = ""
    master_key: Literal["file", "tpm"] = "file"
    preloaded_keys: Mapping[str, str] = field(default_factory=dict)
    principals: tuple[KeyPrincipal, ...] = ()
    handle_ttl_seconds: int | None = None
    max_concurrency: int = 2

    def __repr__(self) -> str:
        return (f"KeysSettings(homedir={self.homedir}, backend={self.backend}, socket={self.socket_path}, "
                f"preloaded={sorted(self.preloaded_keys)})")


def parse_keys_settings(doc: Mapping[str, Any], state_dir: Path, run_dir: Path,
                        problems: Problems | None = None) -> KeysSettings:
    """Read ``[aziot_keys]``, ``[preloaded_keys]``, ``[[principal]]``, ``[endpoints]`` and ``[edgeward.keys]``."""
    p = problems or Problems("keys configuration")
    ak = p.get(doc, "aziot_keys", "", dict, {})
    p.warn_unknown(ak, {"homedir_path", "pkcs11_lib_path", "pkcs11_base_slot"}, "aziot_keys")
    homedir = Path(p.get(ak, "homedir_path", "aziot_keys", str, str(state_dir / "keys")))
    lib = p.get(ak, "pkcs11_lib_path", "aziot_keys", str, "") or None
    base_slot_raw = p.get(ak, "pkcs11_base_slot", "aziot_keys", str, "") or None
    base_slot = None
    if base_slot_raw:
        try:
            parsed = parse_key_uri(base_slot_raw)
        except KeyUriError as e:
            p.add("aziot_keys.pkcs11_base_slot", redact_uri(base_slot_raw), f"a pkcs11: URI ({e})")
        else:
            if isinstance(parsed, Pkcs11Uri):
                base_slot = parsed
            else:
                p.add("aziot_keys.pkcs11_base_slot", base_slot_raw, "a pkcs11: URI")

    ours = p.get(p.get(doc, "edgeward", "", dict, {}), "keys", "edgeward", dict, {})
    p.warn_unknown(ours, {"backend", "tpm_tcti", "tpm_owner_auth", "master_key", "handle_ttl_seconds",
                          "max_concurrency"}, "edgeward.keys")
    backend = p.get(ours, "backend", "edgeward.keys", str, "pkcs11" if base_slot else "software")
    if backend not in ("software", "pkcs11", "tpm"):
        p.add("edgeward.keys.backend", backend, '"software", "pkcs11" or "tpm"')
        backend = "software"
    if backend == "pkcs11" and (lib is None or base_slot is None):
        p.add("aziot_keys.pkcs11_lib_path/pkcs11_base_slot", "<missing>",
              "both set when the key backend is pkcs11")
    tcti = p.get(ours, "tpm_tcti", "edgeward.keys", str, "") or None
    master_key = p.get(ours, "master_key", "edgeward.keys", str, "tpm" if backend == "tpm" else "file")
    if master_key not in ("file", "tpm"):
        p.add("edgeward.keys.master_key", master_key, '"file" or "tpm"')
        master_key = "file"
    if (backend == "tpm" or master_key == "tpm") and not tcti:
        p.add("edgeward.keys.tpm_tcti", "<missing>", "a TCTI string (e.g. device:/dev/tpmrm0) when a TPM is used")
    ttl = p.get(ours, "handle_ttl_seconds", "edgeward.keys", int, 0) or None
    if ttl is not None and ttl < 0:
        p.add("edgeward.keys.handle_ttl_seconds", ttl, "a positive number of seconds")
        ttl = None
    concurrency = p.get(ours, "max_concurrency", "edgeward.keys", int, 2)
    if not 1 <= concurrency <= 256:
        p.add("edgeward.keys.max_concurrency", concurrency, "1 to 256")
        concurrency = 2

    preloaded: dict[str, str] = {}
    for key_id, uri in p.get(doc, "preloaded_keys", "", dict, {}).items():
        if not isinstance(uri, str):
            p.add(f"preloaded_keys.{key_id}", uri, "a file:// or pkcs11: URI string")
            continue
        try:
            parsed_uri = parse_key_uri(uri)
        except KeyUriError as e:
            p.add(f"preloaded_keys.{key_id}", redact_uri(uri), f"a valid key URI ({e})")
            continue
        if isinstance(parsed_uri, Pkcs11Uri) and lib is None and parsed_uri.module_path is None:
            p.add(f"preloaded_keys.{key_id}", redact_uri(uri), "aziot_keys.pkcs11_lib_path set for pkcs11: keys")
        preloaded[key_id] = uri

    principals: list[KeyPrincipal] = []
    for i, entry in enumerate(p.get(doc, "principal", "", list, [])):
        where = f"principal[{i}]"
        if not isinstance(entry, dict):
            p.add(where, entry, "a table with uid and keys")
            continue
        uid = p.get(entry, "uid", where, int, -1)
        keys = p.get(entry, "keys", where, list, [])
        if uid < 0:
            p.add(f"{where}.uid", entry.get("uid"), "a non-negative uid")
            continue
        if not all(isinstance(k, str) for k in keys):
            p.add(f"{where}.keys", keys, "a list of key id globs")
            continue
        principals.append(KeyPrincipal(uid, tuple(keys)))

    endpoints = p.get(doc, "endpoints", "", dict, {})
    socket = Path(run_dir / "keyd.sock")
    sock_uri = p.get(endpoints, "aziot_keyd", "endpoints", str, "")
    if sock_uri:
        if sock_uri.startswith("unix://"):
            socket = Path(sock_uri[len("unix://"):])
        else:
            p.add("endpoints.aziot_keyd", sock_uri, "a unix:///path URI")
    if problems is None:
        p.raise_if_any()
    return KeysSettings(
        homedir=homedir, socket_path=socket, backend=backend,  # type: ignore[arg-type]
        pkcs11_lib_path=lib, pkcs11_base_slot=base_slot, tpm_tcti=tcti,
        tpm_owner_auth=p.get(ours, "tpm_owner_auth", "edgeward.keys", str, ""),
        master_key=master_key,  # type: ignore[arg-type]
        preloaded_keys=preloaded, principals=tuple(principals), handle_ttl_seconds=ttl, max_concurrency=concurrency,
    )
