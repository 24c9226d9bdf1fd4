"""The super config (IoT Edge 1.5's ``/etc/aziot/config.toml``) checked and split into per-service documents.

Each service reads its own document (keyd, certd, identityd, tpmd, edged), holding only the tables it reads, in the
shape its settings reader expects; ``edgeward run`` parses those documents and ``edgeward config apply`` writes
them, for ``edgeward serve <service> --config-dir`` (one user per service: a service can read its own file only,
so what it needs to know of the others is written into it). Where the super config names a thing differently from
a service (a device identity given as a file URI, an EST identity given by location, the edge CA,
``parent_hostname``), this module translates, as ``iotedge config apply`` does. Values a service reader checks keep
their key path, so its messages still name the setting the user wrote; what this module translates, it checks
itself. Unknown keys are warnings, and settings that Edgeward accepts for compatibility but does not act on yet are
warnings too, so nothing is silently ignored.
"""

from __future__ import annotations

import copy
import ipaddress
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..certs.dn import common_name_of
from ..certs.kinds import EDGE_CA_CERT_ID
from ..keys.aead import IMPORTED_MASTER_KEY_ID
from ..runtime.edge_ca_config import apply_edge_ca
from .issuance import ISSUANCE_KEYS, Preloads, est_auth, issuance_options, renew_policy, subject_table
from .locations import cert_location, key_location, valid_id
from .problems import Problems
from .provisioning import translate_provisioning
from .service_files import PEERS, SERVICE_FILES
from .toml_write import dumps

__all__ = ["EST_BOOTSTRAP_ID", "EST_ID", "LOCAL_CA", "PEERS", "SERVICE_FILES", "ServiceConfigs",
           "split_super_config"]

EST_ID = "est-id"
EST_BOOTSTRAP_ID = "est-bootstrap-id"
LOCAL_CA = "local-ca"
TRUST_BUNDLE = "aziot-edged-trust-bundle"
MANIFEST_TRUST_BUNDLE = "aziot-edged-manifest-trust-bundle"

TOP_LEVEL = {
    "hostname", "parent_hostname", "local_gateway_hostname", "trust_bundle_cert", "manifest_trust_bundle_cert",
    "allow_elevated_docker_permissions", "auto_reprovisioning_mode", "homedir", "cloud_timeout_sec",
    "cloud_retries", "provisioning", "localid", "aziot_keys", "preloaded_keys", "cert_issuance", "preloaded_certs",
    "tpm", "agent", "connect", "listen", "watchdog", "edge_ca", "moby_runtime", "image_garbage_collection",
    "principal", "endpoints", "edgeward", "homedir_path", "iotedge_max_requests", "aziot_max_requests",
}
_TABLES = {"provisioning", "localid", "aziot_keys", "preloaded_keys", "cert_issuance", "preloaded_certs", "tpm",
           "agent", "connect", "listen", "watchdog", "edge_ca", "moby_runtime", "image_garbage_collection",
           "endpoints", "edgeward", "iotedge_max_requests", "aziot_max_requests"}
_EDGEWARD = {"keys": "keyd", "identity": "identityd", "runtime": "edged", "integrity": "edged", "keylime": "edged"}
_ENDPOINTS = {"aziot_keyd": "keyd", "aziot_certd": "certd", "aziot_identityd": "identityd", "aziot_tpmd": "tpmd"}
# Who calls whom: in the packaged deployment each service reads its own file only, so the endpoints of the services
# it calls are written into its file too (a socket moved in [endpoints] must reach every caller).
_CALLERS = {"keyd": ("certd", "identityd", "edged"), "certd": ("identityd", "edged"), "identityd": ("edged",),
            "tpmd": ("identityd", "edged")}
# Settings that name a file or directory by a plain path (the rest are file:// or unix:// URIs).
_PATH_SETTINGS = ("homedir_path", "pkcs11_lib_path", "homedir")
_REPROVISIONING = ("Dynamic", "AlwaysOnStartup", "OnErrorOnly")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_UNUSED = "accepted for compatibility with IoT Edge, not used by Edgeward yet"
# Reprovisioning, the module identity cache and 1.1's master encryption key (identity/service.py, the workload
# API's decrypt): read by the identity service, and by the keys service as a preloaded key.
TOP_LEVEL |= {"prefer_module_identity_cache", "imported_master_encryption_key"}
_MASTER_KEY_LENGTH = 32  # IoT Edge 1.1's master encryption key: AES-256, raw bytes
# Simultaneous requests per caller on each socket (aziot's http-common counts connections per uid per socket):
# [aziot_max_requests] for aziot's services, [iotedge_max_requests] for aziot-edged's two APIs.
MAX_REQUESTS = {"aziot_max_requests": ("keyd", "certd", "identityd", "tpmd"),
                "iotedge_max_requests": ("management", "workload")}
MAX_REQUESTS_LIMIT = 10_000


