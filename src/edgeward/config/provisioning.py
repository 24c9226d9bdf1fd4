"""The super config's ``[provisioning]`` (IoT Edge 1.5 shapes) translated into the identity service's form.

What changes, as ``iotedge config apply`` does it: the device's X.509 identity named by location (or issuance
options) becomes the cert and key ``device-id`` in the certs and keys services; a connection string becomes hub,
device id and SAS key; ``source = "none"`` means no cloud identity; a DPS ``payload = { uri }`` file is read and
sent as given. Everything else (symmetric keys, registration ids, DPS endpoints) keeps its shape and is checked by
the identity service's own settings reader, with the same key paths the user wrote.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from ..identity.connection_string import parse_connection_string
from .issuance import ISSUANCE_KEYS, Preloads, issuance_options
from .locations import cert_location, key_location
from .problems import Problems

__all__ = ["DEVICE_ID", "translate_provisioning"]

DEVICE_ID = "device-id"  # aziotctl's cert and key id of the device identity
_PROVISIONING_KEYS = {"source", "connection_string", "iothub_hostname", "device_id", "authentication",
                      "global_endpoint", "id_scope", "attestation", "payload", "always_reprovision_on_startup"}
_PAYLOAD_MAX = 64 * 1024


def _x509_identity(table: dict[str, Any], where: str, p: Problems, preloads: Preloads,
                   issuance: dict[str, Any], *, has_local_ca: bool, has_est_url: bool, has_pkcs11_lib: bool) -> None:
    """Rewrite ``identity_cert``/``identity_pk`` in ``table`` to service ids, recording what must be preloaded or
    issued. Missing settings are left for the identity service to report."""
    cert_raw = table.get("identity_cert")
    if isinstance(cert_raw, dict):
        if "identity_pk" in table:
            p.warnings.append(f"{where}.identity_pk: ignored, the key of an issued identity_cert is created as "
                              f"{DEVICE_ID!r}")
        entry = issuance_options(cert_raw, f"{where}.identity_cert", p, preloads, DEVICE_ID,
                                 has_local_ca=has_local_ca, has_est_url=has_est_url, has_pkcs11_lib=has_pkcs11_lib,
                                 known=ISSUANCE_KEYS)
        if entry is not None:
            issuance[DEVICE_ID] = entry
        table["identity_cert"] = table["identity_pk"] = DEVICE_ID
        return
    if cert_raw is None or "identity_pk" not in table:
        return
    cert = cert_location(cert_raw, f"{where}.identity_cert", p)
    pk = key_location(table["identity_pk"], f"{where}.identity_pk", p, has_pkcs11_lib=has_pkcs11_lib)
    if cert is None or pk is None:
        table["identity_cert"] = table["identity_pk"] = DEVICE_ID  # reported above; keep the identity reader quiet
        return
    if cert.kind == "uri":
        preloads.cert(DEVICE_ID, cert.value, f"{where}.identity_cert", p)
    if pk.kind == "uri":
        preloads.key(DEVICE_ID, pk.value, f"{where}.identity_pk", p)
    table["identity_cert"] = DEVICE_ID if cert.kind == "uri" else cert.value
    table["identity_pk"] = DEVICE_ID if pk.kind == "uri" else pk.value


def _token_symmetric_key(table: dict[str, Any], name: str, where: str, p: Problems, preloads: Preloads, *,
                         has_pkcs11_lib: bool, **_: bool) -> None:
    """``{ uri = "pkcs11:..." }``: the device's SAS key is a secret (HMAC) object in a token, as aziot-keyd allows.
    It is preloaded as ``device-id`` and the identity service signs with it there, so its bytes are never read;
    a value or file:// key keeps its shape."""
    raw = table.get(name)
    if not (isinstance(raw, dict) and isinstance(raw.get("uri"), str) and raw["uri"].startswith("pkcs11:")):
        return
    loc = key_location(raw, f"{where}.{name}", p, has_pkcs11_lib=has_pkcs11_lib)
    if loc is not None:
        preloads.key(DEVICE_ID, loc.value, f"{where}.{name}", p)
    table[name] = {"key_id": DEVICE_ID}  # when reported above, this keeps the identity reader from repeating it


