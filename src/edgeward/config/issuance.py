"""IoT Edge's certificate issuance options (``identity_cert = { method = "est", ... }``, ``[edge_ca]`` with a
method, EST authentication) translated into the certs service's per-certificate entries.

The super config names EST identities and bootstrap identities by file or PKCS#11 location; the certs service names
them by cert id and key id. :class:`Preloads` collects the locations that become preloaded certificates and keys, so
that every translated id resolves, and refuses an id claimed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..certs.dn import DnError, common_name_of, subject_fields
from ..certs.renew_amount import parse_renew_amount
from .locations import cert_location, key_location
from .problems import Problems

__all__ = ["ISSUANCE_KEYS", "Preloads", "est_auth", "issuance_options", "renew_policy", "subject_table"]

METHODS = ("est", "local_ca", "self_signed")
AUTH_KEYS = ("username", "password", "identity_cert", "identity_pk", "bootstrap_identity_cert",
             "bootstrap_identity_pk")
# What IoT Edge 1.5 documents for issued certificates, plus Edgeward's expiry_seconds (short test lifetimes).
ISSUANCE_KEYS = {"method", "common_name", "expiry_days", "expiry_seconds", "subject", "auto_renew", "url",
                 *AUTH_KEYS}


@dataclass
class Preloads:
    """Certificates and keys named by location, to be preloaded in the certs and keys services under an id."""

    certs: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # "cert:<id>" / "key:<id>" -> the setting that set it

    def cert(self, cert_id: str, uri: str, where: str, p: Problems) -> None:
        self._put("cert", cert_id, uri, where, p)

    def key(self, key_id: str, uri: str, where: str, p: Problems) -> None:
        self._put("key", key_id, uri, where, p)

    def _put(self, kind: str, ident: str, uri: str, where: str, p: Problems) -> None:
        into = self.certs if kind == "cert" else self.keys
        tag = f"{kind}:{ident}"
        if tag in self.origin and self.origin[tag] != where:
            p.add(where, uri, f"a location for {kind} id {ident!r} that {self.origin[tag]} does not already set")
            return
        self.origin[tag] = where
        into[ident] = uri


def renew_policy(raw: Any, where: str, p: Problems) -> dict[str, Any] | None:
    """``auto_renew = { rotate_key, threshold, retry }``, checked here so a problem names the user's path."""
    if not isinstance(raw, dict):
        p.add(where, raw, "a table { rotate_key, threshold, retry }")
        return None
    p.warn_unknown(raw, {"rotate_key", "threshold", "retry"}, where)
    ok = True
    out: dict[str, Any] = {}
    if "rotate_key" in raw:
        if isinstance(raw["rotate_key"], bool):
            out["rotate_key"] = raw["rotate_key"]
        else:
            p.add(f"{where}.rotate_key", raw["rotate_key"], "true or false")
            ok = False
    for name in ("threshold", "retry"):
        if name not in raw:
            continue
        value = raw[name]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            parse_renew_amount(value)
        except ValueError:
            p.add(f"{where}.{name}", value, "a share of the lifetime between 0% and 100% (80%) or a positive "
                                            "duration (30min, 12h, 2day)")
            ok = False
        else:
            out[name] = value
    return out if ok else None


def _identity(raw: dict[str, Any], where: str, p: Problems, preloads: Preloads, *, prefix: str, target: str,
              has_pkcs11_lib: bool) -> tuple[str, str, bool] | None:
    """An X.509 identity's (cert id, key id, given by location?); locations are preloaded under ``target``."""
    cert_raw, pk_raw = raw.get(f"{prefix}identity_cert"), raw.get(f"{prefix}identity_pk")
    if cert_raw is None or pk_raw is None:
        p.add(f"{where}.{prefix}identity_cert/{prefix}identity_pk", "<one of them>", "both or neither")
        return None
    cert = cert_location(cert_raw, f"{where}.{prefix}identity_cert", p)
    pk = key_location(pk_raw, f"{where}.{prefix}identity_pk", p, has_pkcs11_lib=has_pkcs11_lib)
    if cert is None or pk is None:
        return None
    if cert.kind == "uri":
        preloads.cert(target, cert.value, f"{where}.{prefix}identity_cert", p)
    if pk.kind == "uri":
        preloads.key(target, pk.value, f"{where}.{prefix}identity_pk", p)
    return (target if cert.kind == "uri" else cert.value, target if pk.kind == "uri" else pk.value,
            cert.kind == "uri" or pk.kind == "uri")


