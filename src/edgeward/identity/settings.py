"""The identity service's settings: aziot-identityd's ``[provisioning]``, ``hostname``, ``[[principal]]``,
``[localid]``, ``cloud_timeout_sec``, ``cloud_retries`` and ``local_gateway_hostname`` (IoT Edge's
``parent_hostname``, with the parent's CAs from ``trust_bundle_cert``), plus Edgeward's ``[edgeward.identity]`` (the
trust bundle for the cloud's TLS)."""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ..config.b64 import decode_key
from ..config.problems import Problems
from .connection_string import parse_connection_string

__all__ = [
    "DpsProvisioning",
    "IdPrincipal",
    "IdentitySettings",
    "ManualProvisioning",
    "SecretSource",
    "parse_connection_string",
    "parse_identity_settings",
]

IdType = Literal["device", "module", "local"]


@dataclass(frozen=True)
class SecretSource:
    """A key given inline (base64), by file URI, or as the id of a key the keys service already holds (a preloaded
    ``pkcs11:`` key, which never leaves its token: the device's SAS signatures are the token's HMACs); never shown
    in reprs."""

    value: bytes | None = field(default=None, repr=False)
    uri: str | None = None
    key_id: str | None = None


@dataclass(frozen=True)
class ManualProvisioning:
    hub: str
    device_id: str
    auth: Literal["sas", "x509"]
    sas_key: SecretSource | None = None
    identity_cert: str | None = None  # file:// URI or a cert id
    identity_pk: str | None = None  # file:// / pkcs11: URI or a key id


@dataclass(frozen=True)
class DpsProvisioning:
    endpoint: str
    scope_id: str
    auth: Literal["symmetric_key", "x509", "tpm"]
    registration_id: str | None = None
    symmetric_key: SecretSource | None = None
    group_enrollment: bool = False
    identity_cert: str | None = None
    identity_pk: str | None = None
    payload: Any = None


@dataclass(frozen=True)
class IdPrincipal:
    uid: int
    name: str
    idtype: tuple[IdType, ...] | None = None  # None: a daemon, allowed every API
    local_server: bool = False  # aziot's ``localid = { type = "x509", attributes = "server" }``


ReprovisioningMode = Literal["Dynamic", "AlwaysOnStartup", "OnErrorOnly"]
REPROVISIONING_MODES: tuple[ReprovisioningMode, ...] = ("Dynamic", "AlwaysOnStartup", "OnErrorOnly")


@dataclass(frozen=True)
class IdentitySettings:
    hostname: str
    homedir: Path
    socket_path: Path
    provisioning: ManualProvisioning | DpsProvisioning | None
    principals: tuple[IdPrincipal, ...] = ()
    localid_domain: str | None = None
    cloud_trust_bundle: str | None = None  # file:// URI of the CAs trusted for IoT Hub / DPS TLS
    cloud_timeout: float = 30.0  # seconds per attempt of a cloud call (cloud_timeout_sec)
    cloud_retries: int = 1  # attempts after the first that got no answer (cloud_retries; aziot's default)
    # Nested edge: the parent device hub traffic goes to (parent_hostname), and the file:// URI of the CAs its TLS
    # certificate is checked against (trust_bundle_cert); None: hub traffic goes to the hub itself.
    gateway_hostname: str | None = None
    parent_trust_bundle: str | None = None
    tpmd_socket: Path | None = None  # where the TPM service listens, for DPS TPM attestation
    # IoT Edge 1.5's auto_reprovisioning_mode and prefer_module_identity_cache (identity/reprovisioning.py)
    auto_reprovisioning_mode: ReprovisioningMode = "Dynamic"
    prefer_module_identity_cache: bool = False


def _secret(raw: Any, where: str, p: Problems) -> SecretSource | None:
    if isinstance(raw, dict) and "value" in raw and isinstance(raw["value"], str):
        try:
            return SecretSource(value=decode_key(raw["value"]))  # padding optional, as aziot
        except (binascii.Error, ValueError):
            p.add(f"{where}.value", "<secret>", "a base64 key")
            return None
    if isinstance(raw, dict) and isinstance(raw.get("uri"), str) and raw["uri"].startswith("file://"):
        return SecretSource(uri=raw["uri"])
    if isinstance(raw, dict) and set(raw) == {"key_id"} and isinstance(raw["key_id"], str) and raw["key_id"] \
            and not any(c in raw["key_id"] for c in "/\\:\0 \t\r\n"):
        return SecretSource(key_id=raw["key_id"])
    p.add(where, "<secret>", '{ value = "<base64>" }, { uri = "file:///..." } or { key_id = "<keys service id>" }')
    return None


