"""The certificates service's settings, read from an aziot-certd style TOML document plus Edgeward's additions
(per-cert ``key_id`` and ``auto_renew``, local CA ``common_name``/``expiry_days``, and each cert id's issuance policy:
``kind``, ``ca``, ``path_len``, ``dns_names``, ``ip_addresses``, ``common_names``; see :mod:`.policy`). An entry
with policy keys and no ``method`` only sets the policy, for certs issued with an explicit issuer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config.problems import Problems
from ..keys.principals import glob_to_regex
from .dn import DnError, subject_fields
from .kinds import KINDS, IpNetwork, Kind, parse_ip_networks
from .renew_amount import RenewAmount, parse_renew_amount

__all__ = [
    "CertPrincipal",
    "CertsSettings",
    "EstAuth",
    "EstSettings",
    "IssuanceOptions",
    "LocalCaOptions",
    "RenewAmount",
    "RenewPolicy",
    "parse_certs_settings",
    "parse_renew_amount",
]

Method = Literal["self_signed", "local_ca", "est"]


@dataclass(frozen=True)
class RenewPolicy:
    """Renew once ``threshold`` of the lifetime has passed (a duration means: that long before expiry)."""

    rotate_key: bool = False
    threshold: RenewAmount = field(default_factory=lambda: RenewAmount(fraction=0.8))
    retry: RenewAmount = field(default_factory=lambda: RenewAmount(fraction=0.04))


@dataclass(frozen=True)
class EstAuth:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_cert: str | None = None
    identity_pk: str | None = None
    bootstrap_identity_cert: str | None = None
    bootstrap_identity_pk: str | None = None


@dataclass(frozen=True)
class EstSettings:
    default_url: str | None = None
    urls: Mapping[str, str] = field(default_factory=dict)
    trusted_certs: tuple[str, ...] = ()
    auth: EstAuth = field(default_factory=EstAuth)
    identity_auto_renew: RenewPolicy | None = None


@dataclass(frozen=True)
class IssuanceOptions:
    """One ``[cert_issuance.<id>]`` entry: how the cert is issued (``method``; None for an entry that only sets the
    issuance policy of certs issued with an explicit issuer) and what it may carry (``kind``, ``dns_names``,
    ``ip_addresses``, ``path_len``; see :mod:`edgeward.certs.policy`)."""

    method: Method | None
    common_name: str | None = None
    expiry_days: int | None = None
    expiry_seconds: int | None = None  # Edgeward: short lifetimes for tests, demos and aggressive rotation
    key_id: str | None = None
    url: str | None = None
    auth: EstAuth | None = None
    auto_renew: RenewPolicy | None = None
    ca: bool = False  # Edgeward: the same as kind = "ca"
    kind: Kind | None = None  # None: the cert id's default (edgeward.certs.policy.default_kind)
    dns_names: tuple[str, ...] = ()  # aziot globs of the DNS names a CSR may ask for
    ip_addresses: tuple[IpNetwork, ...] = ()  # addresses or networks a CSR may ask for
    path_len: int | None = 0  # a CA's pathLen; 0: it issues leaves only
    common_names: tuple[str, ...] = ()  # globs the subject CN must match; empty: any
    subject: tuple[tuple[str, str], ...] = ()  # IoT Edge's subject = { ... }: the full DN (certs/dn.py)

    @property
    def configured_kind(self) -> Kind | None:
        return "ca" if self.ca else self.kind


@dataclass(frozen=True)
class LocalCaOptions:
    cert: str
    pk: str
    common_name: str = "Edgeward local CA"
    expiry_days: int = 365


@dataclass(frozen=True)
class CertPrincipal:
    uid: int
    certs: tuple[str, ...]

    def allows(self, cert_id: str) -> bool:
        return any(glob_to_regex(g).fullmatch(cert_id) for g in self.certs)


@dataclass(frozen=True)
class CertsSettings:
    homedir: Path
    socket_path: Path
    issuance: Mapping[str, IssuanceOptions] = field(default_factory=dict)
    local_ca: LocalCaOptions | None = None
    est: EstSettings = field(default_factory=EstSettings)
    preloaded: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    principals: tuple[CertPrincipal, ...] = ()
    default_expiry_days: int = 30
    local_id_domain: str | None = None  # [localid] domain_name: names under it are for local-id-* certs only

    @property
    def est_auths(self) -> list[EstAuth]:
        """Every EST authentication configured: ``[cert_issuance.est.auth]`` and each cert id's own."""
        return [self.est.auth, *(o.auth for o in self.issuance.values() if o.auth is not None)]