def est_auth(raw: dict[str, Any], where: str, p: Problems, preloads: Preloads, *, ids: tuple[str, str],
             has_pkcs11_lib: bool) -> dict[str, str] | None:
    """EST authentication: basic (username/password) and/or X.509, either an EST identity already on the device
    or a bootstrap identity that Edgeward uses once to enroll (and later renew) the EST identity; ``ids`` are the
    (EST identity, bootstrap identity) ids that locations given as URIs are preloaded under."""
    identity_id, bootstrap_id = ids
    ok = True
    out: dict[str, str] = {}
    user, password = raw.get("username"), raw.get("password")
    for name, value in (("username", user), ("password", password)):
        if value is not None and not (isinstance(value, str) and value):
            p.add(f"{where}.{name}", value, "a non-empty string")
            ok = False
    if (user is None) != (password is None):
        p.add(f"{where}.username/password", "<one of them>", "both or neither")
        ok = False
    elif isinstance(user, str) and isinstance(password, str):
        out["username"], out["password"] = user, password
    has_identity = "identity_cert" in raw or "identity_pk" in raw
    has_bootstrap = "bootstrap_identity_cert" in raw or "bootstrap_identity_pk" in raw
    for prefix, target, present in (("", identity_id, has_identity), ("bootstrap_", bootstrap_id, has_bootstrap)):
        if not present:
            continue
        pair = _identity(raw, where, p, preloads, prefix=prefix, target=target, has_pkcs11_lib=has_pkcs11_lib)
        if pair is None:
            return None
        if has_bootstrap and prefix == "" and pair[2]:
            # An EST identity in a file cannot be renewed by enrollment; with a bootstrap identity, Edgeward
            # enrolls the EST identity itself (Edgeward's own form may still name the ids it enrolls into).
            p.add(f"{where}.identity_cert/bootstrap_identity_cert", "<both>",
                  "either an EST identity (identity_cert, identity_pk) or a bootstrap identity "
                  "(bootstrap_identity_cert, bootstrap_identity_pk), not both: with a bootstrap identity the EST "
                  "identity is enrolled and renewed by Edgeward")
            return None
        out[f"{prefix}identity_cert"], out[f"{prefix}identity_pk"] = pair[0], pair[1]
    if has_bootstrap and not has_identity:
        # the EST identity that the bootstrap identity enrolls; it lives in the services, not in a file
        out["identity_cert"], out["identity_pk"] = identity_id, identity_id
    return out if ok else None


def subject_table(raw: Any, where: str, p: Problems) -> dict[str, str] | None:
    """A ``subject = { ... }`` distinguished name, checked as aziot-certd builds it (see certs/dn.py); the fields
    in the order the certificate carries them."""
    try:
        return dict(subject_fields(raw))
    except DnError as e:
        p.add(where, raw, str(e))
        return None


def issuance_options(raw: Any, where: str, p: Problems, preloads: Preloads, cert_id: str, *,
                     has_local_ca: bool, has_est_url: bool, has_pkcs11_lib: bool,
                     known: set[str] = ISSUANCE_KEYS) -> dict[str, Any] | None:
    """IoT Edge's ``CertIssuanceOptions`` -> an Edgeward ``[cert_issuance.<cert_id>]`` entry (key id = cert id)."""
    if not isinstance(raw, dict):
        p.add(where, raw, 'a table { method = "est" | "local_ca" | "self_signed", common_name, expiry_days, ... }')
        return None
    p.warn_unknown(raw, known, where)
    before = len(p.items)
    method = raw.get("method")
    if method not in METHODS:
        p.add(f"{where}.method", "<missing>" if method is None else method, '"est", "local_ca" or "self_signed"')
        return None
    entry: dict[str, Any] = {"method": method}
    common_name = raw.get("common_name")
    if common_name is not None and not (isinstance(common_name, str) and 0 < len(common_name) <= 64):
        p.add(f"{where}.common_name", common_name, "a common name of 1 to 64 characters")
    subject = raw.get("subject")
    if subject is not None:
        fields = subject_table(subject, f"{where}.subject", p)
        if fields is not None:
            entry["subject"] = fields
            if common_name is None:
                common_name = common_name_of(tuple(fields.items()))
    if isinstance(common_name, str):
        entry["common_name"] = common_name
    for name, limit in (("expiry_days", 36500), ("expiry_seconds", 36500 * 86400)):
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
            p.add(f"{where}.{name}", value, f"1 to {limit}")
        else:
            entry[name] = value
    entry["key_id"] = cert_id
    if method == "est":
        url = raw.get("url")
        if url is not None:
            if not (isinstance(url, str) and url.startswith("https://") and len(url) > len("https://")):
                p.add(f"{where}.url", url, "an https:// URL (EST runs over TLS)")
            else:
                entry["url"] = url
        elif not has_est_url:
            p.add(f"{where}.url", "<missing>", "an EST URL here or in [cert_issuance.est.urls]")
        auth = est_auth(raw, where, p, preloads, ids=(f"{cert_id}-est-id", f"{cert_id}-est-bootstrap-id"),
                        has_pkcs11_lib=has_pkcs11_lib)
        if auth:
            entry.update(auth)
    else:
        for name in ("url", *AUTH_KEYS):
            if name in raw:
                p.add(f"{where}.{name}", "<redacted>" if name == "password" else raw[name],
                      'no EST settings unless method = "est"')
        if method == "local_ca" and not has_local_ca:
            p.add(f"{where}.method", "local_ca", "a [cert_issuance.local_ca] table")
    if "auto_renew" in raw:
        policy = renew_policy(raw["auto_renew"], f"{where}.auto_renew", p)
        if policy is not None:
            entry["auto_renew"] = policy
    return entry if len(p.items) == before else None
