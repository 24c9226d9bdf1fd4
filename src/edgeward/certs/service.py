"""The certificates service: authorization, the store, and issuance by CSR (self-signed, local CA, EST, or a
caller-named issuer key). What an issued certificate carries is the cert id's issuance policy
(:mod:`edgeward.certs.policy`), whichever the issuer; a CSR for EST is checked against the same policy before it is
sent."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..access.trusted import trusted_service_uids
from ..http.errors import BadRequest, HttpError
from ..http.peercred import Caller
from ..keyedlocks import KeyedLocks
from ..keys.api import KeysApi
from ..keys.errors import InvalidHandle, KeyNotFound
from ..keys.model import PublicKey
from ..keys.principals import glob_to_regex
from ..repeat_log import RepeatLog
from .api import CertsApi
from .dn import subject_name
from .errors import CertNotFound, InvalidCsr, IssuanceFailed, NotAuthorized
from .est.tls_identity import KeysIdentity
from .issuance import IssuerRef, issue, parse_csr, self_signed_ca
from .pem import PemError, chain_to_pem, parse_chain
from .policy import LOCAL_ID_PREFIX, Grant, IssuancePolicy, PolicyRefused, default_kind, name_under
from .settings import CertsSettings, EstAuth, IssuanceOptions
from .store import CertStore
from .x509sign import IssuerKeyMismatch, handle_public_key, same_public_key, sign_certificate, sign_csr

__all__ = ["CertService", "EstEnroller", "IssuancePlan", "LocalCa", "validate_cert_id"]

log = logging.getLogger(__name__)

MAX_CERT_ID_LENGTH = 256
LOCAL_CA_RECHECK_SECONDS = 1.0  # how stale a remembered local CA may be when its file is replaced from outside
PLANS_REMEMBERED = 1024
_CONTROL = re.compile(r"[\x00-\x1f]")  # what validate_cert_id refuses: control characters


@dataclass(frozen=True)
class LocalCa:
    chain: list[x509.Certificate]
    handle: str
    public: PublicKey
    stamp: tuple[int, int, int] | None  # the CA cert file when this was read (``CertService._stamp``)

    @functools.cached_property
    def issuer(self) -> IssuerRef:
        """Kept with the remembered CA, so what is worked out about the issuer (its key identifier) is done once."""
        return IssuerRef(self.chain[0], self.handle, self.public)


@dataclass(frozen=True)
class IssuancePlan:
    """What the configuration decides about issuing one cert id: the same for every request for it, as settings do
    not change while the service runs, so it is worked out once (``CertService.plan``)."""

    options: IssuanceOptions | None
    policy: IssuancePolicy
    lifetime: dt.timedelta
    subject: x509.Name | None  # the configured DN (subject = { ... }), for every method but EST
    configured_names: tuple[tuple[str, str], ...] = ()  # (where, text): the configured CN and DN values


class EstEnroller(Protocol):
    """What the service needs of an EST client (``edgeward.certs.est.EstClient`` in production)."""

    async def simple_enroll(self, csr_der: bytes) -> list[x509.Certificate]: ...

    async def simple_reenroll(self, csr_der: bytes) -> list[x509.Certificate]: ...


EstFactory = Callable[[str, Sequence[x509.Certificate], EstAuth, "KeysIdentity | None"], EstEnroller]


def validate_cert_id(cert_id: str) -> str:
    if not cert_id or len(cert_id) > MAX_CERT_ID_LENGTH or _CONTROL.search(cert_id):
        raise BadRequest(f"certId must be 1 to {MAX_CERT_ID_LENGTH} printable characters")
    return cert_id


def default_est_factory(url: str, trusted: Sequence[x509.Certificate], auth: EstAuth,
                        identity: KeysIdentity | None) -> EstEnroller:
    from .est.client import EstClient  # noqa: PLC0415 - loaded by the first enrollment (est/__init__.py says why)

    return EstClient(url, list(trusted) or None, auth.username, auth.password, identity)


class CertService:
    def __init__(self, settings: CertsSettings, keys: KeysApi, est_factory: EstFactory = default_est_factory,
                 trusted_uids: frozenset[int] | None = None) -> None:
        self.settings = settings
        self.store = CertStore(settings.homedir)
        self.keys = keys
        self.est_factory = est_factory
        self._trusted = trusted_uids if trusted_uids is not None else trusted_service_uids("certd")
        self._locks = KeyedLocks()  # an id's lock lives while it is held: ids are the callers' to choose
        self._local_ca: LocalCa | None = None
        self._local_ca_checked = 0.0
        self._plans: dict[str, IssuancePlan] = {}
        self.issued_log = RepeatLog(log, "issued cert")
        # a caller may read a corrupt cert id in a loop: an error line per id an interval, then a summary
        self.unreadable_log = RepeatLog(log, "unreadable stored cert", level=logging.ERROR)

    def for_caller(self, caller: Caller) -> CertsApi:
        return _CallerView(self, caller)

    def lock(self, cert_id: str) -> AbstractAsyncContextManager[None]:
        """One writer of ``cert_id`` at a time (issue, import, delete, renewal)."""
        return self._locks.hold(cert_id)

    def authorize(self, caller: Caller, cert_id: str) -> None:
        if caller.uid in self._trusted or any(
            p.uid == caller.uid and p.allows(cert_id) for p in self.settings.principals
        ):
            return
        log.debug("uid %d refused write access to cert %r", caller.uid, cert_id)  # the guard logs the refusal
        raise NotAuthorized(f"uid {caller.uid} is not authorized for cert {cert_id!r}")

    # reading --------------------------------------------------------------------------------------------
    def read_chain(self, cert_id: str, depth: int = 0) -> list[x509.Certificate] | None:
        """The stored (or preloaded) chain of ``cert_id``; None if there is none."""
        if depth > 8:
            raise HttpError(f"preloaded cert {cert_id!r} refers to itself", status=400)
        pre = self.settings.preloaded.get(cert_id)
        if isinstance(pre, str):
            try:
                data = Path(pre.removeprefix("file://")).read_bytes()
            except FileNotFoundError:
                return None
        elif isinstance(pre, tuple):
            chain: list[x509.Certificate] = []
            for member in pre:
                part = self.read_chain(member, depth + 1)
                if part is None:
                    raise CertNotFound(f"cert {member!r}, part of preloaded cert {cert_id!r}, not found")
                chain.extend(part)
            return chain
        else:
            raw = self.store.get(cert_id)
            if raw is None:
                return None
            data = raw
        try:
            return parse_chain(data)
        except PemError:
            self.unreadable_log.log(cert_id, "stored cert %r is unreadable; treating it as missing", cert_id)
            return None

    async def get_cert(self, cert_id: str) -> str:
        chain = self.read_chain(validate_cert_id(cert_id))
        if chain is None:
            raise CertNotFound(f"cert {cert_id!r} not found")
        return chain_to_pem(chain)

    # writing --------------------------------------------------------------------------------------------
    def stage_chain(self, cert_id: str, chain: list[x509.Certificate]) -> tuple[str, Awaitable[None]]:
        """Store ``chain`` as ``cert_id``: readers see it at once, it is on disk once the awaitable completes.
        Staging under the cert's lock and awaiting after releasing it lets one flush carry a burst of writes."""
        pem = chain_to_pem(chain)
        self._changed(cert_id)
        return pem, self.store.stage(cert_id, pem.encode())

    async def write_chain(self, cert_id: str, chain: list[x509.Certificate]) -> str:
        pem, durable = self.stage_chain(cert_id, chain)
        await durable
        return pem

    async def import_cert(self, caller: Caller, cert_id: str, pem: str) -> str:
        validate_cert_id(cert_id)
        self.authorize(caller, cert_id)
        try:
            chain = parse_chain(pem)
        except PemError as e:
            raise BadRequest(f"pem: {e}") from None
        async with self.lock(cert_id):
            stored, durable = self.stage_chain(cert_id, chain)
        await durable
        return stored

    async def delete_cert(self, caller: Caller, cert_id: str) -> None:
        validate_cert_id(cert_id)
        self.authorize(caller, cert_id)
        async with self.lock(cert_id):
            self._changed(cert_id)
            if not await self.store.delete(cert_id):  # already gone: done, as aziot-certd treats it
                log.debug("cert %r was not stored; nothing to delete", cert_id)

    async def create_cert(self, caller: Caller, cert_id: str, csr_data: bytes,
                          issuer: tuple[str, str] | None) -> str:
        validate_cert_id(cert_id)
        self.authorize(caller, cert_id)
        csr = parse_csr(csr_data)
        async with self.lock(cert_id):
            chain = await self.issue_chain(cert_id, csr, issuer)
            pem, durable = self.stage_chain(cert_id, chain)
        await durable
        # a caller may repeat this at will (re-issuing its cert, a local identity asking for itself): a bounded rate
        self.issued_log.log(cert_id, "issued cert %r for uid %d, valid until %s", cert_id, caller.uid,
                            chain[0].not_valid_after_utc.isoformat())
        return pem

    def _changed(self, cert_id: str) -> None:
        if self.settings.local_ca is not None and cert_id == self.settings.local_ca.cert:
            self._local_ca = None

    # issuance -------------------------------------------------------------------------------------------
    def options(self, cert_id: str) -> IssuanceOptions | None:
        """The cert's own `[cert_issuance]` entry, else the first entry whose id is a glob matching it (Edgeward:
        `[cert_issuance."local-id-*"]` covers every local identity)."""
        exact = self.settings.issuance.get(cert_id)
        if exact is not None:
            return exact
        matched = next((opts for pattern, opts in self.settings.issuance.items()
                        if "*" in pattern and glob_to_regex(pattern).fullmatch(cert_id)), None)
        if matched is None and cert_id.startswith(LOCAL_ID_PREFIX) and self.settings.local_ca is not None:
            # Local identities (identityd's "local-id-<module>") come from the local CA unless configured otherwise.
            return IssuanceOptions(method="local_ca", expiry_days=30)
        return matched

    def policy(self, cert_id: str) -> IssuancePolicy:
        """What a cert of ``cert_id`` may carry: its entry's ``kind`` (or ``ca = true``) and names, else the
        defaults of well-known ids (the local CA is a CA, EST identities are identities; see ``default_kind``)."""
        opts = self.options(cert_id)
        kind = opts.configured_kind if opts is not None else None
        if kind is None:
            s = self.settings
            ca_ids = [s.local_ca.cert] if s.local_ca is not None else []
            identities = [i for a in s.est_auths for i in (a.identity_cert, a.bootstrap_identity_cert) if i]
            kind = default_kind(cert_id, ca_ids=ca_ids, identity_ids=identities)
        if opts is None:
            return IssuancePolicy(cert_id, kind)
        return IssuancePolicy(cert_id, kind, opts.dns_names, opts.ip_addresses, opts.path_len, opts.common_names)

    def plan(self, cert_id: str) -> IssuancePlan:
        found = self._plans.get(cert_id)
        if found is None:
            if len(self._plans) >= PLANS_REMEMBERED:  # ids are the callers' to choose: keep the memory bounded
                self._plans.clear()
            opts = self.options(cert_id)
            # an EST server gets the CSR as it is, which carries the configured DN already (renewal.py)
            subject = subject_name(opts.subject) if opts is not None and opts.subject and opts.method != "est" else None
            configured = ((("common_name", opts.common_name),) if opts is not None and opts.common_name else ()) + (
                tuple((f"subject {field}", value) for field, value in opts.subject) if opts is not None else ())
            found = self._plans[cert_id] = IssuancePlan(opts, self.policy(cert_id), self.lifetime(cert_id), subject,
                                                        configured)
        return found

    def lifetime(self, cert_id: str) -> dt.timedelta:
        opts = self.options(cert_id)
        if opts and opts.expiry_seconds:
            return dt.timedelta(seconds=opts.expiry_seconds)
        days = opts.expiry_days if opts and opts.expiry_days else self.settings.default_expiry_days
        return dt.timedelta(days=days)

    def _keep_local_id_names(self, cert_id: str, plan: IssuancePlan, grant: Grant) -> None:
        """Local identities are told apart by name (``<module>.<hostname>.<domain>``, issued by the local CA), so
        no other cert id may carry a name under that domain anywhere a verifier could read one: a principal allowed
        ``mod-*`` would otherwise get a client cert a verifier takes for another host agent's local identity. Every
        subject attribute of the CSR, the configured CN and subject, and every DNS name is read as ``name_under``
        reads (a NUL or blank ends a name, UTS-46's full stops, case), the raw bytes of each attribute as well."""
        domain = self.settings.local_id_domain
        if domain is None or cert_id.startswith(LOCAL_ID_PREFIX):
            return
        texts: list[tuple[str, str]] = []
        for value in grant.subject:
            texts.append((f"subject {value.field}", value.text))
            raw = value.raw.decode("latin-1")  # what a C verifier copies, byte for byte
            if raw != value.text:
                texts.append((f"subject {value.field}, as its bytes read", raw))
        texts += [(f"configured {where}", text) for where, text in plan.configured_names]
        texts += [("subjectAltName DNS", n.value) for n in grant.names if isinstance(n, x509.DNSName)]
        for where, text in texts:
            found = name_under(text, domain)
            if found is not None:
                raise PolicyRefused(f"the name {text!r} ({where}) is not allowed for cert id {cert_id}: names under "
                                    f"{domain} belong to local identities (local-id-*)")

    async def issue_chain(self, cert_id: str, csr: x509.CertificateSigningRequest,
                          issuer: tuple[str, str] | None, renewing: bool = False,
                          self_key: str | None = None) -> list[x509.Certificate]:
        """Issue by the caller's issuer, else by the configured method. ``self_key`` overrides the key a
        self-signed cert is signed with (the renewal engine's not-yet-moved new key)."""
        plan = self.plan(cert_id)
        opts, policy, subject, lifetime = plan.options, plan.policy, plan.subject, plan.lifetime
        common_name = opts.common_name if opts else None
        if issuer is None and (opts is None or opts.method is None):
            raise BadRequest(f"no issuer given and no cert_issuance method configured for cert {cert_id!r}")
        # refused before any key is loaded or any request leaves the device (an EST server gets the CSR as it is)
        grant = policy.grant(csr, common_name if opts is not None and opts.method != "est" else None)
        self._keep_local_id_names(cert_id, plan, grant)
        if issuer is not None:
            issuer_id, handle = issuer
            issuer_chain = self.read_chain(validate_cert_id(issuer_id))
            if issuer_chain is None:
                raise BadRequest(f"issuer cert {issuer_id!r} not found")
            policy.check_issuer(issuer_chain[0], issuer_id)
            public = await handle_public_key(self.keys, handle)
            if not same_public_key(public, issuer_chain[0].public_key()):
                raise BadRequest(f"privateKeyHandle is not the key of issuer cert {issuer_id!r}")
            leaf = await issue(self.keys, csr, IssuerRef(issuer_chain[0], handle, public), lifetime,
                               policy=policy, grant=grant, common_name=common_name, subject=subject)
            return [leaf, *issuer_chain]
        assert opts is not None
        if opts.method == "self_signed":
            key_id = self_key or opts.key_id or cert_id
            handle = await self.keys.load_key_pair(key_id)
            public = await handle_public_key(self.keys, handle)
            if not same_public_key(public, csr.public_key()):
                raise InvalidCsr(f"a self-signed cert for {cert_id!r} must be requested for key {key_id!r}")
            return [await issue(self.keys, csr, IssuerRef(None, handle, public), lifetime,
                                policy=policy, grant=grant, common_name=common_name, subject=subject)]
        if opts.method == "local_ca":
            for remembered in (True, False):
                ca = await self.local_ca()
                policy.check_issuer(ca.chain[0], self.settings.local_ca.cert if self.settings.local_ca else "local CA")
                try:
                    leaf = await issue(self.keys, csr, ca.issuer, lifetime, policy=policy, grant=grant,
                                       common_name=common_name, subject=subject)
                except (InvalidHandle, KeyNotFound, IssuerKeyMismatch):
                    if not (remembered and ca is self._local_ca):
                        raise
                    # the CA's key was replaced or deleted since it was remembered: look again (and re-create)
                    self._local_ca = None
                    continue
                return [leaf, *ca.chain]
            raise AssertionError("unreachable")  # pragma: no cover - the second pass returns or raises
        return await self._enroll_est(cert_id, opts, csr, renewing, policy)

    async def local_ca(self) -> LocalCa:
        """The local CA, created (key and self-signed cert) on first use and re-created when expired. Remembered
        while its certificate file is unchanged, so an issuance does not reload the CA key and certificate."""
        ca = self.settings.local_ca
        if ca is None:
            raise BadRequest("no [cert_issuance.local_ca] is configured")
        now = dt.datetime.now(dt.UTC)
        known = self._local_ca
        if known is not None and known.chain[0].not_valid_after_utc > now:
            if time.monotonic() - self._local_ca_checked < LOCAL_CA_RECHECK_SECONDS:
                return known
            if known.stamp == self._stamp(ca.cert):
                self._local_ca_checked = time.monotonic()
                return known
        handle = await self.keys.create_key_pair_if_not_exists(ca.pk, "ec-p256:rsa-2048:*")
        public = await handle_public_key(self.keys, handle)
        async with self.lock(ca.cert):
            chain = self.read_chain(ca.cert)
            usable = chain is not None and chain[0].not_valid_after_utc > now
            if chain is None or not usable or not same_public_key(public, chain[0].public_key()):
                cert = await sign_certificate(self_signed_ca(ca.common_name, public, ca.expiry_days),
                                              self.keys, handle, public)
                chain = [cert]
                await self.write_chain(ca.cert, chain)
                log.info("created local CA %r", ca.cert)
            stamp = self._stamp(ca.cert)
            found = LocalCa(chain, handle, public, stamp)
            if stamp is not None:
                self._local_ca, self._local_ca_checked = found, time.monotonic()
        return found

    def _stamp(self, cert_id: str) -> tuple[int, int, int] | None:
        """The stored file's identity (inode, mtime, size): changes whenever anything replaces the file; None
        while a change is staged or when nothing is stored."""
        if self.store.staged(cert_id):
            return None
        try:
            st = self.store.path(cert_id).stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    async def _enroll_est(self, cert_id: str, opts: IssuanceOptions, csr: x509.CertificateSigningRequest,
                          renewing: bool, policy: IssuancePolicy) -> list[x509.Certificate]:
        """The CSR goes to the EST server as it is (it is signed by the requester's key), so it was checked
        against the policy first (``issue_chain``); what comes back must not be a CA unless the policy says so."""
        est = self.settings.est
        url = opts.url or est.urls.get(cert_id) or est.default_url
        assert url is not None  # settings validation guarantees one
        trusted: list[x509.Certificate] = []
        for trusted_id in est.trusted_certs:
            chain = self.read_chain(trusted_id)
            if chain is None:
                raise IssuanceFailed(f"EST trusted cert {trusted_id!r} not found (cert_issuance.est.trusted_certs)")
            trusted.extend(chain)
        auth = opts.auth or est.auth
        identity = await self._est_identity(auth, trusted, url)
        client = self.est_factory(url, trusted, auth, identity)
        der = csr.public_bytes(serialization.Encoding.DER)
        # Re-enrollment (RFC 7030 4.2.2) authenticates with the current cert over TLS, which needs an EST identity.
        reenroll = renewing and auth.identity_cert is not None
        try:
            chain = await (client.simple_reenroll(der) if reenroll else client.simple_enroll(der))
        except HttpError:
            raise
        except Exception as e:
            raise IssuanceFailed(f"EST enrollment of {cert_id!r} at {url} failed: {e}") from e
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                await close()
        if not chain or not same_public_key(chain[0].public_key(), csr.public_key()):
            raise IssuanceFailed(f"EST server at {url} returned a cert for another key")
        try:
            policy.check_issued(chain[0], f"EST server at {url}")
        except ValueError as e:
            raise IssuanceFailed(str(e)) from None
        return chain

    async def _keys_identity(self, cert_id: str, key_id: str) -> KeysIdentity | None:
        """A TLS client identity whose key stays in the keys service; None if its cert is missing or expired."""
        chain = self.read_chain(cert_id)
        if chain is None or chain[0].not_valid_after_utc <= dt.datetime.now(dt.UTC):
            return None
        return KeysIdentity(chain, self.keys, await self.keys.load_key_pair(key_id))

    async def _est_identity(self, auth: EstAuth, trusted: list[x509.Certificate], url: str) -> KeysIdentity | None:
        """The EST identity (RFC 7030 client auth); when it is missing or expired and a bootstrap identity is
        configured, enroll a new EST identity with the bootstrap one first, as aziot does: at the URL of the cert
        being issued (``url``, e.g. ``[edge_ca] url``) unless ``[cert_issuance.est.urls]`` names one for it."""
        bootstrap = None
        if auth.bootstrap_identity_cert and auth.bootstrap_identity_pk:
            bootstrap = await self._keys_identity(auth.bootstrap_identity_cert, auth.bootstrap_identity_pk)
        if not (auth.identity_cert and auth.identity_pk):
            return bootstrap
        identity = await self._keys_identity(auth.identity_cert, auth.identity_pk)
        if identity is not None or bootstrap is None:
            return identity
        url = self.settings.est.urls.get(auth.identity_cert) or url
        handle = await self.keys.create_key_pair_if_not_exists(auth.identity_pk, "ec-p256:rsa-2048:*")
        public = await handle_public_key(self.keys, handle)
        csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(bootstrap.cert_chain[0].subject),
                             self.keys, handle, public)
        client = self.est_factory(url, trusted, EstAuth(), bootstrap)
        try:
            chain = await client.simple_enroll(csr.public_bytes(serialization.Encoding.DER))
        except HttpError:
            raise
        except Exception as e:
            raise IssuanceFailed(f"enrolling the EST identity {auth.identity_cert!r} with the bootstrap identity "
                                 f"failed: {e}") from e
        if not chain or not same_public_key(chain[0].public_key(), public):
            raise IssuanceFailed(f"EST server at {url} returned an EST identity cert for another key")
        await self.write_chain(auth.identity_cert, chain)
        log.info("enrolled EST identity %r with the bootstrap identity", auth.identity_cert)
        return KeysIdentity(chain, self.keys, handle)


class _CallerView:
    def __init__(self, service: CertService, caller: Caller) -> None:
        self._s = service
        self.caller = caller

    async def create_cert(self, cert_id: str, csr: bytes, issuer: tuple[str, str] | None = None) -> str:
        return await self._s.create_cert(self.caller, cert_id, csr, issuer)

    async def import_cert(self, cert_id: str, pem: str) -> str:
        return await self._s.import_cert(self.caller, cert_id, pem)

    async def get_cert(self, cert_id: str) -> str:
        return await self._s.get_cert(cert_id)

    async def delete_cert(self, cert_id: str) -> None:
        await self._s.delete_cert(self.caller, cert_id)