def _manual(prov: Mapping[str, Any], p: Problems) -> ManualProvisioning | None:
    cs = p.get(prov, "connection_string", "provisioning", str, "")
    if cs:
        try:
            hub, device, key = parse_connection_string(cs)
        except ValueError as e:
            p.add("provisioning.connection_string", "<secret>",
                  f"HostName=...;DeviceId=...;SharedAccessKey=<base64> ({e})")
            return None
        return ManualProvisioning(hub, device, "sas", SecretSource(value=key))
    hub = p.get(prov, "iothub_hostname", "provisioning", str, "")
    device = p.get(prov, "device_id", "provisioning", str, "")
    auth = p.get(prov, "authentication", "provisioning", dict, {})
    method = p.get(auth, "method", "provisioning.authentication", str, "")
    if not hub or not device:
        p.add("provisioning", "<incomplete>", "connection_string, or iothub_hostname and device_id")
        return None
    if method == "sas":
        return ManualProvisioning(hub, device, "sas",
                                  _secret(auth.get("device_id_pk"), "provisioning.authentication.device_id_pk", p))
    if method == "x509":
        cert = p.get(auth, "identity_cert", "provisioning.authentication", str, "")
        pk = p.get(auth, "identity_pk", "provisioning.authentication", str, "")
        if not cert or not pk:
            p.add("provisioning.authentication", "<incomplete>", "identity_cert and identity_pk for x509")
        _check_identity_ids(cert, pk, "provisioning.authentication", p)
        return ManualProvisioning(hub, device, "x509", identity_cert=cert or None, identity_pk=pk or None)
    p.add("provisioning.authentication.method", method or "<missing>", '"sas" or "x509"')
    return None


def _check_identity_ids(cert: str, pk: str, where: str, p: Problems) -> None:
    """``identity_cert`` is a cert id of the certs service or a file:// URI; ``identity_pk`` is a key id of the keys
    service, which may itself be preloaded from a file:// or pkcs11: URI under [preloaded_keys]."""
    if cert and ":" in cert and not cert.startswith("file://"):
        p.add(f"{where}.identity_cert", cert, "a cert id or a file:// URI")
    if pk and ":" in pk:
        p.add(f"{where}.identity_pk", pk, "a key id (put a file:// or pkcs11: URI under [preloaded_keys] <id>)")


def _dps(prov: Mapping[str, Any], p: Problems) -> DpsProvisioning | None:
    endpoint = p.get(prov, "global_endpoint", "provisioning", str, "https://global.azure-devices-provisioning.net")
    scope = p.get(prov, "id_scope", "provisioning", str, "")
    att = p.get(prov, "attestation", "provisioning", dict, {})
    method = p.get(att, "method", "provisioning.attestation", str, "")
    if not scope:
        p.add("provisioning.id_scope", "<missing>", "the DPS ID scope")
    if not endpoint.startswith("https://"):
        p.add("provisioning.global_endpoint", endpoint, "an https:// URL")
    reg = p.get(att, "registration_id", "provisioning.attestation", str, "") or None
    payload = prov.get("payload")
    if method == "symmetric_key":
        if reg is None:
            p.add("provisioning.attestation.registration_id", "<missing>", "the registration id")
        return DpsProvisioning(endpoint.rstrip("/"), scope, "symmetric_key", reg,
                               _secret(att.get("symmetric_key"), "provisioning.attestation.symmetric_key", p),
                               p.get(att, "group_enrollment", "provisioning.attestation", bool, False),
                               payload=payload)
    if method == "x509":
        # registration_id may be left out: it is then the identity certificate's CN
        cert = p.get(att, "identity_cert", "provisioning.attestation", str, "")
        pk = p.get(att, "identity_pk", "provisioning.attestation", str, "")
        if not cert or not pk:
            p.add("provisioning.attestation", "<incomplete>", "identity_cert and identity_pk for x509")
        _check_identity_ids(cert, pk, "provisioning.attestation", p)
        return DpsProvisioning(endpoint.rstrip("/"), scope, "x509", reg, identity_cert=cert or None,
                               identity_pk=pk or None, payload=payload)
    if method == "tpm":
        if reg is None:
            p.add("provisioning.attestation.registration_id", "<missing>", "the registration id")
        return DpsProvisioning(endpoint.rstrip("/"), scope, "tpm", reg, payload=payload)
    p.add("provisioning.attestation.method", method or "<missing>", '"symmetric_key", "x509" or "tpm"')
    return None


