"""``edgeward config import``: an IoT Edge 1.1 ``config.yaml`` converted to the 1.5 super config (TOML).

What converts, as ``iotedge config import`` does: provisioning (manual connection string or X.509; DPS TPM,
symmetric key or X.509), ``certificates`` (the device CA becomes ``[edge_ca]``, ``trusted_ca_certs`` the trust
bundle, ``auto_generated_ca_lifetime_days`` the quickstart CA's lifetime), the agent, hostname and parent hostname,
``connect``/``listen`` (1.1's systemd socket names become 1.5's), the watchdog and the Moby runtime. 1.1's own
defaults are applied first (as ``iotedge config import`` does), so an absent ``certificates`` becomes the
quickstart edge CA of 90 days and an absent Moby network ``azure-iot-edge``. The reprovisioning flags become
``auto_reprovisioning_mode`` (``dynamic_reprovisioning`` -> "Dynamic", else ``always_reprovision_on_startup`` ->
"AlwaysOnStartup", else "OnErrorOnly", written explicitly because 1.5's default is "Dynamic"), and 1.1's master
encryption key file, when the device has one, is carried as ``imported_master_encryption_key`` so what modules
sealed with the 1.1 workload API still opens. What has no 1.5 counterpart (``homedir``,
``listen.min_tls_version``, unknown keys) is listed, not dropped silently. External provisioning cannot be
converted and stops the import.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..identity.connection_string import parse_connection_string
from .b64 import decode_key
from .problems import ConfigError, Problems
from .toml_write import dumps

__all__ = ["OLD_MASTER_ENCRYPTION_KEY", "ImportResult", "import_v1_config", "old_master_encryption_key"]

# Where IoT Edge 1.1's HSM library kept the master encryption key (its file name derives from the key's alias).
OLD_MASTER_ENCRYPTION_KEY = ("/var/lib/iotedge/hsm/enc_keys/"
                             "edgelet-masterWt5mT2xpO72EPKlt2Tt0Sq4uJCrMvfl2rzzKRB3pnyo_.enc.key")
_DEFAULT_NETWORK = "azure-iot-edge"  # 1.1's default Moby network
_DEFAULT_CA_DAYS = 90  # 1.1's default certificates.auto_generated_ca_lifetime_days

_TOP_LEVEL = {"provisioning", "agent", "hostname", "parent_hostname", "connect", "listen", "homedir",
              "certificates", "watchdog", "moby_runtime"}
_SOCKET_UNITS = {"fd://iotedge.mgmt.socket": "fd://aziot-edged.mgmt.socket",
                 "fd://iotedge.socket": "fd://aziot-edged.workload.socket"}


@dataclass
class ImportResult:
    doc: dict[str, Any]
    not_converted: list[str] = field(default_factory=list)

    def toml(self, source: str) -> str:
        header = [f"# Imported from IoT Edge 1.1's {source} by `edgeward config import`."]
        if self.not_converted:
            header.append("# Not converted:")
            header.extend(f"#   - {item}" for item in self.not_converted)
        return "\n".join(header) + "\n\n" + dumps(self.doc)


def old_master_encryption_key(path: str = OLD_MASTER_ENCRYPTION_KEY) -> str | None:
    """The 1.1 master encryption key file on this device, if there is one (``config import`` carries it over)."""
    return path if Path(path).is_file() else None


def _url(value: str) -> str:
    """A URL as 1.5 writes it back (a bare host gets its "/" path), so imports read like IoT Edge's own."""
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc and not parts.path:
        return urlunsplit(parts._replace(path="/"))
    return value


def _reprovisioning_mode(raw: dict[str, Any]) -> str:
    """1.1's two flags as 1.5's mode; dynamic wins, since it also reprovisions before a restart (as upstream)."""
    if raw.get("dynamic_reprovisioning") is True:
        return "Dynamic"
    if raw.get("always_reprovision_on_startup") is True:
        return "AlwaysOnStartup"
    return "OnErrorOnly"


def _file_uri(value: Any, where: str, p: Problems) -> str | None:
    """1.1 took a file path or a file:// URI; 1.5 takes a file:// URI."""
    if isinstance(value, str) and value.startswith("file:///"):
        return value
    if isinstance(value, str) and value.startswith("/"):
        return "file://" + value
    p.add(where, value, "an absolute file path or a file:// URI")
    return None


