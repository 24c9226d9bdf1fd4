"""Request and response bodies of the identity API (aziot-identityd's field names)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .model import AziotIdentity, Identity, LocalIdentity, ProvisioningInfo

__all__ = [
    "API_VERSIONS",
    "CreateModuleRequest",
    "IdTypeRequest",
    "LocalIdOpts",
    "identity_body",
    "provisioning_body",
]

API_VERSIONS = ("2020-09-01", "2021-12-01", "2022-08-01")


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class IdTypeRequest(_Body):
    type: str = Field(max_length=64)  # aziot-identityd reads it and uses none of it


class LocalIdOpts(_Body):
    type: Literal["x509"] = "x509"
    attributes: Literal["client", "server"] = "client"


class CreateModuleRequest(_Body):
    type: str = Field(max_length=64)  # checked by the route: an unknown type is aziot's 400, not a 422
    module_id: str = Field(alias="moduleId", max_length=128)
    local_id_opts: LocalIdOpts | None = Field(default=None, alias="localIdOpts")


def identity_body(identity: Identity) -> dict[str, Any]:
    if isinstance(identity, LocalIdentity):
        return {"type": "local", "spec": {"moduleId": identity.module_id, "auth": {
            "privateKey": identity.private_key_pem, "certificate": identity.certificate_pem,
            "expiration": identity.expiration}}}
    assert isinstance(identity, AziotIdentity)
    auth: dict[str, Any] = {"type": identity.auth_type}
    if identity.key_handle is not None:
        auth["keyHandle"] = identity.key_handle
    if identity.cert_id is not None:
        auth["certId"] = identity.cert_id
    # aziot-identity-common's AzureIoTSpec requires gatewayHost; without a parent device it is the hub itself.
    spec: dict[str, Any] = {"hubName": identity.hub, "gatewayHost": identity.gateway_host or identity.hub,
                            "deviceId": identity.device_id, "auth": auth}
    if identity.module_id is not None:
        spec["moduleId"] = identity.module_id
        spec["genId"] = identity.gen_id
    return {"type": "aziot", "spec": spec}


def provisioning_body(info: ProvisioningInfo) -> dict[str, Any]:
    """aziot-identity-common-http's get_provisioning_info::Response: tagged by ``source``; a DPS answer always
    carries ``payload`` (null when none is configured)."""
    if info.source == "none":
        return {"source": "none"}
    if info.source == "manual":
        return {"source": "manual", "auth": info.auth}
    return {"source": "dps", "auth": info.auth, "endpoint": info.endpoint, "scope_id": info.scope_id,
            "registration_id": info.registration_id, "payload": info.payload}