@dataclass(frozen=True)
class ServiceConfigs:
    """One document per service, as ``config apply`` writes them and ``edgeward run`` reads them."""

    keyd: dict[str, Any]
    certd: dict[str, Any]
    identityd: dict[str, Any]
    edged: dict[str, Any]
    tpmd: dict[str, Any] | None  # None: no TPM service (no [tpm] and no TPM attestation)

    def files(self) -> dict[str, dict[str, Any]]:
        """The documents by file name (:data:`SERVICE_FILES`). ``edgeward serve <service> --config-dir <dir>`` reads
        its service's file and no other, so each holds everything its service needs: the endpoints of the services
        it calls, keyd's the uids of identity principals, edged's ``[edgeward.peers]``. Each is also itself a valid
        super config (``serve <service> -c <file>`` reads it); the TPM settings therefore stay in their ``[tpm]``
        table."""
        out = {"keyd.toml": self.keyd, "certd.toml": self.certd, "identityd.toml": self.identityd}
        if self.tpmd is not None:
            out["tpmd.toml"] = {"tpm": self.tpmd}
        out["edged.toml"] = self.edged
        return out

    def render(self, source_name: str) -> dict[str, str]:
        """The file texts ``config apply`` writes, each headed by where it came from (raises TomlWriteError for a
        value TOML cannot hold, such as a JSON null in a DPS payload)."""
        header = (f"# Written by `edgeward config apply` from {source_name}: edit that file and apply again.\n"
                  "# Holds only what this service reads.\n")
        return {name: header + ("\n" if doc else "") + dumps(doc) for name, doc in self.files().items()}

    @property
    def cloud_timeout_sec(self) -> int | None:
        value = self.identityd.get("cloud_timeout_sec")
        return value if isinstance(value, int) else None