def _policy(raw: Any, where: str, p: Problems) -> RenewPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add(where, raw, "a table { rotate_key, threshold, retry }")
        return None
    p.warn_unknown(raw, {"rotate_key", "threshold", "retry"}, where)
    out = RenewPolicy(rotate_key=p.get(raw, "rotate_key", where, bool, False))
    for name in ("threshold", "retry"):
        value = p.get(raw, name, where, str, "")
        if value:
            try:
                out = RenewPolicy(**{**out.__dict__, name: parse_renew_amount(value)})
            except ValueError as e:
                p.add(f"{where}.{name}", value, str(e))
    return out


def _subject(raw: Any, where: str, p: Problems) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    try:
        return subject_fields(raw)
    except DnError as e:
        p.add(where, raw, str(e))
        return ()


POLICY_KEYS = ("kind", "dns_names", "ip_addresses", "path_len", "common_names")


def _issuance_policy(raw: Mapping[str, Any], where: str, p: Problems) -> dict[str, Any]:
    """``kind``, ``dns_names``, ``ip_addresses``, ``path_len``, ``common_names`` of a ``[cert_issuance.<id>]``
    entry."""
    out: dict[str, Any] = {}
    kind = p.get(raw, "kind", where, str, "")
    if kind:
        if kind not in KINDS:
            p.add(f"{where}.kind", kind, '"ca", "server", "client" or "identity"')
        else:
            out["kind"] = kind
    if raw.get("ca") is True and kind and kind != "ca":
        p.add(f"{where}.ca", True, f'no ca = true with kind = "{kind}"')
    names = p.get(raw, "dns_names", where, list, [])
    if all(isinstance(n, str) and n for n in names):
        out["dns_names"] = tuple(names)
    else:
        p.add(f"{where}.dns_names", names, "a list of DNS names or globs (*.example.com)")
    cns = p.get(raw, "common_names", where, list, [])
    if all(isinstance(n, str) and n for n in cns):
        out["common_names"] = tuple(cns)
    else:
        p.add(f"{where}.common_names", cns, "a list of common names or globs (*.plant.example)")
    ips = p.get(raw, "ip_addresses", where, list, [])
    try:
        if not all(isinstance(i, str) for i in ips):
            raise ValueError("each entry a string")
        out["ip_addresses"] = parse_ip_networks(ips)
    except ValueError as e:
        p.add(f"{where}.ip_addresses", ips, f"a list of IP addresses or networks ({e})")
    if "path_len" in raw:
        path_len = raw["path_len"]
        if not (isinstance(path_len, int) and not isinstance(path_len, bool) and 0 <= path_len <= 16):
            p.add(f"{where}.path_len", path_len, "0 to 16")
        elif out.get("kind", "ca" if raw.get("ca") is True else None) != "ca":
            p.add(f"{where}.path_len", path_len, 'a path length only for a CA (kind = "ca")')
        else:
            out["path_len"] = path_len
    return out


def _auth(raw: Mapping[str, Any], where: str, p: Problems) -> EstAuth:
    known = {"username", "password", "identity_cert", "identity_pk", "bootstrap_identity_cert",
             "bootstrap_identity_pk"}
    values = {k: p.get(raw, k, where, str, "") or None for k in known}
    if (values["username"] is None) != (values["password"] is None):
        p.add(f"{where}.username/password", "<one of them>", "both or neither")
    if (values["identity_cert"] is None) != (values["identity_pk"] is None):
        p.add(f"{where}.identity_cert/identity_pk", "<one of them>", "both or neither")
    return EstAuth(**values)


def _url(value: str, where: str, p: Problems) -> str | None:
    if not value:
        return None
    if not value.startswith("https://"):
        p.add(where, value, "an https:// URL (EST runs over TLS)")
        return None
    return value.rstrip("/")