def _provisioning(raw: Any, out: dict[str, Any], p: Problems, skipped: list[str]) -> None:
    if not isinstance(raw, dict):
        p.add("provisioning", raw, "a mapping with source: manual or dps")
        return
    source = raw.get("source")
    out["auto_reprovisioning_mode"] = _reprovisioning_mode(raw)
    if source == "manual":
        auth = raw.get("authentication")
        conn = raw.get("device_connection_string")
        if isinstance(auth, dict) and auth.get("method") == "device_connection_string":
            conn = auth.get("device_connection_string")
        if conn is not None:
            try:
                hub, device_id, key = parse_connection_string(str(conn))
            except ValueError as e:
                p.add("provisioning.device_connection_string", "<redacted>",
                      f"HostName=...;DeviceId=...;SharedAccessKey=<base64> ({e})")
                return
            out["provisioning"] = {"source": "manual", "iothub_hostname": hub, "device_id": device_id,
                                   "authentication": {"method": "sas",
                                                      "device_id_pk": {"value": base64.b64encode(key).decode()}}}
            return
        if isinstance(auth, dict) and auth.get("method") == "x509":
            cert = _file_uri(auth.get("identity_cert"), "provisioning.authentication.identity_cert", p)
            pk = _file_uri(auth.get("identity_pk"), "provisioning.authentication.identity_pk", p)
            x509_hub, x509_device = auth.get("iothub_hostname"), auth.get("device_id")
            for name, value in (("iothub_hostname", x509_hub), ("device_id", x509_device)):
                if not isinstance(value, str) or not value:
                    p.add(f"provisioning.authentication.{name}", value, "a string")
            if cert and pk and isinstance(x509_hub, str) and isinstance(x509_device, str):
                out["provisioning"] = {"source": "manual", "iothub_hostname": x509_hub, "device_id": x509_device,
                                       "authentication": {"method": "x509", "identity_cert": cert,
                                                          "identity_pk": pk}}
            return
        p.add("provisioning", "<incomplete>", "device_connection_string, or authentication with method "
                                              "device_connection_string or x509")
        return
    if source == "dps":
        endpoint = raw.get("global_endpoint", "https://global.azure-devices-provisioning.net")
        scope = raw.get("scope_id")
        if not isinstance(scope, str) or not scope:
            p.add("provisioning.scope_id", scope, "the DPS ID scope")
            return
        att = raw.get("attestation")
        if att is None and isinstance(raw.get("registration_id"), str):
            att = {"method": "tpm", "registration_id": raw["registration_id"]}  # 1.1's short TPM form
        if not isinstance(att, dict):
            p.add("provisioning.attestation", att, "a mapping with method: tpm, symmetric_key or x509")
            return
        method = att.get("method")
        new_att: dict[str, Any] = {"method": method}
        if isinstance(att.get("registration_id"), str):
            new_att["registration_id"] = att["registration_id"]
        if method == "symmetric_key":
            sym = att.get("symmetric_key")
            try:
                if not isinstance(sym, str) or not decode_key(sym):
                    raise ValueError("empty")
            except ValueError:
                p.add("provisioning.attestation.symmetric_key", "<redacted>", "a base64 key")
                return
            new_att["symmetric_key"] = {"value": sym}
        elif method == "x509":
            cert = _file_uri(att.get("identity_cert"), "provisioning.attestation.identity_cert", p)
            pk = _file_uri(att.get("identity_pk"), "provisioning.attestation.identity_pk", p)
            if not (cert and pk):
                return
            new_att["identity_cert"], new_att["identity_pk"] = cert, pk
        elif method != "tpm":
            p.add("provisioning.attestation.method", method, '"tpm", "symmetric_key" or "x509"')
            return
        out["provisioning"] = {"source": "dps", "global_endpoint": _url(str(endpoint)), "id_scope": scope,
                               "attestation": new_att}
        return
    p.add("provisioning.source", source, '"manual" or "dps" (external provisioning has no IoT Edge 1.5 form)')


