"""IoT Edge's `[edge_ca]` table, translated into the certs and keys settings that make the edge CA exist.

As `iotedge config apply` does, the super config's edge CA becomes an entry of the certs service (issued and renewed
by it) or a preloaded certificate and key. Without `[edge_ca]`, the quickstart CA: self-signed, 90 days, renewed
with a new key at 80% of its life.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..certs.kinds import EDGE_CA_CERT_ID
from ..config.problems import Problems

__all__ = ["EDGE_CA_KEY_ID", "QUICKSTART_DAYS", "apply_edge_ca"]

# Named here rather than in edge_ca.py: reading the config must not load the edge CA's issuing code.
EDGE_CA_KEY_ID = "aziot-edged-ca"

QUICKSTART_DAYS = 90
_DEFAULT_RENEW = {"rotate_key": True, "threshold": "80%", "retry": "4%"}
_ISSUED = {"method", "common_name", "expiry_days", "expiry_seconds", "url", "username", "password",
           "identity_cert", "identity_pk", "bootstrap_identity_cert", "bootstrap_identity_pk", "auto_renew"}


def apply_edge_ca(doc: Mapping[str, Any], p: Problems) -> dict[str, Any]:
    out = copy.deepcopy(dict(doc))
    raw = p.get(doc, "edge_ca", "", dict, {})
    issuance = out.setdefault("cert_issuance", {})
    if not isinstance(issuance, dict) or EDGE_CA_CERT_ID in issuance:
        return out  # a bad table is reported by the certs settings; an explicit entry wins
    if "cert" in raw or "pk" in raw:
        p.warn_unknown(raw, {"cert", "pk"}, "edge_ca")
        cert = p.get(raw, "cert", "edge_ca", str, "")
        pk = p.get(raw, "pk", "edge_ca", str, "")
        if not cert or not pk:
            p.add("edge_ca", "<cert or pk missing>", "both cert and pk (file:// URIs or a pkcs11: URI for pk)")
            return out
        preloaded_certs = out.setdefault("preloaded_certs", {})
        preloaded_keys = out.setdefault("preloaded_keys", {})
        if isinstance(preloaded_certs, dict) and isinstance(preloaded_keys, dict):
            preloaded_certs[EDGE_CA_CERT_ID] = cert
            preloaded_keys[EDGE_CA_KEY_ID] = pk
        return out
    if "method" in raw:
        p.warn_unknown(raw, _ISSUED, "edge_ca")
        entry = {k: v for k, v in raw.items() if k in _ISSUED}
        if raw.get("method") not in ("est", "local_ca", "self_signed"):
            p.add("edge_ca.method", raw.get("method"), '"est", "local_ca" or "self_signed"')
            return out
    else:
        p.warn_unknown(raw, {"auto_generated_edge_ca_expiry_days", "expiry_seconds", "auto_renew", "common_name"},
                       "edge_ca")
        days = p.get(raw, "auto_generated_edge_ca_expiry_days", "edge_ca", int, QUICKSTART_DAYS)
        if not 0 < days <= 36500:
            p.add("edge_ca.auto_generated_edge_ca_expiry_days", days, "1 to 36500 days")
            days = QUICKSTART_DAYS
        entry = {"method": "self_signed", "expiry_days": days,
                 "common_name": p.get(raw, "common_name", "edge_ca", str, "Edgeward edge CA")}
        if "expiry_seconds" in raw:
            entry["expiry_seconds"] = raw["expiry_seconds"]
        if "auto_renew" in raw:
            entry["auto_renew"] = raw["auto_renew"]
    entry.setdefault("common_name", "Edgeward edge CA")
    entry.setdefault("auto_renew", dict(_DEFAULT_RENEW))
    entry["key_id"] = EDGE_CA_KEY_ID
    entry["ca"] = True
    issuance[EDGE_CA_CERT_ID] = entry
    return out