def parse_certs_settings(doc: Mapping[str, Any], state_dir: Path, run_dir: Path,
                         problems: Problems | None = None) -> CertsSettings:
    p = problems or Problems("certs configuration")
    ci = p.get(doc, "cert_issuance", "", dict, {})
    issuance: dict[str, IssuanceOptions] = {}
    est = EstSettings()
    local_ca = None
    for cert_id, raw in ci.items():
        where = f"cert_issuance.{cert_id}"
        if cert_id == "est":
            est_auth = _auth(p.get(raw, "auth", where, dict, {}), f"{where}.auth", p)
            urls = {k: u for k, v in p.get(raw, "urls", where, dict, {}).items()
                    if (u := _url(v if isinstance(v, str) else "", f"{where}.urls.{k}", p))}
            trusted = p.get(raw, "trusted_certs", where, list, [])
            est = EstSettings(default_url=urls.pop("default", None), urls=urls,
                              trusted_certs=tuple(str(t) for t in trusted), auth=est_auth,
                              identity_auto_renew=_policy(raw.get("identity_auto_renew"),
                                                          f"{where}.identity_auto_renew", p))
            continue
        if cert_id == "local_ca":
            cert, pk = p.get(raw, "cert", where, str, ""), p.get(raw, "pk", where, str, "")
            if not cert or not pk:
                p.add(where, "<incomplete>", "both cert and pk (the CA's cert id and key id)")
            else:
                local_ca = LocalCaOptions(cert, pk, p.get(raw, "common_name", where, str, "Edgeward local CA"),
                                          p.get(raw, "expiry_days", where, int, 365))
            continue
        if not isinstance(raw, dict):
            p.add(where, raw, "a table with method = self_signed | local_ca | est")
            continue
        p.warn_unknown(raw, {"method", "common_name", "expiry_days", "key_id", "url", "username", "password",
                             "identity_cert", "identity_pk", "bootstrap_identity_cert", "bootstrap_identity_pk",
                             "auto_renew", "subject", "expiry_seconds", "ca", *POLICY_KEYS}, where)
        method = p.get(raw, "method", where, str, "")
        if not method and not any(k in raw for k in POLICY_KEYS):
            p.add(f"{where}.method", "<missing>", '"self_signed", "local_ca" or "est" (or only issuance policy '
                                                   f'keys: {", ".join(POLICY_KEYS)})')
            continue
        if method and method not in ("self_signed", "local_ca", "est"):
            p.add(f"{where}.method", method, '"self_signed", "local_ca" or "est"')
            continue
        if not method and "auto_renew" in raw:
            p.add(f"{where}.auto_renew", raw["auto_renew"], "a method to renew with")
        expiry = p.get(raw, "expiry_days", where, int, 0) or None
        if expiry is not None and not 0 < expiry <= 36500:
            p.add(f"{where}.expiry_days", expiry, "1 to 36500 days")
        has_auth = any(k in raw for k in ("username", "identity_cert", "bootstrap_identity_cert"))
        issuance[cert_id] = IssuanceOptions(
            method=method or None,  # type: ignore[arg-type]
            common_name=p.get(raw, "common_name", where, str, "") or None,
            expiry_days=expiry,
            expiry_seconds=p.get(raw, "expiry_seconds", where, int, 0) or None,
            key_id=p.get(raw, "key_id", where, str, "") or None,
            url=_url(p.get(raw, "url", where, str, ""), f"{where}.url", p),
            auth=_auth(raw, where, p) if has_auth else None,
            auto_renew=_policy(raw.get("auto_renew"), f"{where}.auto_renew", p),
            ca=p.get(raw, "ca", where, bool, False),
            subject=_subject(raw.get("subject"), f"{where}.subject", p),
            **_issuance_policy(raw, where, p),
        )
    auth = est.auth
    if est.identity_auto_renew is not None and auth.identity_cert and auth.identity_pk:
        # The EST identity renews itself by re-enrollment (RFC 7030 4.2.2), authenticated by its current cert.
        issuance.setdefault(auth.identity_cert, IssuanceOptions(method="est", key_id=auth.identity_pk,
                                                                auto_renew=est.identity_auto_renew))
    for cert_id, opts in issuance.items():
        if opts.method == "local_ca" and local_ca is None:
            p.add(f"cert_issuance.{cert_id}.method", "local_ca", "a [cert_issuance.local_ca] table")
        if opts.method == "est" and not (opts.url or est.urls.get(cert_id) or est.default_url):
            p.add(f"cert_issuance.{cert_id}.url", "<missing>", "an EST URL here or in [cert_issuance.est.urls]")

    preloaded: dict[str, str | tuple[str, ...]] = {}
    for cert_id, value in p.get(doc, "preloaded_certs", "", dict, {}).items():
        if isinstance(value, str) and value.startswith("file://"):
            preloaded[cert_id] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            preloaded[cert_id] = tuple(value)
        else:
            p.add(f"preloaded_certs.{cert_id}", value, "a file:// URI or a list of cert ids")

    principals = []
    for i, entry in enumerate(p.get(doc, "principal", "", list, [])):
        if isinstance(entry, dict) and "certs" in entry:
            uid = p.get(entry, "uid", f"principal[{i}]", int, -1)
            certs = p.get(entry, "certs", f"principal[{i}]", list, [])
            if uid >= 0 and all(isinstance(c, str) for c in certs):
                principals.append(CertPrincipal(uid, tuple(certs)))
            else:
                p.add(f"principal[{i}]", entry, "uid >= 0 and certs = [globs]")

    socket = run_dir / "certd.sock"
    sock_uri = p.get(p.get(doc, "endpoints", "", dict, {}), "aziot_certd", "endpoints", str, "")
    if sock_uri:
        socket = Path(sock_uri.removeprefix("unix://"))
    homedir = Path(p.get(doc, "homedir_path", "", str, str(state_dir / "certd")))
    if problems is None:
        p.raise_if_any()
    localid = p.get(doc, "localid", "", dict, {})
    domain = p.get(localid, "domain_name", "localid", str, "").strip(".").lower() or None
    return CertsSettings(homedir, socket, issuance, local_ca, est, preloaded, tuple(principals),
                         local_id_domain=domain)