def _payload(raw: Any, p: Problems) -> Any:
    """IoT Edge's ``payload = { uri = "file:///...json" }``: the JSON document DPS receives with the registration."""
    if not (isinstance(raw, dict) and set(raw) == {"uri"} and isinstance(raw["uri"], str)
            and raw["uri"].startswith("file:///")):
        p.add("provisioning.payload", raw, '{ uri = "file:///path/payload.json" }')
        return None
    path = Path(raw["uri"][len("file://"):])
    try:
        with path.open("rb") as f:
            data = f.read(_PAYLOAD_MAX + 1)
        if len(data) > _PAYLOAD_MAX:
            raise ValueError(f"larger than {_PAYLOAD_MAX} bytes")
        return json.loads(data)
    except (OSError, ValueError) as e:
        p.add("provisioning.payload.uri", raw["uri"], f"a readable JSON file ({e})")
        return None


def translate_provisioning(raw: dict[str, Any], p: Problems, preloads: Preloads, issuance: dict[str, Any], *,
                           has_local_ca: bool, has_est_url: bool, has_pkcs11_lib: bool) -> dict[str, Any] | None:
    """The identity service's ``[provisioning]`` table, or None for no cloud identity (``source = "none"``)."""
    p.warn_unknown(raw, _PROVISIONING_KEYS, "provisioning")
    prov = dict(raw)
    if "always_reprovision_on_startup" in prov:
        value = prov.pop("always_reprovision_on_startup")
        if not isinstance(value, bool):
            p.add("provisioning.always_reprovision_on_startup", value, "true or false")
        # IoT Edge 1.2's form of auto_reprovisioning_mode = "AlwaysOnStartup" (super_config.reprovisioning)
    source = prov.get("source")
    opts = {"has_local_ca": has_local_ca, "has_est_url": has_est_url, "has_pkcs11_lib": has_pkcs11_lib}
    if source == "none":
        p.warn_unknown(prov, {"source"}, "provisioning")
        return None
    if source == "manual":
        if "connection_string" in prov:
            extra = sorted({"iothub_hostname", "device_id", "authentication"} & set(prov))
            if extra:
                p.add(f"provisioning.{extra[0]}", prov[extra[0]] if extra[0] != "authentication" else "<table>",
                      "connection_string, or iothub_hostname, device_id and [provisioning.authentication], not both")
                return prov
            try:
                hub, device_id, key = parse_connection_string(str(prov["connection_string"]))
            except ValueError:
                return prov  # the identity service reports it, without the key
            return {"source": "manual", "iothub_hostname": hub, "device_id": device_id,
                    "authentication": {"method": "sas", "device_id_pk": {"value": base64.b64encode(key).decode()}}}
        auth = prov.get("authentication")
        if isinstance(auth, dict):
            auth = dict(auth)
            prov["authentication"] = auth
            method = auth.get("method")
            p.warn_unknown(auth, {"method", "device_id_pk"} if method == "sas" else
                           {"method", "identity_cert", "identity_pk"} if method == "x509" else
                           {"method", "device_id_pk", "identity_cert", "identity_pk"},
                           "provisioning.authentication")
            if method == "x509":
                _x509_identity(auth, "provisioning.authentication", p, preloads, issuance, **opts)
            elif method == "sas":
                _token_symmetric_key(auth, "device_id_pk", "provisioning.authentication", p, preloads, **opts)
        elif auth is not None:
            p.add("provisioning.authentication", auth, 'a table with method = "sas" or "x509"')
            prov.pop("authentication")
        return prov
    if source == "dps":
        att = prov.get("attestation")
        if isinstance(att, dict):
            att = dict(att)
            prov["attestation"] = att
            method = att.get("method")
            known = {"method", "registration_id"} | (
                {"symmetric_key", "group_enrollment"} if method == "symmetric_key" else
                {"identity_cert", "identity_pk"} if method == "x509" else set())
            p.warn_unknown(att, known, "provisioning.attestation")
            if method == "x509":
                _x509_identity(att, "provisioning.attestation", p, preloads, issuance, **opts)
            elif method == "symmetric_key":
                _token_symmetric_key(att, "symmetric_key", "provisioning.attestation", p, preloads, **opts)
        elif att is not None:
            p.add("provisioning.attestation", att, 'a table with method = "symmetric_key", "x509" or "tpm"')
            prov.pop("attestation")
        if "payload" in prov:
            payload = _payload(prov.pop("payload"), p)
            if payload is not None:
                prov["payload"] = payload
        return prov
    p.add("provisioning.source", "<missing>" if source is None else source, '"manual", "dps" or "none"')
    return None
