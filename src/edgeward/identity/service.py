"""The identity service: provisions the device (manual or DPS with a symmetric key, X.509 or TPM attestation),
keeps module identities in IoT Hub in step with what runs here, and tells each caller only the identities its
principal may see. When the device identity certificate is renewed, a DPS device registers again with the new one.

Host-process principals (``[[principal]] idtype = ["module"]``, e.g. Device Update) each get a hub module identity
whose SAS keys derive from a key of that principal alone. When a principal leaves the configuration, the next start
deletes that key (every handle the agent was given stops signing at once, cloud or no cloud), drops the local copy,
and deletes the hub identity - only one this service recorded creating for a host principal and that still carries
its managedBy tag - retrying through hub outages, at the next start if need be."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..access.trusted import trusted_service_uids
from ..certs.api import CertsApi
from ..certs.est.tls_identity import KeysIdentity
from ..certs.x509sign import handle_public_key, same_public_key, sign_csr
from ..config.b64 import decode_key
from ..http.errors import BadRequest, Conflict, HttpError, NotFound, Unauthorized
from ..http.peercred import Caller
from ..keys.api import KeysApi
from ..keys.model import HmacSha256
from ..repeat_log import RepeatLog
from .dps_auth import DpsAuth, SymmetricKeyAuth, TpmAuth, X509Auth
from .model import AziotIdentity, HubModules, Identity, LocalIdentity, ModuleInfo, ProvisioningInfo
from .reprovisioning import ReprovisioningPolicy
from .settings import DpsProvisioning, IdentitySettings, IdPrincipal, ManualProvisioning, SecretSource
from .state import DeviceIdentity, DeviceStore, HostModule, HostModules, ModuleCache, ModuleRecord, fingerprint
from .unreachable import Unreachable

if TYPE_CHECKING:  # the TPM's modules load only on a device that has one
    from ..tpm.api import TpmApi

__all__ = [
    "DEVICE_KEY_ID",
    "HOST_MODULE_TAG",
    "MODULE_MASTER_KEY_ID",
    "DpsRegistrar",
    "HubAuth",
    "HubFactory",
    "IdentityService",
    "NotProvisioned",
    "Signer",
    "principal_key_id",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEVICE_KEY_ID = "edgeward-identity-device-key"
MODULE_MASTER_KEY_ID = "edgeward-identity-module-master"
HOST_MODULE_TAG = "edgeward"  # managedBy of the hub identities made for host principals (the edge agent uses IotEdge)
RETRY_FIRST = 1.0
RETRY_MAX = 300.0

Signer = Callable[[bytes], Awaitable[bytes]]
HubAuth = Signer | KeysIdentity  # SAS tokens signed by the device key, or mutual TLS with the identity cert
HubFactory = Callable[[DeviceIdentity, HubAuth], HubModules]
DpsRegistrar = Callable[[DpsProvisioning, DpsAuth], Awaitable[DeviceIdentity]]


class NotProvisioned(HttpError):
    status = 503


def _read_secret(source: SecretSource) -> bytes:
    if source.value is not None:
        return source.value
    assert source.uri is not None
    raw = Path(source.uri.removeprefix("file://")).read_bytes()
    try:
        return decode_key(raw.strip())  # a base64 text file (padding optional)
    except ValueError:
        return raw  # aziot-keyd's key file: its bytes are the key, a leading or trailing "whitespace" byte included


def principal_key_id(name: str) -> str:
    """The key a host principal's module SAS keys derive from: its own, so deleting it kills exactly its handles."""
    return f"edgeward-identity-principal-{name}"


def _config_fingerprint(settings: IdentitySettings) -> str:
    prov = settings.provisioning
    doc = asdict(prov) if prov is not None else {}
    for name in ("sas_key", "symmetric_key"):
        secret = doc.get(name)
        if isinstance(secret, dict) and secret.get("value") is not None:
            secret["value"] = fingerprint(base64.b64encode(secret["value"]).decode())
    return fingerprint({"type": type(prov).__name__, **doc})


