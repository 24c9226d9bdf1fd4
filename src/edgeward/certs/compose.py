"""Builds the certificates service and its renewal engine from settings, over any implementation of the keys API."""

from __future__ import annotations

from ..keys.api import KeysApi
from .renewal import ManagedCert, RenewalEngine
from .service import CertService, EstFactory, default_est_factory
from .settings import CertsSettings

__all__ = ["build_cert_service", "managed_certs"]


def managed_certs(settings: CertsSettings) -> list[ManagedCert]:
    return [
        ManagedCert(cert_id, opts.key_id or cert_id, opts.auto_renew, opts.common_name, opts.subject)
        for cert_id, opts in settings.issuance.items()
        if opts.auto_renew is not None
    ]


def build_cert_service(settings: CertsSettings, keys: KeysApi,
                       est_factory: EstFactory = default_est_factory) -> tuple[CertService, RenewalEngine]:
    service = CertService(settings, keys, est_factory)
    return service, RenewalEngine(service, managed_certs(settings))
