"""Builds the identity service over any keys and certs API implementations."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ..certs.api import CertsApi
from ..http.errors import HttpError
from ..keys.api import KeysApi
from .hub import HubClient
from .model import HubModules
from .service import HubFactory, IdentityService, Signer
from .settings import IdentitySettings
from .state import DeviceIdentity

__all__ = ["build_identity_service", "hub_factory_for"]


def hub_factory_for(settings: IdentitySettings) -> HubFactory:
    """The production hub client, trusting the configured cloud trust bundle (else the system's CAs)."""
    trusted = None
    if settings.cloud_trust_bundle is not None:
        bundle = Path(settings.cloud_trust_bundle.removeprefix("file://"))
        trusted = x509.load_pem_x509_certificates(bundle.read_bytes())

    def factory(device: DeviceIdentity, signer: Signer | None) -> HubModules:
        if signer is None:
            raise HttpError("module identities for X.509-authenticated devices are not supported yet", status=501)
        return HubClient(device.hub, device.device_id, signer, trusted, settings.cloud_timeout)

    return factory


def build_identity_service(settings: IdentitySettings, keys: KeysApi, certs: CertsApi) -> IdentityService:
    return IdentityService(settings, keys, certs, hub_factory_for(settings))