class IdentityService:
    def __init__(self, settings: IdentitySettings, keys: KeysApi, certs: CertsApi, hub_factory: HubFactory,
                 *, dps_register: DpsRegistrar | None = None, trusted_uids: frozenset[int] | None = None,
                 tpm: TpmApi | None = None) -> None:
        self.settings = settings
        self.tpm = tpm  # the TPM service, for DPS TPM attestation and the SAS tokens of a TPM device
        self.keys = keys
        self.certs = certs
        self.hub_factory = hub_factory
        self.dps_register = dps_register
        self.store = DeviceStore(settings.homedir)
        self.cache = ModuleCache(settings.homedir)
        self.host_modules = HostModules(settings.homedir)
        # a line per answer from the local copy, which any principal reading its identity in a loop during a hub
        # outage would write at will: bounded like certd's "issued cert" line
        self.from_copy_log = RepeatLog(log, "answered from the local copy", level=logging.WARNING)
        self.reconciled = asyncio.Event()  # set once the host principals' identities match the configuration
        self._reconcile_lock = asyncio.Lock()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._trusted = trusted_uids if trusted_uids is not None else trusted_service_uids("identityd")
        self._device: DeviceIdentity | None = None
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self._fingerprint = _config_fingerprint(settings)
        self.reprovisioning = ReprovisioningPolicy(settings)  # auto_reprovisioning_mode
        self._retry_task: asyncio.Task[None] | None = None
        self._renewal_task: asyncio.Task[None] | None = None
        self.next_attempt_in: float | None = None
        self.on_close: list[Callable[[], Coroutine[Any, Any, None]]] = []  # also released by close(): owned clients
        self._closing: set[asyncio.Task[None]] = set()

    # provisioning -----------------------------------------------------------------------------------------
    @property
    def device(self) -> DeviceIdentity:
        if self._device is None:
            detail = f": {self._last_error}" if self._last_error else ""
            raise NotProvisioned(f"the device is not provisioned yet{detail}")
        gateway = self.settings.gateway_hostname  # nested edge: today's parent, whatever a backup recorded
        if gateway is not None and self._device.gateway_host != gateway:
            return replace(self._device, gateway_host=gateway)
        return self._device

    async def start(self) -> None:
        """Provision (or restore the backup made under this same configuration), then reconcile the modules of
        host-process principals. A cloud outage leaves the service up, serving from its backup, and the
        reconciliation is retried in the background."""
        await self._revoke_removed_principal_keys()  # first, and needing no cloud: removed agents' handles die now
        if self.settings.provisioning is None:
            log.info("no [provisioning] configured: the device has no cloud identity")
            return
        fresh = self.reprovisioning.fresh_on_startup()
        if fresh:
            log.info("auto_reprovisioning_mode = AlwaysOnStartup: registering with DPS again")
        try:
            await self.provision(use_backup=not fresh)
        except HttpError as e:
            log.error("provisioning failed: %s", e.message)
            if _retriable(e):
                self._retry_task = asyncio.create_task(self._retry_provisioning(e), name="provisioning-retry")
        if self._device is not None:
            await self._reconcile_or_retry()

    async def _retry_provisioning(self, first: HttpError) -> None:
        """Retry a provisioning the cloud refused for now (429, 5xx, unreachable), with exponential backoff and
        the cloud's Retry-After; the status says when the next attempt is."""
        error, delay = first, RETRY_FIRST
        while True:
            wait = max(delay, getattr(error, "retry_after", None) or 0.0)
            self.next_attempt_in = wait
            await asyncio.sleep(wait)
            try:
                await self.provision(use_backup=False)
            except HttpError as e:
                if not _retriable(e):
                    log.error("provisioning failed and will not be retried: %s", e.message)
                    return
                error, delay = e, min(delay * 2, RETRY_MAX)
                log.warning("provisioning failed again (%s); retrying in %.0fs", e.message, delay)
                continue
            self.next_attempt_in = None
            await self._reconcile_or_retry()
            return

    async def provision(self, use_backup: bool) -> DeviceIdentity:
        async with self._lock:
            prov = self.settings.provisioning
            if prov is None:
                self._last_error = "no [provisioning] is configured"
                raise NotProvisioned(self._last_error)
            backup = self.store.load(self._fingerprint) if use_backup else None
            if backup is not None:
                self._device = backup
                log.info("device %s on %s restored from backup", backup.device_id, backup.hub)
                return backup
            try:
                device = await self._provision_fresh(prov)
            except HttpError as e:
                self._last_error = e.message
                # A reprovision that fails keeps serving with the current identity if it came from this config.
                fallback = self.store.load(self._fingerprint)
                if fallback is not None:
                    self._device = fallback
                raise
            self.store.save(device, self._fingerprint)
            self._device, self._last_error = device, None
            log.info("device %s provisioned on %s (%s)", device.device_id, device.hub, device.source)
            return device

    async def _provision_fresh(self, prov: ManualProvisioning | DpsProvisioning) -> DeviceIdentity:
        if isinstance(prov, ManualProvisioning):
            if prov.auth == "sas":
                assert prov.sas_key is not None
                key_id = await self._device_key(prov.sas_key, "sign")
                return DeviceIdentity(prov.hub, prov.device_id, "sas", key_id=key_id)
            assert prov.identity_cert is not None and prov.identity_pk is not None
            await self.x509_identity(prov.identity_cert, prov.identity_pk, prov.device_id)  # usable now, or fail
            return DeviceIdentity(prov.hub, prov.device_id, "x509", cert_id=prov.identity_cert, pk_id=prov.identity_pk)
        if self.dps_register is None:
            raise NotProvisioned("DPS provisioning is not available in this build")
        auth: DpsAuth
        if prov.auth == "symmetric_key":
            assert prov.symmetric_key is not None
            key_id = await self._device_key(prov.symmetric_key, "derive,sign")
            auth = SymmetricKeyAuth(await self._device_signer(
                key_id, prov.registration_id if prov.group_enrollment else None))
        elif prov.auth == "x509":
            assert prov.identity_cert is not None and prov.identity_pk is not None
            auth = X509Auth(await self.x509_identity(prov.identity_cert, prov.identity_pk, prov.registration_id))
        else:
            auth = TpmAuth(self._tpm())
        return await self.dps_register(prov, auth)

    async def _device_key(self, source: SecretSource, usage: str) -> str:
        """The keys service id of the device's symmetric key: a key held there already (preloaded from a token, so
        the bytes are never seen here) is used as it is; a value or file is imported."""
        if source.key_id is not None:
            await self.keys.load_key(source.key_id)  # there now, or fail before registering anything
            return source.key_id
        await self.keys.import_key(DEVICE_KEY_ID, _read_secret(source), usage)
        return DEVICE_KEY_ID

    def _tpm(self) -> TpmApi:
        if self.tpm is None:
            raise NotProvisioned("TPM attestation needs the TPM service: configure [tpm]")
        return self.tpm

    async def x509_identity(self, cert_ref: str, key_id: str, common_name: str | None) -> KeysIdentity:
        """The device identity for mutual TLS: the certificate from a file:// URI or the certs service, and its key,
        which stays in the keys service (any backend; preloaded from a file or PKCS#11 URI, or created here).

        A cert id the certs service does not hold yet, or holds expired or for another key, is issued now from a
        CSR signed in the keys service (CN: ``common_name``, else the current cert's), by the issuance method
        configured for that id ([cert_issuance.<id>]: self-signed, local CA or EST), as aziot-identityd does."""
        try:
            handle = await self.keys.load_key_pair(key_id)
        except HttpError as e:
            if e.status != 404:
                raise
            handle = await self.keys.create_key_pair_if_not_exists(key_id, "ec-p256:rsa-2048:*")
        if cert_ref.startswith("file://"):
            path = Path(cert_ref.removeprefix("file://"))
            try:
                from_file = x509.load_pem_x509_certificates(path.read_bytes())
            except (OSError, ValueError) as e:
                raise HttpError(f"cannot read the identity certificate {cert_ref}: {e}", status=500) from e
            return KeysIdentity(from_file, self.keys, handle)
        public = await handle_public_key(self.keys, handle)
        chain: list[x509.Certificate] | None = None
        try:
            chain = x509.load_pem_x509_certificates((await self.certs.get_cert(cert_ref)).encode())
        except HttpError as e:
            if e.status != 404:
                raise
        now = dt.datetime.now(dt.UTC)
        if chain and same_public_key(chain[0].public_key(), public) and now < chain[0].not_valid_after_utc:
            return KeysIdentity(chain, self.keys, handle)
        cn = common_name or (_cn(chain[0]) if chain else None) or cert_ref
        builder = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        csr = await sign_csr(builder, self.keys, handle, public)
        try:
            pem = await self.certs.create_cert(cert_ref, csr.public_bytes(serialization.Encoding.PEM))
        except HttpError as e:
            if chain and not same_public_key(chain[0].public_key(), public):
                # Say the cause first: a preloaded certificate and key that are not a pair, not the re-issue's error.
                raise HttpError(f"the identity certificate {cert_ref!r} is not for the key {key_id!r} (they are not "
                                f"a pair), and it cannot be issued anew: {e}", status=e.status) from e
            raise
        log.info("issued the device identity certificate %r (CN %s)", cert_ref, cn)
        return KeysIdentity(x509.load_pem_x509_certificates(pem.encode()), self.keys, handle)

    async def _device_signer(self, key_id: str, derivation: str | None) -> Signer:
        handle = await self.keys.load_key(key_id)
        if derivation is not None:  # a group enrollment: the device key derives from the group key
            handle = await self.keys.create_derived_key(handle, derivation.encode())

        async def sign(data: bytes) -> bytes:
            return await self.keys.sign(handle, HmacSha256(data))

        return sign

    async def _device_key_handle(self, device: DeviceIdentity) -> str | None:
        if device.auth == "tpm":
            return None  # the key is in the TPM; tokens are signed by the TPM service
        if device.auth == "x509":
            assert device.pk_id is not None
            return await self.keys.load_key_pair(device.pk_id)
        assert device.key_id is not None
        handle = await self.keys.load_key(device.key_id)
        if device.derivation is not None:
            handle = await self.keys.create_derived_key(handle, device.derivation.encode())
        return handle

    async def hub(self) -> HubModules:
        device = self.device
        auth: HubAuth
        if device.auth == "sas":
            assert device.key_id is not None
            auth = await self._device_signer(device.key_id, device.derivation)
        elif device.auth == "tpm":
            auth = self._tpm().sign_with_auth_key
        else:
            assert device.cert_id is not None and device.pk_id is not None
            auth = await self.x509_identity(device.cert_id, device.pk_id, None)
        return self.hub_factory(device, auth)

    # renewal of the identity certificate ------------------------------------------------------------------
    def follow_renewals(self, events: asyncio.Queue[Any]) -> None:
        """React to the certs service's renewal events (:meth:`RenewalEngine.subscribe`): when the device identity
        certificate is renewed, a DPS device registers again with the new certificate, as aziot does (the hub
        may assign it elsewhere); a manually provisioned device just uses the new one from its next connection."""
        self._renewal_task = asyncio.create_task(self._on_renewals(events), name="identity-cert-renewals")

    def identity_cert_id(self) -> str | None:
        prov = self.settings.provisioning
        cert = getattr(prov, "identity_cert", None)
        return cert if isinstance(cert, str) and not cert.startswith("file://") else None

    async def _on_renewals(self, events: asyncio.Queue[Any]) -> None:
        while True:
            event = await events.get()
            if getattr(event, "cert_id", None) != self.identity_cert_id():
                continue
            if not isinstance(self.settings.provisioning, DpsProvisioning):
                log.info("device identity certificate renewed; the hub sees it from the next connection")
                continue
            log.info("device identity certificate renewed: registering with DPS again")
            try:
                await self.reprovision()
            except HttpError as e:
                log.error("re-provisioning with the renewed identity certificate failed: %s", e.message)
                if _retriable(e) and (self._retry_task is None or self._retry_task.done()):
                    self._retry_task = asyncio.create_task(self._retry_provisioning(e), name="provisioning-retry")

    async def reprovision(self) -> None:
        """Provision again; the host principals' identities follow (retried on their own if the hub fails them,
        so a reconciliation failure is not a failed provisioning)."""
        await self.provision(use_backup=False)
        await self._reconcile_or_retry()

    # identities -------------------------------------------------------------------------------------------
    async def device_identity(self) -> AziotIdentity:
        device = self.device
        return AziotIdentity(device.hub, device.device_id, device.auth, await self._device_key_handle(device),
                             cert_id=device.cert_id, gateway_host=device.gateway_host)

    def _host_principal_modules(self) -> set[str]:
        return {p.name for p in self.settings.principals if p.idtype and "module" in p.idtype}

    async def _module_keys(self, module_id: str, generation_id: str) -> tuple[str, bytes, bytes]:
        """A configured host principal's keys derive from its own key; every other module's from the shared
        master (as the runtime derives them for the workload API)."""
        key_id = principal_key_id(module_id) if module_id in self._host_principal_modules() else MODULE_MASTER_KEY_ID
        master = await self.keys.create_key_if_not_exists(key_id, "derive")
        primary = await self.keys.create_derived_key(master, f"{module_id}:{generation_id}:primary".encode())
        secondary = await self.keys.create_derived_key(master, f"{module_id}:{generation_id}:secondary".encode())
        return primary, await self.keys.export_derived_key(primary), await self.keys.export_derived_key(secondary)

    async def _aziot_module(self, info: ModuleInfo) -> AziotIdentity:
        device = self.device
        handle, _, _ = await self._module_keys(info.module_id, info.generation_id)
        return AziotIdentity(device.hub, device.device_id, "sas", handle, gateway_host=device.gateway_host,
                             module_id=info.module_id, gen_id=info.generation_id, managed_by=info.managed_by)

    async def _on_hub(self, op: Callable[[HubModules], Awaitable[T]]) -> T:
        """``op`` against the device's hub; when the hub refuses the device's credentials and the reprovisioning
        mode says the device may have moved (Dynamic), register again and retry once on the hub DPS names."""
        try:
            return await op(await self.hub())
        except HttpError as e:
            if not self.reprovisioning.moved(e):
                raise
            log.warning("IoT Hub refused the device's credentials (%s): the device may have moved to another "
                        "hub, registering with DPS again (auto_reprovisioning_mode = Dynamic)", e.message)
            try:
                await self.reprovision()
            except HttpError as again:
                log.error("reprovisioning after the hub's refusal failed: %s", again.message)
                raise e from None
        return await op(await self.hub())

    def _refuse_host_principals_identity(self, module_id: str) -> None:
        """409 for a module identity a host principal holds (configured, or recorded and not yet deleted): only the
        reconciliation creates, rekeys or deletes it. aziot-identityd lets a daemon (aziot-edged, for the edge
        agent) do all three to any name; here the agent deploying a module named like a host principal would delete
        that principal's identity (the agent deletes only IotEdge-managed ones it lists, but asks on any name)."""
        held = self._host_principal_modules() | {r.module_id for r in self.host_modules.all()}
        if module_id in held:
            raise Conflict(f"module identity {module_id!r} belongs to host principal {module_id!r} (managedBy "
                           f"{HOST_MODULE_TAG!r}): only this service changes it, from the [[principal]] configuration")

    async def create_module(self, module_id: str, managed_by: str | None = None) -> AziotIdentity:
        _validate_module_id(module_id)
        self._refuse_host_principals_identity(module_id)

        async def create(hub: HubModules) -> ModuleInfo:
            return await self._register(hub, module_id, managed_by, await hub.get_module(module_id))
        return await self._aziot_module(await self._on_hub(create))

    async def update_module(self, module_id: str) -> AziotIdentity:
        """Give an existing module identity the keys of its generation again (aziot's update: no such module in
        the hub is a 404, never a creation)."""
        _validate_module_id(module_id)
        self._refuse_host_principals_identity(module_id)

        async def update(hub: HubModules) -> ModuleInfo:
            existing = await hub.get_module(module_id)
            if existing is None:
                raise NotFound(f"module identity {module_id!r} not found")
            return await self._register(hub, module_id, existing.managed_by, existing)
        return await self._aziot_module(await self._on_hub(update))

    async def _register(self, hub: HubModules, module_id: str, managed_by: str | None,
                        existing: ModuleInfo | None) -> ModuleInfo:
        """Create the module identity unless it exists, then give the hub its keys for this generation."""
        info = existing if existing is not None else await hub.create_module(module_id, managed_by)
        _, primary, secondary = await self._module_keys(module_id, info.generation_id)
        info = await hub.update_module(module_id, primary, secondary)
        self.cache.put(self.device.device_id, ModuleRecord(module_id, "aziot", info.generation_id, info.managed_by))
        log.info("module identity %r (generation %s) registered in %s", module_id, info.generation_id, self.device.hub)
        return info

    async def get_module(self, module_id: str) -> AziotIdentity:
        return await self._aziot_module(await self._module_info(module_id))

    async def _module_info(self, module_id: str) -> ModuleInfo:
        """The hub's answer, or the local copy while the hub is unreachable; with
        ``prefer_module_identity_cache``, the local copy first and the hub only for a module it does not hold."""
        _validate_module_id(module_id)
        if self.settings.prefer_module_identity_cache:
            held = self.cache.get(self.device.device_id, "aziot", module_id)
            if held is not None:
                return ModuleInfo(held.module_id, held.generation_id, held.managed_by)
        try:
            info = await self._on_hub(lambda hub: hub.get_module(module_id))
            if info is None:
                self.cache.delete(self.device.device_id, "aziot", module_id)
                raise NotFound(f"module identity {module_id!r} not found")
            self.cache.put(self.device.device_id, ModuleRecord(module_id, "aziot", info.generation_id,
                                                                info.managed_by))
        except NotFound:
            raise
        except HttpError as e:
            if e.status not in (429, 502, 503, 504):
                raise
            cached = self.cache.get(self.device.device_id, "aziot", module_id)
            if cached is None:
                raise
            self.from_copy_log.log(module_id, "hub unreachable (%s); answering %r from the local copy", e.message,
                                   module_id)
            info = ModuleInfo(cached.module_id, cached.generation_id, cached.managed_by)
        return info

    async def list_modules(self) -> list[AziotIdentity]:
        if self.settings.prefer_module_identity_cache:
            held = self.cache.list_all(self.device.device_id, "aziot")
            if held:
                return [await self._aziot_module(ModuleInfo(r.module_id, r.generation_id, r.managed_by))
                        for r in held]
        try:
            infos = await self._on_hub(lambda hub: hub.list_modules())
            self.cache.replace_all(self.device.device_id, "aziot",
                                   [ModuleRecord(i.module_id, "aziot", i.generation_id, i.managed_by) for i in infos])
        except HttpError as e:
            if e.status not in (429, 502, 503, 504):
                raise
            infos = [ModuleInfo(r.module_id, r.generation_id, r.managed_by)
                     for r in self.cache.list_all(self.device.device_id, "aziot")]
        return [await self._aziot_module(i) for i in infos]

    async def delete_module(self, module_id: str) -> None:
        _validate_module_id(module_id)
        self._refuse_host_principals_identity(module_id)
        await self._on_hub(lambda hub: hub.delete_module(module_id))
        self.cache.delete(self.device.device_id, "aziot", module_id)

    async def local_identity(self, module_id: str, server: bool) -> LocalIdentity:
        """An X.509 identity for a local (non-cloud) module, issued by the certs service."""
        _validate_module_id(module_id)
        if self.settings.localid_domain is None:
            raise BadRequest("local identities need [localid] domain_name in the configuration")
        cn = f"{module_id}.{self.settings.hostname}.{self.settings.localid_domain}"
        key = ec.generate_private_key(ec.SECP256R1())
        # aziot's local identities are always client certificates (EST renews them as clients); a server one is
        # both, as aziot-identityd's create_csr asks
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .sign(key, hashes.SHA256()))
        pem = await self.certs.create_cert(f"local-id-{module_id}", csr.public_bytes(serialization.Encoding.PEM))
        leaf = x509.load_pem_x509_certificates(pem.encode())[0]
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        self.cache.put(self.device_id_or_local(), ModuleRecord(module_id, "local", str(leaf.serial_number)))
        return LocalIdentity(module_id, key_pem, pem, leaf.not_valid_after_utc.isoformat())

    def device_id_or_local(self) -> str:
        return self._device.device_id if self._device is not None else "local"

    # host principals' module identities ---------------------------------------------------------------------
    async def reconcile_principal_modules(self) -> None:
        """Make the hub match the configuration: delete the identities of host principals no longer configured,
        then give each configured one (idtype "module") a module identity named after it. Every step is tried;
        the first failure is raised afterwards (a transient one first, so the caller knows to retry)."""
        async with self._reconcile_lock:
            configured = self._host_principal_modules()
            failures: list[HttpError] = []
            for record in self.host_modules.all():
                if record.module_id not in configured:
                    try:
                        await self._remove_host_module(record)
                    except (HttpError, OSError) as e:
                        failures.append(_as_http_error(e))
                        log.warning("could not remove the identity of host principal %r: %s", record.module_id,
                                    failures[-1].message)
            for name in sorted(configured):
                try:
                    await self._ensure_host_module(name)
                except (HttpError, OSError) as e:
                    failures.append(_as_http_error(e))
                    log.warning("could not register the identity of host principal %r: %s", name,
                                failures[-1].message)
            if failures:
                raise next((e for e in failures if _retriable(e)), failures[0])
            self.reconciled.set()

    async def _reconcile_or_retry(self) -> None:
        try:
            await self.reconcile_principal_modules()
        except HttpError as e:
            if not _retriable(e):
                log.error("host principals' identities not reconciled (retried at the next start): %s", e.message)
            elif self._reconcile_task is None or self._reconcile_task.done():
                self._reconcile_task = asyncio.create_task(self._retry_reconcile(e), name="host-modules-retry")

    async def _retry_reconcile(self, first: HttpError) -> None:
        """Retry through a hub outage with exponential backoff (and the hub's Retry-After); the records keep the
        intent for the next start if this process stops first."""
        error, delay = first, RETRY_FIRST
        while True:
            await asyncio.sleep(max(delay, getattr(error, "retry_after", None) or 0.0))
            try:
                await self.reconcile_principal_modules()
            except HttpError as e:
                if not _retriable(e):
                    log.error("host principals' identities not reconciled (retried at the next start): %s",
                              e.message)
                    return
                error, delay = e, min(delay * 2, RETRY_MAX)
                continue
            log.info("host principals' identities reconciled with the hub")
            return

    async def _revoke_removed_principal_keys(self) -> None:
        configured = self._host_principal_modules()
        for record in self.host_modules.all():
            if record.module_id not in configured:
                try:
                    await self._revoke_principal_key(record)
                except (HttpError, OSError) as e:  # the keys service is down: the reconciliation tries again
                    log.error("could not delete the key of removed host principal %r: %s", record.module_id, e)

    async def _revoke_principal_key(self, record: HostModule) -> None:
        """Delete the principal's key, so no handle derived from it signs again, and its local copy."""
        try:
            handle = await self.keys.load_key(principal_key_id(record.module_id))
        except HttpError as e:
            if e.status != 404:
                raise
        else:
            await self.keys.delete_key(handle)
            log.info("host principal %r is no longer configured: its key is deleted and its handles are void",
                     record.module_id)
        self.cache.delete(record.device_id, "aziot", record.module_id)

    async def _remove_host_module(self, record: HostModule) -> None:
        await self._revoke_principal_key(record)
        device = self.device
        if (record.hub, record.device_id) != (device.hub, device.device_id):
            log.warning("the identity of removed host principal %r is on %s (device %s), which this device no "
                        "longer uses: delete it there by hand", record.module_id, record.hub, record.device_id)
            self.host_modules.forget(record)
            return
        hub = await self.hub()
        info = await hub.get_module(record.module_id)
        if info is not None and (info.managed_by != HOST_MODULE_TAG
                                 or record.generation_id not in ("", info.generation_id)):
            log.warning("not deleting module identity %r: it is no longer the one made for the host principal "
                        "(managedBy %r, generation %s)", record.module_id, info.managed_by, info.generation_id)
        elif info is not None:
            try:
                await hub.delete_module(record.module_id)
            except HttpError as e:
                if e.status != 404:
                    raise
            log.info("deleted the hub identity of removed host principal %r", record.module_id)
        self.host_modules.forget(record)

    async def _ensure_host_module(self, name: str) -> None:
        _validate_module_id(name)
        device, hub = self.device, await self.hub()
        info = await hub.get_module(name)
        if info is not None and info.managed_by != HOST_MODULE_TAG:
            log.error("host principal %r gets no identity: the hub's module identity %r is managed by %r, not "
                      "taken over", name, name, info.managed_by)
            return
        # recorded before the hub creates anything: a crash in between leaves a row, never an untracked identity
        self.host_modules.record(HostModule(device.hub, device.device_id, name, info.generation_id if info else ""))
        info = await self._register(hub, name, HOST_MODULE_TAG, info)
        self.host_modules.record(HostModule(device.hub, device.device_id, name, info.generation_id))

    # authorization ----------------------------------------------------------------------------------------
    def principal_of(self, caller: Caller) -> IdPrincipal | None:
        if caller.uid in self._trusted:
            return IdPrincipal(caller.uid, "root")
        return next((p for p in self.settings.principals if p.uid == caller.uid), None)

    def require_daemon(self, caller: Caller) -> IdPrincipal:
        principal = self.principal_of(caller)
        if principal is None or principal.idtype is not None:
            raise Unauthorized(f"uid {caller.uid} may not use this API"
                               + ("" if principal is None else f" (principal {principal.name!r} is limited to "
                                                                f"its own identity)"))
        return principal

    async def caller_identity(self, caller: Caller) -> Identity:
        principal = self.principal_of(caller)
        if principal is None:
            raise Unauthorized(f"uid {caller.uid} is not a principal of the identity service")
        kinds = principal.idtype or ("device",)
        if "device" in kinds:  # aziot asks GetDevice first: a principal allowed the device identity gets it
            return await self.device_identity()
        if "module" in kinds:
            return await self.own_hub_module(principal)
        return await self.local_identity(principal.name, server=principal.local_server)

    async def own_hub_module(self, principal: IdPrincipal) -> AziotIdentity:
        """The hub module identity made for this host principal; one of its name that this service did not make
        for it (managedBy) is someone else's and not this agent's to use."""
        info = await self._module_info(principal.name)
        if info.managed_by != HOST_MODULE_TAG:
            raise NotFound(f"module identity {principal.name!r} is managed by {info.managed_by!r}, not by "
                           f"this service for host principal {principal.name!r}")
        return await self._aziot_module(info)

    def require_principal(self, caller: Caller) -> IdPrincipal:
        principal = self.principal_of(caller)
        if principal is None:
            raise Unauthorized(f"uid {caller.uid} is not a principal of the identity service")
        return principal

    def may_read_device(self, caller: Caller) -> IdPrincipal:
        """aziot's GetDevice: a daemon principal, or a host principal whose idtype holds "device"."""
        principal = self.require_principal(caller)
        if principal.idtype is None or "device" in principal.idtype:
            return principal
        raise Unauthorized(f"uid {caller.uid} may not read the device identity (principal {principal.name!r} "
                           f"is limited to its own identity)")

    def may_read_module(self, caller: Caller, module_id: str) -> IdPrincipal:
        """aziot's rule for ``GET /identities/modules/{id}``: a daemon principal reads any module; a host principal
        whose idtype holds "module" or "local" reads only the one named exactly like itself (the id as decoded once
        from the path, compared byte for byte); everyone else is refused."""
        principal = self.principal_of(caller)
        if principal is not None:
            kinds = principal.idtype
            if kinds is None or (module_id == principal.name and ("module" in kinds or "local" in kinds)):
                return principal
        # no log line of its own: the access guard records the refusal (with this message) in the refusal trail,
        # rate-limited per caller and route; a line per refusal let a caller flood the log (h/brk13a a01)
        raise Unauthorized(f"uid {caller.uid} may not read the identity of module {module_id!r}"
                           + ("" if principal is None else f" (principal {principal.name!r} may read only its own)"))

    def local_principal(self, name: str) -> IdPrincipal | None:
        """The ``[[principal]]`` with idtype "local" named ``name`` (its ``localid`` options shape the cert)."""
        return next((p for p in self.settings.principals
                     if p.name == name and p.idtype is not None and "local" in p.idtype), None)

    def local_principal_names(self) -> frozenset[str]:
        """Names whose local identity is configured by a ``[[principal]]`` with idtype "local" (aziot's list)."""
        return frozenset(p.name for p in self.settings.principals if p.idtype is not None and "local" in p.idtype)

    async def provisioning_info(self) -> ProvisioningInfo:
        prov = self.settings.provisioning
        if prov is None:
            return ProvisioningInfo("none")  # aziot's answer for provisioning source "none"
        if isinstance(prov, ManualProvisioning):
            return ProvisioningInfo("manual", prov.auth)
        registration_id = prov.registration_id
        if registration_id is None and prov.identity_cert is not None:
            # X.509 without a configured id registers with its cert's CN; aziot answers with that CN too
            registration_id = await self._identity_cert_cn(prov.identity_cert)
        return ProvisioningInfo("dps", prov.auth, prov.endpoint, prov.scope_id, registration_id, prov.payload)

    async def _identity_cert_cn(self, cert_ref: str) -> str:
        try:
            if cert_ref.startswith("file://"):
                data = Path(cert_ref.removeprefix("file://")).read_bytes()
            else:
                data = (await self.certs.get_cert(cert_ref)).encode()
            cn = _cn(x509.load_pem_x509_certificates(data)[0])
        except (OSError, ValueError, HttpError) as e:
            raise HttpError(f"the identity certificate {cert_ref} gives no registration id: {e}", status=500) from e
        if cn is None:
            raise HttpError(f"the identity certificate {cert_ref} has no common name to register with", status=500)
        return cn

    def close(self) -> None:
        for task in (self._retry_task, self._renewal_task, self._reconcile_task):
            if task is not None:
                task.cancel()
        with contextlib.suppress(RuntimeError):  # no loop running: nothing was opened on one
            loop = asyncio.get_running_loop()
            for release in self.on_close:
                task = loop.create_task(release())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self.cache.close()
        self.host_modules.close()


def _cn(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _retriable(error: HttpError) -> bool:
    transient = getattr(error, "transient", None)
    return bool(transient) if transient is not None else error.status in (429, 503, 504)


def _as_http_error(error: HttpError | OSError) -> HttpError:
    """A service this one depends on (the keys service's socket) did not answer: transient, like a hub outage."""
    return error if isinstance(error, HttpError) else Unreachable(f"a local service did not answer: {error}")


def _validate_module_id(module_id: str) -> None:
    # IoT Hub module ids: up to 128 characters of ASCII letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ '
    allowed = set("-:.+%_#*?!(),=@;$'")
    if not 1 <= len(module_id) <= 128 or not all(c.isascii() and (c.isalnum() or c in allowed) for c in module_id):
        raise BadRequest(f"invalid module id {module_id!r}: 1 to 128 ASCII letters, digits or -:.+%_#*?!(),=@;$'")