def valid_hostname(value: str) -> bool:
    """A DNS name (RFC 1123 labels) or an IP address: what module certificates and child devices can use."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return True
    name = value.removesuffix(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


class _Splitter:
    """One pass over the super config; every problem goes to ``p``, nothing is raised."""

    def __init__(self, doc: Mapping[str, Any], p: Problems) -> None:
        self.doc = doc
        self.p = p
        self.preloads = Preloads()
        self.issuance: dict[str, Any] = {}
        self.has_pkcs11_lib = False
        self.has_local_ca = False
        self.has_est_url = False

    def table(self, key: str) -> dict[str, Any]:
        """A copy of a top-level table; a wrong type was reported once by :meth:`run` and reads as empty."""
        value = self.doc.get(key, {})
        return copy.deepcopy(value) if isinstance(value, dict) else {}

    def string(self, key: str, expected: str = "a string") -> str | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.p.add(key, value, expected)
            return None
        return value

    def unused(self, path: str) -> None:
        self.p.warnings.append(f"{path}: {_UNUSED}")

    # -- the parts ---------------------------------------------------------------------------------------------

    def hostnames(self, identityd: dict[str, Any], edged: dict[str, Any]) -> None:
        for key in ("hostname", "parent_hostname", "local_gateway_hostname"):
            value = self.string(key, "a DNS name or an IP address")
            if value is not None and not valid_hostname(value):
                self.p.add(key, value, "a DNS name (letters, digits, '-' in labels of at most 63) or an IP address")
            elif value is not None and key == "hostname":
                identityd["hostname"] = edged["hostname"] = value
                if len(value) > 64:
                    self.p.warnings.append("hostname: longer than 64 characters, too long for the common name of "
                                           "module server certificates")
        parent, gateway = self.doc.get("parent_hostname"), self.doc.get("local_gateway_hostname")
        if isinstance(parent, str) and isinstance(gateway, str) and parent != gateway:
            self.p.add("local_gateway_hostname", gateway, f"the same as parent_hostname ({parent!r}) or unset; "
                       "they are two names of one setting")
        chosen = parent if isinstance(parent, str) else gateway
        if isinstance(chosen, str) and valid_hostname(chosen):
            # the identity service sends hub traffic to the parent; the runtime tells the agent and modules
            identityd["local_gateway_hostname"] = edged["local_gateway_hostname"] = chosen

    def principals(self, keyd: dict[str, Any], certd: dict[str, Any], identityd: dict[str, Any]) -> None:
        raw = self.doc.get("principal", [])
        if not isinstance(raw, list):
            self.p.add("principal", raw, "an array of tables ([[principal]])")
            return
        out: dict[str, list[dict[str, Any]]] = {"keys": [], "certs": [], "identity": []}
        names: list[str] = []
        for i, entry in enumerate(raw):
            where = f"principal[{i}]"
            if not isinstance(entry, dict):
                self.p.add(where, entry, "a table with uid and keys, certs or name")
                continue
            self.p.warn_unknown(entry, {"uid", "keys", "certs", "name", "idtype", "localid"}, where)
            before = len(self.p.items)
            uid = entry.get("uid")
            if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2**32:
                self.p.add(f"{where}.uid", "<missing>" if uid is None else uid, "a non-negative uid")
            for field, what in (("keys", "key"), ("certs", "cert")):
                globs = entry.get(field)
                if globs is not None and not (isinstance(globs, list) and all(isinstance(g, str) for g in globs)):
                    self.p.add(f"{where}.{field}", globs, f"a list of {what} id globs")
            name = entry.get("name")
            if name is not None and not (isinstance(name, str) and valid_id(name)):
                self.p.add(f"{where}.name", name, "a principal name without '/' or whitespace")
            idtype = entry.get("idtype")
            if idtype is not None:
                if name is None:
                    self.p.add(f"{where}.idtype", idtype, "a name as well (idtype belongs to identity principals)")
                elif not (isinstance(idtype, list) and all(t in ("device", "module", "local") for t in idtype)):
                    self.p.add(f"{where}.idtype", idtype, 'a list of "device", "module", "local"')
            if name is not None and idtype is None and {"keys", "certs"} & set(entry):
                # A named principal without idtype is one of aziot's daemons (every identity, every module's key
                # handle); meant for a host agent limited to a few key or cert ids, it would be a silent promotion.
                self.p.add(f"{where}.idtype", "<missing>",
                           'idtype = ["device"|"module"|"local"] for a principal that also names keys or certs '
                           "(without idtype it may use every identity and its keys); or drop its name to keep it a "
                           "keys/certs principal")
            if not {"keys", "certs", "name"} & set(entry):
                self.p.add(where, "<incomplete>", "keys, certs or name (what this uid may use)")
            if len(self.p.items) > before:
                continue
            if "keys" in entry:
                out["keys"].append({"uid": uid, "keys": entry["keys"]})
            if "certs" in entry:
                out["certs"].append({"uid": uid, "certs": entry["certs"]})
            if name is not None:
                names.append(name)
                out["identity"].append({k: entry[k] for k in ("uid", "name", "idtype", "localid") if k in entry})
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.p.add("principal.name", dup, "unique principal names")
        # An identity principal signs with the key handles the identity service gives it, so the keys service must
        # let its uid connect; with no key globs it may create, load or move no key itself. Written into keyd's
        # file because the keys service reads no other (a uid that already has key globs is not repeated).
        key_uids = {entry["uid"] for entry in out["keys"]}
        for entry in out["identity"]:
            if entry["uid"] not in key_uids:
                out["keys"].append({"uid": entry["uid"], "keys": []})
                key_uids.add(entry["uid"])
        for into, key in ((keyd, "keys"), (certd, "certs"), (identityd, "identity")):
            if out[key]:
                into["principal"] = out[key]

    def est(self, raw: Any) -> dict[str, Any] | None:
        where = "cert_issuance.est"
        if not isinstance(raw, dict):
            self.p.add(where, raw, "a table with trusted_certs, [auth] and [urls]")
            return None
        self.p.warn_unknown(raw, {"trusted_certs", "auth", "urls", "identity_auto_renew"}, where)
        out: dict[str, Any] = {}
        trusted = raw.get("trusted_certs", [])
        if not isinstance(trusted, list):
            self.p.add(f"{where}.trusted_certs", trusted, "a list of file:// URIs or cert ids")
            trusted = []
        ids: list[str] = []
        for i, item in enumerate(trusted):
            loc = cert_location(item, f"{where}.trusted_certs[{i}]", self.p)
            if loc is None:
                continue
            if loc.kind == "uri":
                cert_id = f"est-server-ca-{i + 1}"  # aziotctl's naming
                self.preloads.cert(cert_id, loc.value, f"{where}.trusted_certs[{i}]", self.p)
                ids.append(cert_id)
            else:
                ids.append(loc.value)
        if ids or "trusted_certs" in raw:
            out["trusted_certs"] = ids
        auth = raw.get("auth", {})
        if not isinstance(auth, dict):
            self.p.add(f"{where}.auth", auth, "a table with username/password and/or an X.509 identity")
        else:
            self.p.warn_unknown(auth, {"username", "password", "identity_cert", "identity_pk",
                                       "bootstrap_identity_cert", "bootstrap_identity_pk"}, f"{where}.auth")
            translated = est_auth(auth, f"{where}.auth", self.p, self.preloads, ids=(EST_ID, EST_BOOTSTRAP_ID),
                                  has_pkcs11_lib=self.has_pkcs11_lib)
            if translated:
                out["auth"] = translated
        urls = raw.get("urls", {})
        if not isinstance(urls, dict):
            self.p.add(f"{where}.urls", urls, 'a table of cert id = "https://..." (default for all)')
        else:
            out["urls"] = urls  # checked by the certs service, under the same path
            self.has_est_url = isinstance(urls.get("default"), str)
        if "identity_auto_renew" in raw:
            policy = renew_policy(raw["identity_auto_renew"], f"{where}.identity_auto_renew", self.p)
            if policy is not None:
                out["identity_auto_renew"] = policy
        return out

    def local_ca(self, raw: Any) -> dict[str, Any] | None:
        where = "cert_issuance.local_ca"
        if not isinstance(raw, dict):
            self.p.add(where, raw, "a table with cert and pk")
            return None
        self.p.warn_unknown(raw, {"cert", "pk", "common_name", "expiry_days"}, where)
        cert_raw, pk_raw = raw.get("cert"), raw.get("pk")
        extra = {k: raw[k] for k in ("common_name", "expiry_days") if k in raw}
        if isinstance(cert_raw, dict):
            # IoT Edge's issued local CA; Edgeward creates it itself, self-signed, on first use
            if cert_raw.get("method") != "self_signed":
                self.p.add(f"{where}.cert.method", cert_raw.get("method", "<missing>"),
                           '"self_signed" (Edgeward creates the local CA itself; a local CA issued by EST or by '
                           "another local CA is not supported)")
                return None
            if "pk" in raw:
                self.p.warnings.append(f"{where}.pk: ignored, the key of an issued local CA is created as "
                                       f"{LOCAL_CA!r}")
            entry = issuance_options(cert_raw, f"{where}.cert", self.p, self.preloads, LOCAL_CA,
                                     has_local_ca=False, has_est_url=self.has_est_url,
                                     has_pkcs11_lib=self.has_pkcs11_lib,
                                     known={"method", "common_name", "expiry_days", "subject"})
            if entry is None:
                return None
            return {"cert": LOCAL_CA, "pk": LOCAL_CA,
                    **{k: entry[k] for k in ("common_name", "expiry_days") if k in entry}, **extra}
        if cert_raw is None or pk_raw is None:
            self.p.add(where, "<incomplete>", "both cert and pk (file:// URIs, or the CA's cert id and key id)")
            return None
        cert = cert_location(cert_raw, f"{where}.cert", self.p)
        pk = key_location(pk_raw, f"{where}.pk", self.p, has_pkcs11_lib=self.has_pkcs11_lib)
        if cert is None or pk is None:
            return None
        if cert.kind == "uri":
            self.preloads.cert(LOCAL_CA, cert.value, f"{where}.cert", self.p)
        if pk.kind == "uri":
            self.preloads.key(LOCAL_CA, pk.value, f"{where}.pk", self.p)
        return {"cert": LOCAL_CA if cert.kind == "uri" else cert.value,
                "pk": LOCAL_CA if pk.kind == "uri" else pk.value, **extra}

    def cert_issuance(self, raw: dict[str, Any]) -> None:
        """``est`` and ``local_ca`` first: the entries that follow (and the device identity) depend on them."""
        if "est" in raw:
            est = self.est(raw["est"])
            if est is not None:
                self.issuance["est"] = est
        if "local_ca" in raw:
            local_ca = self.local_ca(raw["local_ca"])
            if local_ca is not None:
                self.issuance["local_ca"] = local_ca
                self.has_local_ca = True
        for cert_id, entry in raw.items():
            if cert_id not in ("est", "local_ca"):
                self.issuance[cert_id] = entry  # Edgeward's per-cert entries: the certs service checks them

    def edge_ca(self, raw: dict[str, Any]) -> None:
        """Normalize ``[edge_ca]`` (IoT Edge 1.5's pk = { uri }, EST identities by location, subject), check what
        the runtime's edge CA translation does not, then let it add the edge CA to the certs and keys settings."""
        where = "edge_ca"
        clean = dict(raw)
        before = len(self.p.items)
        if "cert" in raw or "pk" in raw:
            self.p.warn_unknown(raw, {"cert", "pk"}, where)
            clean = {}
            if "cert" not in raw or "pk" not in raw:
                self.p.add(where, "<cert or pk missing>", "both cert and pk (file:// URIs or a pkcs11: URI for pk)")
            else:
                cert = cert_location(raw["cert"], f"{where}.cert", self.p, allow_id=False)
                pk = key_location(raw["pk"], f"{where}.pk", self.p, has_pkcs11_lib=self.has_pkcs11_lib)
                if pk is not None and pk.kind != "uri":
                    self.p.add(f"{where}.pk", pk.value, "a file:// or pkcs11: URI")
                if cert is not None and pk is not None:
                    clean = {"cert": cert.value, "pk": pk.value}
        elif "method" in raw:
            entry = issuance_options(raw, where, self.p, self.preloads, EDGE_CA_CERT_ID,
                                     has_local_ca=self.has_local_ca, has_est_url=self.has_est_url,
                                     has_pkcs11_lib=self.has_pkcs11_lib, known=ISSUANCE_KEYS)
            clean = {k: v for k, v in (entry or {}).items() if k != "key_id"}
        else:
            known = {"auto_generated_edge_ca_expiry_days", "expiry_seconds", "auto_renew", "common_name"}
            self.p.warn_unknown(raw, known | {"subject"}, where)
            clean = {k: v for k, v in raw.items() if k in known}
            if "subject" in raw:  # IoT Edge 1.5's quickstart CA takes a subject too
                subject = subject_table(raw["subject"], f"{where}.subject", self.p)
                cn = common_name_of(tuple(subject.items())) if subject is not None else None
                if cn is not None and "common_name" not in clean:
                    clean["common_name"] = cn
            if "auto_renew" in raw:
                policy = renew_policy(raw["auto_renew"], f"{where}.auto_renew", self.p)
                if policy is None:
                    clean.pop("auto_renew")
                else:
                    clean["auto_renew"] = policy
            seconds = raw.get("expiry_seconds")
            if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0):
                self.p.add(f"{where}.expiry_seconds", seconds, "a positive number of seconds")
        if len(self.p.items) > before:
            return  # no edge CA from a table with problems (they are reported above)
        doc: dict[str, Any] = {"cert_issuance": self.issuance, "preloaded_certs": self.preloads.certs,
                               "preloaded_keys": self.preloads.keys}
        if raw:
            doc["edge_ca"] = clean
        silent = Problems()  # the warnings were given above, at the user's paths
        out = apply_edge_ca(doc, silent)
        self.p.items.extend(silent.items)
        self.issuance.update(out["cert_issuance"])
        # the full DN, which the runtime's edge CA translation does not carry (checked above)
        if ("subject" in raw and not ("cert" in raw or "pk" in raw)
                and isinstance(self.issuance.get(EDGE_CA_CERT_ID), dict)):
            self.issuance[EDGE_CA_CERT_ID]["subject"] = subject_table(raw["subject"], "edge_ca.subject", Problems())
        self.preloads.certs.update(out["preloaded_certs"])
        self.preloads.keys.update(out["preloaded_keys"])

    def trust_bundles(self, identityd: dict[str, Any], edged: dict[str, Any]) -> None:
        for key, cert_id in (("trust_bundle_cert", TRUST_BUNDLE), ("manifest_trust_bundle_cert",
                                                                    MANIFEST_TRUST_BUNDLE)):
            if key not in self.doc:
                continue
            loc = cert_location(self.doc[key], key, self.p, allow_id=False)
            if loc is None:
                continue
            self.preloads.cert(cert_id, loc.value, key, self.p)
            edged[key] = loc.value  # the workload API's trust bundles (runtime/edge_ca.py)
            if key == "trust_bundle_cert" and "local_gateway_hostname" in identityd:
                identityd[key] = loc.value  # nested edge: the parent's CAs, for the identity service's TLS

    def edged_settings(self, edged: dict[str, Any]) -> None:
        for key, kind, expected in (("allow_elevated_docker_permissions", bool, "true or false"),
                                    ("homedir", str, "an absolute directory path")):
            if key in self.doc:
                value = self.doc[key]
                if not isinstance(value, kind) or (kind is str and not str(value).startswith("/")):
                    self.p.add(key, value, expected)
                else:
                    edged[key] = value
                    if key != "allow_elevated_docker_permissions":  # the runtime acts on it (runtime/privileges.py)
                        self.unused(key)
        mode = self.doc.get("auto_reprovisioning_mode")
        if mode is not None:
            if mode not in _REPROVISIONING:
                self.p.add("auto_reprovisioning_mode", mode, '"Dynamic", "AlwaysOnStartup" or "OnErrorOnly"')
            else:
                edged["auto_reprovisioning_mode"] = mode
        if "agent" in self.doc:
            agent = self.table("agent")
            config = agent.get("config")
            if isinstance(config, dict):
                self.p.warn_unknown(config, {"image", "createOptions", "auth", "digest", "settings"}, "agent.config")
            if isinstance(self.doc["agent"], dict):
                edged["agent"] = agent
        for key in ("connect", "listen"):
            if key not in self.doc:
                continue
            table = self.table(key)  # checked, and its unknown keys reported, by the runtime's settings
            if isinstance(self.doc[key], dict):
                edged[key] = table
        if "watchdog" in self.doc:
            watchdog = self.table("watchdog")
            self.p.warn_unknown(watchdog, {"max_retries"}, "watchdog")
            if isinstance(self.doc["watchdog"], dict):
                edged["watchdog"] = watchdog
        if "moby_runtime" in self.doc:
            moby = self.table("moby_runtime")
            # IoT Edge's network (a name, or a table with name, ipv6, ipam): checked by the runtime's settings
            if "content_trust" in moby:
                self.unused("moby_runtime.content_trust")
            if isinstance(self.doc["moby_runtime"], dict):
                edged["moby_runtime"] = moby
        if "image_garbage_collection" in self.doc:
            gc = self.table("image_garbage_collection")  # checked by the runtime's settings (runtime/image_gc.py)
            if isinstance(self.doc["image_garbage_collection"], dict):
                edged["image_garbage_collection"] = gc

    def identity_cloud(self, identityd: dict[str, Any]) -> None:
        for key, low, high in (("cloud_timeout_sec", 1, 3600), ("cloud_retries", 0, 100)):
            if key not in self.doc:
                continue
            value = self.doc[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                self.p.add(key, value, f"an integer from {low} to {high}")
            else:
                identityd[key] = value

    def max_requests(self, docs: dict[str, dict[str, Any]], tpmd: dict[str, Any] | None) -> None:
        """``[aziot_max_requests]`` and ``[iotedge_max_requests]``: each service's file keeps its own entry under the
        same table (so it is itself a valid config), the TPM service's goes to its ``max_requests``."""
        for table, names in MAX_REQUESTS.items():
            if table not in self.doc:
                continue
            raw = self.table(table)
            self.p.warn_unknown(raw, set(names), table)
            for name in names:
                if name not in raw:
                    continue
                value = raw[name]
                if (not isinstance(value, int) or isinstance(value, bool)
                        or not 1 <= value <= MAX_REQUESTS_LIMIT):
                    self.p.add(f"{table}.{name}", value, f"an integer from 1 to {MAX_REQUESTS_LIMIT}")
                elif name == "tpmd":
                    if tpmd is not None:
                        tpmd.setdefault("max_requests", value)
                else:
                    service = "edged" if table == "iotedge_max_requests" else name
                    docs[service].setdefault(table, {})[name] = value

    def reprovisioning(self, identityd: dict[str, Any]) -> None:
        """``auto_reprovisioning_mode`` and ``prefer_module_identity_cache`` act in the identity service (it
        provisions, and answers module identities); the mode's value was checked with the runtime's settings."""
        mode = self.doc.get("auto_reprovisioning_mode")
        prov = self.doc.get("provisioning")
        legacy = prov.get("always_reprovision_on_startup") if isinstance(prov, dict) else None
        if legacy is True and mode is None:  # IoT Edge 1.2's flag, where 1.5's mode is not given
            mode = "AlwaysOnStartup"
        elif legacy is True and mode != "AlwaysOnStartup":
            self.p.warnings.append(f"provisioning.always_reprovision_on_startup: auto_reprovisioning_mode = "
                                   f"{mode!r} decides instead")
        if mode in _REPROVISIONING:
            identityd["auto_reprovisioning_mode"] = mode
        if "prefer_module_identity_cache" in self.doc:
            prefer = self.doc["prefer_module_identity_cache"]
            if not isinstance(prefer, bool):
                self.p.add("prefer_module_identity_cache", prefer, "true or false")
            else:
                identityd["prefer_module_identity_cache"] = prefer

    def imported_master_encryption_key(self) -> None:
        """IoT Edge 1.1's master encryption key (``iotedge config import`` names its file): preloaded into the
        keys service under IoT Edge 1.5's id, so the workload API still opens what modules sealed with it. It is
        used where it is, so it is checked here, where a problem names the setting."""
        key = "imported_master_encryption_key"
        raw = self.doc.get(key)
        if raw is None:
            return
        path = raw.removeprefix("file://") if isinstance(raw, str) else None
        if path is None or not path.startswith("/"):
            self.p.add(key, raw, "the absolute path of IoT Edge 1.1's master encryption key file")
            return
        try:
            with Path(path).open("rb") as f:
                size = len(f.read(_MASTER_KEY_LENGTH + 1))
        except OSError as e:
            self.p.add(key, raw, f"a readable file ({e.strerror or e})")
            return
        if size != _MASTER_KEY_LENGTH:
            self.p.add(key, raw, f"a file of {_MASTER_KEY_LENGTH} bytes (IoT Edge 1.1's AES-256 master encryption "
                                 f"key), not {'more' if size > _MASTER_KEY_LENGTH else size}")
            return
        self.preloads.key(IMPORTED_MASTER_KEY_ID, f"file://{path}", key, self.p)

    def edgeward(self, docs: dict[str, dict[str, Any]]) -> None:
        ours = self.table("edgeward")
        for name, value in ours.items():
            service = _EDGEWARD.get(name)
            if name == PEERS:
                self.p.warnings.append(f"edgeward.{name}: ignored here; `edgeward config apply` writes it into "
                                       "edged.toml from the rest of this file")
            elif service is None:
                self.p.warnings.append(f"edgeward.{name}: unknown setting, ignored")
            elif not isinstance(value, dict):
                self.p.add(f"edgeward.{name}", value, "a table")
            else:
                docs[service].setdefault("edgeward", {})[name] = value

    def tpm_owner_for_keys(self, keyd: dict[str, Any], tpmd: dict[str, Any] | None) -> None:
        """``[tpm.hierarchy_authorization] owner`` is the owner hierarchy's authValue: the keys service's TPM backend
        needs it too when it keeps keys (or the master key) in the TPM, to create the storage root key they are
        wrapped under. ``[edgeward.keys] tpm_owner_auth``, when given, wins; ``str:`` keeps the value literal."""
        hier = tpmd.get("hierarchy_authorization") if tpmd is not None else None
        owner = hier.get("owner") if isinstance(hier, dict) else None
        keys = keyd.get("edgeward", {}).get("keys")
        if not (isinstance(owner, str) and owner and isinstance(keys, dict)):
            return
        if keys.get("backend") == "tpm" or keys.get("master_key") == "tpm":
            keys.setdefault("tpm_owner_auth", f"str:{owner}")

    def endpoints(self, docs: dict[str, dict[str, Any]], tpmd: dict[str, Any] | None) -> None:
        """Each service's endpoint goes to its own file and to the files of the services that call it
        (:data:`_CALLERS`): in the packaged deployment a service can read no other file."""
        raw = self.table("endpoints")
        self.p.warn_unknown(raw, set(_ENDPOINTS), "endpoints")
        seen: dict[str, str] = {}  # socket path -> the endpoint that named it first
        for name, value in raw.items():
            service = _ENDPOINTS.get(name)
            if service is None:
                continue
            if not (isinstance(value, str) and value.startswith("unix:///")):
                self.p.add(f"endpoints.{name}", value, "a unix:///path URI")
                continue
            path = posixpath.normpath(unquote(urlsplit(value).path))
            if path in seen:  # whichever binds last takes the other's callers, who then talk to the wrong service
                self.p.add(f"endpoints.{name}", value, f"a socket of its own (endpoints.{seen[path]} is the same)")
            seen.setdefault(path, name)
            if service == "tpmd":
                if tpmd is not None:
                    tpmd.setdefault("endpoints", {}).setdefault(name, value)
            else:
                for into in (service, *_CALLERS[service]):
                    docs[into].setdefault("endpoints", {})[name] = value
        # The identity service (DPS TPM attestation) and the runtime (the audit log's TPM counter) reach the TPM
        # service: they need its socket too, and the TPM table's own endpoint wins over the shared one, as in the TPM
        # service's settings.
        own = tpmd.get("endpoints") if tpmd is not None else None
        tpm_uri = own.get("aziot_tpmd") if isinstance(own, dict) else None
        if not isinstance(tpm_uri, str):
            tpm_uri = raw.get("aziot_tpmd")
        if isinstance(tpm_uri, str) and tpm_uri.startswith("unix:///"):
            for into in _CALLERS["tpmd"]:
                docs[into].setdefault("endpoints", {})["aziot_tpmd"] = tpm_uri

    def peers(self, docs: dict[str, dict[str, Any]], tpmd: dict[str, Any] | None,
              config_files: Sequence[Path]) -> None:
        """``[edgeward.peers]`` in edged.toml: what the module runtime needs from the other services' files, which it
        cannot read in the packaged deployment (each file is readable by its own service's user only):

        - ``provisioning``: the identity service's provisioning source (``"dps"``, ``"manual"`` or ``"none"``):
          module identities come from the cloud through the identity service, or are minted locally;
        - ``tpm``: whether a TPM service runs (the audit log is anchored to a TPM counter over its socket);
        - ``protected_paths``: the config files and every file or directory the other services name (file://
          URIs, homedirs, sockets, the PKCS#11 library), which no module may bind (runtime/privileges.py);
        - ``principal_uids`` (when there are principals): the uids of every ``[[principal]]`` of keyd, certd and
          identityd, which no host-process module may run as (runtime/engines/proclaunch.py).

        A change in any of them changes edged.toml, so ``config apply`` restarts the runtime with the rest."""
        prov = docs["identityd"].get("provisioning")
        source = prov.get("source") if isinstance(prov, dict) else None
        named = [str(path) for path in config_files]
        for doc in (docs["keyd"], docs["certd"], docs["identityd"], tpmd or {}):  # as daemon._files_of walks them
            named += _named_paths(doc)
        peers: dict[str, Any] = {
            "provisioning": source if source in ("dps", "manual") else "none",
            "tpm": tpmd is not None,
            "protected_paths": list(dict.fromkeys(named)),
        }
        principal_uids = list(dict.fromkeys(entry["uid"] for name in ("keyd", "certd", "identityd")
                                            for entry in docs[name].get("principal", [])))
        if principal_uids:
            peers["principal_uids"] = principal_uids
        docs["edged"].setdefault("edgeward", {})[PEERS] = peers

    # -- the whole document ------------------------------------------------------------------------------------

    def run(self, config_files: Sequence[Path] = ()) -> ServiceConfigs:
        doc, p = self.doc, self.p
        p.warn_unknown(doc, TOP_LEVEL, "")
        for key in sorted(_TABLES & set(doc)):
            if not isinstance(doc[key], dict):  # reported once here; the parts below see an empty table
                p.add(key, doc[key], "a table")
        keyd: dict[str, Any] = {}
        certd: dict[str, Any] = {}
        identityd: dict[str, Any] = {}
        edged: dict[str, Any] = {}
        aziot_keys = doc.get("aziot_keys")
        if isinstance(aziot_keys, dict):
            keyd["aziot_keys"] = copy.deepcopy(aziot_keys)
            self.has_pkcs11_lib = isinstance(aziot_keys.get("pkcs11_lib_path"), str)
        user_keys, user_certs = self.table("preloaded_keys"), self.table("preloaded_certs")
        for key_id in user_keys:
            self.preloads.origin[f"key:{key_id}"] = f"preloaded_keys.{key_id}"
        for cert_id in user_certs:
            self.preloads.origin[f"cert:{cert_id}"] = f"preloaded_certs.{cert_id}"
        self.preloads.keys.update(user_keys)
        self.preloads.certs.update(user_certs)

        self.hostnames(identityd, edged)
        self.identity_cloud(identityd)
        self.cert_issuance(self.table("cert_issuance"))
        tpm_needed = False
        if isinstance(doc.get("provisioning"), dict):
            prov = translate_provisioning(self.table("provisioning"), p, self.preloads, self.issuance,
                                          has_local_ca=self.has_local_ca, has_est_url=self.has_est_url,
                                          has_pkcs11_lib=self.has_pkcs11_lib)
            if prov is not None:
                identityd["provisioning"] = prov
                att = prov.get("attestation")
                tpm_needed = prov.get("source") == "dps" and isinstance(att, dict) and att.get("method") == "tpm"
        if isinstance(doc.get("localid"), dict):
            identityd["localid"] = self.table("localid")
            # certd keeps names under the local identity domain for local identities (local-id-*) only
            certd["localid"] = self.table("localid")
        self.edge_ca(self.table("edge_ca"))
        self.trust_bundles(identityd, edged)
        self.edged_settings(edged)
        self.reprovisioning(identityd)
        self.imported_master_encryption_key()
        self.principals(keyd, certd, identityd)

        tpmd: dict[str, Any] | None = None
        if isinstance(doc.get("tpm"), dict):
            tpmd = self.table("tpm")
        elif tpm_needed:
            tpmd = {}  # DPS TPM attestation needs the TPM service, as aziot-tpmd always runs with IoT Edge
        docs = {"keyd": keyd, "certd": certd, "identityd": identityd, "edged": edged}
        self.edgeward(docs)
        self.max_requests(docs, tpmd)
        self.tpm_owner_for_keys(docs["keyd"], tpmd)
        self.endpoints(docs, tpmd)
        if isinstance(doc.get("homedir_path"), str):
            certd["homedir_path"] = doc["homedir_path"]
        elif "homedir_path" in doc:
            p.add("homedir_path", doc["homedir_path"], "an absolute directory path")

        if self.preloads.keys:
            keyd["preloaded_keys"] = self.preloads.keys
        if self.issuance:
            certd["cert_issuance"] = self.issuance
        if self.preloads.certs:
            certd["preloaded_certs"] = self.preloads.certs
        self.peers(docs, tpmd, config_files)
        order = {"keyd": ("aziot_keys", "preloaded_keys", "principal", "edgeward", "endpoints",
                          "aziot_max_requests"),
                 "certd": ("homedir_path", "cert_issuance", "preloaded_certs", "principal", "localid", "endpoints",
                           "aziot_max_requests"),
                 "identityd": ("hostname", "local_gateway_hostname", "trust_bundle_cert", "cloud_timeout_sec",
                               "cloud_retries", "provisioning", "localid", "principal", "edgeward", "endpoints",
                               "aziot_max_requests"),
                 "edged": ("hostname", "local_gateway_hostname", "homedir", "trust_bundle_cert",
                           "manifest_trust_bundle_cert", "allow_elevated_docker_permissions",
                           "auto_reprovisioning_mode", "agent", "connect", "listen", "watchdog", "moby_runtime",
                           "image_garbage_collection", "edgeward", "endpoints", "iotedge_max_requests")}
        order["identityd"] += ("auto_reprovisioning_mode", "prefer_module_identity_cache")
        out = {name: {k: docs[name][k] for k in order[name] if k in docs[name]} for name in docs}
        return ServiceConfigs(out["keyd"], out["certd"], out["identityd"], out["edged"], tpmd)


def _named_paths(value: object, key: str = "") -> list[str]:
    """The paths a service document names: file:// and unix:// URIs anywhere, and the path settings."""
    if isinstance(value, str):
        if value.startswith(("file://", "unix://")):
            path = unquote(urlsplit(value).path)
            return [path] if path.startswith("/") else []
        return [value] if key in _PATH_SETTINGS and value.startswith("/") else []
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _named_paths(v, str(k))]
    if isinstance(value, list):
        return [p for v in value for p in _named_paths(v, key)]
    return []


def split_super_config(doc: Mapping[str, Any], problems: Problems,
                       config_files: Sequence[Path] = ()) -> ServiceConfigs:
    """Check the super config and split it into per-service documents. Problems and warnings go to ``problems``
    (the caller raises once every service reader has added its own); the input is never modified.
    ``config_files``: the super config itself and where the per-service files go, added to the paths no module may
    bind (``[edgeward.peers] protected_paths``)."""
    return _Splitter(doc, problems).run(config_files)
