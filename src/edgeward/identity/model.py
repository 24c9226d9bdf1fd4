"""Identities as the identity service hands them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["AziotIdentity", "HubModules", "Identity", "LocalIdentity", "ModuleInfo", "ProvisioningInfo"]


@dataclass(frozen=True)
class AziotIdentity:
    hub: str
    device_id: str
    auth_type: Literal["sas", "x509", "tpm"]
    key_handle: str | None  # None for a TPM device: its key never leaves the TPM (aziot gives no handle either)
    cert_id: str | None = None
    gateway_host: str | None = None
    module_id: str | None = None
    gen_id: str | None = None
    managed_by: str | None = None  # a module's managedBy in the hub (host principals': edgeward)


@dataclass(frozen=True)
class LocalIdentity:
    module_id: str
    private_key_pem: str
    certificate_pem: str
    expiration: str


Identity = AziotIdentity | LocalIdentity


@dataclass(frozen=True)
class ProvisioningInfo:
    source: Literal["manual", "dps", "none"]
    auth: str | None = None
    endpoint: str | None = None
    scope_id: str | None = None
    registration_id: str | None = None
    payload: Any = None  # DPS only: the custom payload sent with the registration (JSON), else null


@dataclass(frozen=True)
class ModuleInfo:
    """A module identity as the hub's registry reports it."""

    module_id: str
    generation_id: str
    managed_by: str | None = None


class HubModules(Protocol):
    """The part of the IoT Hub registry a device uses for its own modules (the cloud port of this service)."""

    async def create_module(self, module_id: str, managed_by: str | None = None) -> ModuleInfo: ...

    async def get_module(self, module_id: str) -> ModuleInfo | None: ...

    async def list_modules(self) -> list[ModuleInfo]: ...

    async def update_module(self, module_id: str, primary_key: bytes, secondary_key: bytes) -> ModuleInfo: ...

    async def delete_module(self, module_id: str) -> None: ...
