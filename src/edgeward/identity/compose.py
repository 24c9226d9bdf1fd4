"""Builds the identity service over any keys, certs (and, for TPM attestation, TPM) API implementations."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..certs.api import CertsApi
from ..certs.est.tls_identity import KeysIdentity
from ..http.errors import HttpError
from ..keys.api import KeysApi
from .dps_auth import DpsAuth, SymmetricKeyAuth, TpmAuth, X509Auth
from .model import HubModules
from .service import DEVICE_KEY_ID, DpsRegistrar, HubAuth, HubFactory, IdentityService
from .settings import DpsProvisioning, IdentitySettings
from .state import DeviceIdentity

if TYPE_CHECKING:  # the TPM's modules load only on a device that has one
    from ..tpm.api import TpmApi
    from ..tpm.client import TpmClient

__all__ = ["build_identity_service", "dps_registrar_for", "hub_factory_for"]


def hub_factory_for(settings: IdentitySettings) -> HubFactory:
    """The production hub client, trusting the configured cloud trust bundle (else the system's CAs): SAS tokens
    over server-authenticated TLS, or mutual TLS for an X.509 device. Under a parent device (nested edge) the
    requests go to the parent, whose certificate is checked against ``trust_bundle_cert``'s CAs."""
    gateway = settings.gateway_hostname
    trusted = _trusted(settings)
    source: str | None = None
    if gateway is not None and settings.parent_trust_bundle is not None:
        trusted = _load(settings.parent_trust_bundle) + (trusted or [])
        source = f"trust_bundle_cert ({settings.parent_trust_bundle})"
    peer = f"parent device (parent_hostname {gateway})" if gateway is not None else "IoT Hub"
    timeout, retries = settings.cloud_timeout, settings.cloud_retries

    def factory(device: DeviceIdentity, auth: HubAuth) -> HubModules:
        # the hub client and its transports load when a device first talks to its hub (never, offline)
        from .cloud import HttpsTransport, X509Transport  # noqa: PLC0415
        from .hub import HubClient  # noqa: PLC0415

        via = device.gateway_host or gateway
        if isinstance(auth, KeysIdentity):
            return HubClient(device.hub, device.device_id, X509Transport(auth, trusted, timeout, peer, retries),
                             None, gateway=via)
        return HubClient(device.hub, device.device_id,
                         HttpsTransport(trusted, timeout, peer, retries, trust_source=source), auth, gateway=via)

    return factory


def _load(uri: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(uri.removeprefix("file://")).read_bytes())


def _trusted(settings: IdentitySettings) -> list[x509.Certificate] | None:
    if settings.cloud_trust_bundle is None:
        return None
    return _load(settings.cloud_trust_bundle)


def dps_registrar_for(settings: IdentitySettings) -> DpsRegistrar:
    trusted = _trusted(settings)

    async def register(prov: DpsProvisioning, auth: DpsAuth) -> DeviceIdentity:
        from .dps import DpsClient  # noqa: PLC0415 - the DPS client loads when a device first registers
        from .hub import HubError  # noqa: PLC0415

        if settings.gateway_hostname is not None:
            # as aziot-identityd ("DPS provisioning is not supported in nested mode"): not worth retrying
            raise HubError(f"DPS provisioning is not supported under a parent device (parent_hostname "
                           f"{settings.gateway_hostname}); provision this device manually", status=400,
                           cloud_status=0)
        registration_id = prov.registration_id
        if registration_id is None and isinstance(auth, X509Auth):
            names = auth.identity.cert_chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            registration_id = str(names[0].value) if names else None
        if registration_id is None:
            raise HttpError("no DPS registration id: set provisioning.attestation.registration_id", status=500)
        client = DpsClient(prov.endpoint, prov.scope_id, trusted, settings.cloud_timeout,
                           retries=settings.cloud_retries)
        assignment = await client.register(registration_id, auth, prov.payload)
        hub, device_id = assignment.assigned_hub, assignment.device_id
        if isinstance(auth, SymmetricKeyAuth):
            key_id = prov.symmetric_key.key_id if prov.symmetric_key and prov.symmetric_key.key_id else DEVICE_KEY_ID
            return DeviceIdentity(hub, device_id, "sas", key_id=key_id,
                                  derivation=registration_id if prov.group_enrollment else None, source="dps")
        if isinstance(auth, TpmAuth):
            return DeviceIdentity(hub, device_id, "tpm", source="dps")
        return DeviceIdentity(hub, device_id, "x509", cert_id=prov.identity_cert, pk_id=prov.identity_pk,
                              source="dps")

    return register


def load_cloud_clients_if_used(settings: IdentitySettings) -> None:
    """A device with a cloud identity loads the hub client, its transports (and the DPS client, for DPS) with the
    service, not at first use: what runs is then what the start-up self-measurement read (attest/selfmeasure.py).
    Only a device with no [provisioning] is spared their memory."""
    prov = settings.provisioning
    if prov is None:
        return
    for module in ("cloud", "hub", *(["dps"] if isinstance(prov, DpsProvisioning) else [])):
        importlib.import_module(f"{__package__}.{module}")
    if prov.auth == "x509":  # mutual TLS with a key the keys service holds
        importlib.import_module("..certs.est.keys_tls", __package__)


def build_identity_service(settings: IdentitySettings, keys: KeysApi, certs: CertsApi,
                           tpm: TpmApi | None = None) -> IdentityService:
    """``tpm``: the TPM service when it runs in this process; otherwise a DPS TPM device reaches it over its socket."""
    load_cloud_clients_if_used(settings)
    owned: TpmClient | None = None
    prov = settings.provisioning
    if tpm is None and isinstance(prov, DpsProvisioning) and prov.auth == "tpm" and settings.tpmd_socket is not None:
        from ..tpm.client import TpmClient  # noqa: PLC0415 -- only a DPS TPM device calls tpmd

        tpm = owned = TpmClient(settings.tpmd_socket)
    service = IdentityService(settings, keys, certs, hub_factory_for(settings),
                              dps_register=dps_registrar_for(settings), tpm=tpm)
    if owned is not None:
        service.on_close.append(owned.close)
    return service