def parse_identity_settings(doc: Mapping[str, Any], state_dir: Path, run_dir: Path,
                            problems: Problems | None = None) -> IdentitySettings:
    p = problems or Problems("identity configuration")
    prov = p.get(doc, "provisioning", "", dict, {})
    provisioning: ManualProvisioning | DpsProvisioning | None = None
    if prov:
        source = p.get(prov, "source", "provisioning", str, "")
        if source == "manual":
            provisioning = _manual(prov, p)
        elif source == "dps":
            provisioning = _dps(prov, p)
        else:
            p.add("provisioning.source", source or "<missing>", '"manual" or "dps"')
    principals = []
    for i, entry in enumerate(p.get(doc, "principal", "", list, [])):
        if not isinstance(entry, dict) or "name" not in entry:
            continue  # a keys or certs principal
        where = f"principal[{i}]"
        uid = p.get(entry, "uid", where, int, -1)
        name = p.get(entry, "name", where, str, "")
        idtype_raw = entry.get("idtype")
        idtype = None
        if idtype_raw is not None:
            if not isinstance(idtype_raw, list) or not all(t in ("device", "module", "local") for t in idtype_raw):
                p.add(f"{where}.idtype", idtype_raw, 'a list of "device", "module", "local"')
            else:
                idtype = tuple(idtype_raw)
        if uid < 0 or not name:
            p.add(where, "<incomplete>", "uid >= 0 and a name")
            continue
        principals.append(IdPrincipal(uid, name, idtype, _local_server(entry, idtype, where, p)))
    names = [pr.name for pr in principals]
    for dup in {n for n in names if names.count(n) > 1}:
        p.add("principal.name", dup, "unique principal names")
    ours = p.get(p.get(doc, "edgeward", "", dict, {}), "identity", "edgeward", dict, {})
    trust = p.get(ours, "cloud_trust_bundle", "edgeward.identity", str, "") or None
    if trust is not None and not trust.startswith("file://"):
        p.add("edgeward.identity.cloud_trust_bundle", trust, "a file:// URI")
    localid = p.get(doc, "localid", "", dict, {})
    socket = run_dir / "identityd.sock"
    endpoints = p.get(doc, "endpoints", "", dict, {})
    sock_uri = p.get(endpoints, "aziot_identityd", "endpoints", str, "")
    if sock_uri:
        socket = Path(sock_uri.removeprefix("unix://"))
    # the TPM service's own [tpm.endpoints] wins over the shared [endpoints], as in the TPM service's settings
    tpm_table = doc.get("tpm")
    tpm_endpoints = tpm_table.get("endpoints") if isinstance(tpm_table, dict) else None
    own = tpm_endpoints.get("aziot_tpmd") if isinstance(tpm_endpoints, dict) else None
    tpmd_uri = str(own or p.get(endpoints, "aziot_tpmd", "endpoints", str, ""))
    tpmd_socket = Path(tpmd_uri.removeprefix("unix://")) if tpmd_uri else run_dir / "tpmd.sock"
    mode = doc.get("auto_reprovisioning_mode", "Dynamic")
    if mode not in REPROVISIONING_MODES:
        p.add("auto_reprovisioning_mode", mode, '"Dynamic", "AlwaysOnStartup" or "OnErrorOnly"')
        mode = "Dynamic"
    prefer_cache = doc.get("prefer_module_identity_cache", False)
    if not isinstance(prefer_cache, bool):
        p.add("prefer_module_identity_cache", prefer_cache, "true or false")
        prefer_cache = False
    timeout = p.get(doc, "cloud_timeout_sec", "", int, 30)
    retries = p.get(doc, "cloud_retries", "", int, 1)
    gateway = p.get(doc, "local_gateway_hostname", "", str, "") or None
    parent_trust = (p.get(doc, "trust_bundle_cert", "", str, "") or None) if gateway is not None else None
    if parent_trust is not None and not parent_trust.startswith("file://"):
        p.add("trust_bundle_cert", parent_trust, "a file:// URI")
    if problems is None:
        p.raise_if_any()
    return IdentitySettings(
        hostname=p.get(doc, "hostname", "", str, "edgeward-device"),
        homedir=Path(p.get(p.get(doc, "edgeward", "", dict, {}).get("identity", {}) or {}, "homedir", "", str,
                           str(state_dir / "identityd"))),
        socket_path=socket, provisioning=provisioning, principals=tuple(principals),
        localid_domain=p.get(localid, "domain_name", "localid", str, "") or None, cloud_trust_bundle=trust,
        tpmd_socket=tpmd_socket, auto_reprovisioning_mode=cast(ReprovisioningMode, mode),
        prefer_module_identity_cache=prefer_cache,
        cloud_timeout=float(timeout), cloud_retries=retries, gateway_hostname=gateway,
        parent_trust_bundle=parent_trust,
    )


def _local_server(entry: dict[str, Any], idtype: tuple[IdType, ...] | None, where: str, p: Problems) -> bool:
    """A principal's ``localid`` (aziot-identityd-config's LocalIdOpts): whether its local identity is a server
    certificate. As aziot, only a principal with idtype "local" may carry it."""
    opts = entry.get("localid")
    if opts is None:
        return False
    if idtype is None or "local" not in idtype:
        p.add(f"{where}.localid", opts, 'no local identity options on a principal without idtype "local"')
        return False
    if (not isinstance(opts, dict) or opts.get("type") != "x509"
            or opts.get("attributes", "client") not in ("client", "server") or set(opts) - {"type", "attributes"}):
        p.add(f"{where}.localid", opts, '{ type = "x509", attributes = "client" | "server" }')
        return False
    return bool(opts.get("attributes") == "server")
