"""Builds the identity service over any keys and certs API implementations."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ..certs.api import CertsApi
from ..http.errors import HttpError
from ..keys.api import KeysApi
from .dps import DpsClient
from .hub import HubClient
from .model import HubModules
from .service import DEVICE_KEY_ID, DpsRegistrar, HubFactory, IdentityService, Signer
from .settings import DpsProvisioning, IdentitySettings
from .state import DeviceIdentity

__all__ = ["build_identity_service", "dps_registrar_for", "hub_factory_for"]


def hub_factory_for(settings: IdentitySettings) -> HubFactory:
    """The production hub client, trusting the configured cloud trust bundle (else the system's CAs)."""
    trusted = _trusted(settings)

    def factory(device: DeviceIdentity, signer: Signer | None) -> HubModules:
        if signer is None:
            raise HttpError("module identities for X.509-authenticated devices are not supported yet", status=501)
        return HubClient(device.hub, device.device_id, signer, trusted, settings.cloud_timeout)

    return factory


def _trusted(settings: IdentitySettings) -> list[x509.Certificate] | None:
    if settings.cloud_trust_bundle is None:
        return None
    return x509.load_pem_x509_certificates(Path(settings.cloud_trust_bundle.removeprefix("file://")).read_bytes())


def dps_registrar_for(settings: IdentitySettings) -> DpsRegistrar:
    trusted = _trusted(settings)

    async def register(prov: DpsProvisioning, signer: Signer | None) -> DeviceIdentity:
        if prov.auth != "symmetric_key" or signer is None or prov.registration_id is None:
            raise HttpError(f"DPS {prov.auth} attestation is not supported yet", status=501)
        client = DpsClient(prov.endpoint, prov.scope_id, trusted, settings.cloud_timeout)
        assignment = await client.register(prov.registration_id, signer, prov.payload)
        return DeviceIdentity(assignment.assigned_hub, assignment.device_id, "sas", key_id=DEVICE_KEY_ID,
                              derivation=prov.registration_id if prov.group_enrollment else None, source="dps")

    return register


def build_identity_service(settings: IdentitySettings, keys: KeysApi, certs: CertsApi) -> IdentityService:
    return IdentityService(settings, keys, certs, hub_factory_for(settings),
                           dps_register=dps_registrar_for(settings))
