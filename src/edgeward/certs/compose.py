"""Builds the certificates service and its renewal engine from settings, over any implementation of the keys API."""

from __future__ import annotations

import importlib

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


def load_est_client_if_used(settings: CertsSettings) -> None:
    """A device that enrolls over EST loads the EST client with the service, not at its first enrollment or renewal
    (days later, maybe): what runs is then what the start-up self-measurement read (attest/selfmeasure.py), not a file
    changed since. Only a device with no EST server configured is spared the client's memory."""
    est, issuance = settings.est, settings.issuance.values()
    if not (est.default_url or est.urls or any(o.method == "est" for o in issuance)):
        return
    importlib.import_module(f"{__package__}.est.client")
    # TLS with a key the keys service holds
    if any(a.identity_cert or a.bootstrap_identity_cert for a in settings.est_auths):
        importlib.import_module(f"{__package__}.est.keys_tls")


def build_cert_service(settings: CertsSettings, keys: KeysApi,
                       est_factory: EstFactory = default_est_factory) -> tuple[CertService, RenewalEngine]:
    load_est_client_if_used(settings)
    service = CertService(settings, keys, est_factory)
    return service, RenewalEngine(service, managed_certs(settings))