def _agent(raw: Any, p: Problems, skipped: list[str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        p.add("agent", raw, "a mapping")
        return None
    agent: dict[str, Any] = {k: raw[k] for k in ("name", "type") if isinstance(raw.get(k), str)}
    if isinstance(raw.get("imagePullPolicy"), str):
        agent["imagePullPolicy"] = raw["imagePullPolicy"]
    raw_config = raw.get("config")
    config: dict[str, Any] = raw_config if isinstance(raw_config, dict) else {}
    new_config: dict[str, Any] = {}
    if isinstance(config.get("image"), str):
        new_config["image"] = config["image"]
    options = config.get("createOptions")
    if isinstance(options, str) and options.strip():
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            p.add("agent.config.createOptions", options[:80], f"JSON ({e.msg})")
            options = None
    if isinstance(options, dict) and options:
        new_config["createOptions"] = options
    auth = config.get("auth")
    if isinstance(auth, dict) and auth:
        new_config["auth"] = {k: str(v) for k, v in auth.items() if v is not None}
    for key in sorted(set(config) - {"image", "createOptions", "auth"}):
        skipped.append(f"agent.config.{key}")
    agent["config"] = new_config
    env = raw.get("env")
    if isinstance(env, dict) and env:
        agent["env"] = {str(k): str(v) for k, v in env.items() if v is not None}
    for key in sorted(set(raw) - {"name", "type", "imagePullPolicy", "config", "env"}):
        skipped.append(f"agent.{key}")
    return agent


def import_v1_config(text: str, source: str = "config.yaml",
                     master_encryption_key: str | None = None) -> ImportResult:
    """Convert the text of a 1.1 config.yaml; ConfigError with every problem if it cannot be converted.
    ``master_encryption_key`` is the 1.1 device's master encryption key file (see
    :func:`old_master_encryption_key`), carried over as ``imported_master_encryption_key``."""
    try:
        import yaml  # type: ignore[import-untyped]  # noqa: PLC0415  (only this command reads YAML)
    except ImportError:
        raise ConfigError(["reading IoT Edge 1.1 config.yaml needs PyYAML (pip install pyyaml)"], source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None
    if not isinstance(raw, dict):
        raise ConfigError(["expected a YAML mapping at the top level"], source)
    p = Problems(source)
    skipped: list[str] = []
    out: dict[str, Any] = {}
    if master_encryption_key is not None:
        out["imported_master_encryption_key"] = master_encryption_key
    for key in ("hostname", "parent_hostname"):
        if isinstance(raw.get(key), str):
            out[key] = raw[key]
    certs = raw.get("certificates")
    edge_ca: dict[str, Any] | None = None
    if isinstance(certs, dict):
        if any(k in certs for k in ("device_ca_cert", "device_ca_pk", "trusted_ca_certs")):
            cert = _file_uri(certs.get("device_ca_cert"), "certificates.device_ca_cert", p)
            pk = _file_uri(certs.get("device_ca_pk"), "certificates.device_ca_pk", p)
            trusted = _file_uri(certs.get("trusted_ca_certs"), "certificates.trusted_ca_certs", p)
            if trusted:
                out["trust_bundle_cert"] = trusted
            if cert and pk:
                edge_ca = {"cert": cert, "pk": pk}
        else:
            days = certs.get("auto_generated_ca_lifetime_days", _DEFAULT_CA_DAYS)
            edge_ca = {"auto_generated_edge_ca_expiry_days": days}
        skipped.extend(f"certificates.{k}" for k in sorted(set(certs) - {
            "device_ca_cert", "device_ca_pk", "trusted_ca_certs", "auto_generated_ca_lifetime_days"}))
    elif certs is not None:
        p.add("certificates", certs, "a mapping")
    else:
        edge_ca = {"auto_generated_edge_ca_expiry_days": _DEFAULT_CA_DAYS}
    _provisioning(raw.get("provisioning"), out, p, skipped)
    if "agent" in raw:
        agent = _agent(raw["agent"], p, skipped)
        if agent is not None:
            out["agent"] = agent
    for key in ("connect", "listen"):
        table = raw.get(key)
        if not isinstance(table, dict):
            continue
        new: dict[str, Any] = {}
        for name in ("workload_uri", "management_uri"):
            uri = table.get(name)
            if isinstance(uri, str):
                new[name] = _SOCKET_UNITS.get(uri, uri)
        if "min_tls_version" in table:
            skipped.append(f"{key}.min_tls_version (1.5 serves its APIs over Unix sockets only)")
        out[key] = new
    watchdog = raw.get("watchdog")
    if isinstance(watchdog, dict) and "max_retries" in watchdog:
        out["watchdog"] = {"max_retries": watchdog["max_retries"]}
    if edge_ca is not None:
        out["edge_ca"] = edge_ca
    moby = raw.get("moby_runtime")
    if isinstance(moby, dict):
        out["moby_runtime"] = {k: moby[k] for k in ("uri", "network") if k in moby}
        out["moby_runtime"].setdefault("network", _DEFAULT_NETWORK)
        skipped.extend(f"moby_runtime.{k}" for k in sorted(set(moby) - {"uri", "network"}))
    if "homedir" in raw:
        skipped.append("homedir (1.5 keeps its state in fresh directories)")
    skipped.extend(str(k) for k in sorted(set(map(str, raw)) - _TOP_LEVEL))
    p.raise_if_any()
    return ImportResult(out, skipped)
