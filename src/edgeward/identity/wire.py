"""Request and response bodies of the identity API (aziot-identityd's field names).

Request bodies are checked by hand (:mod:`edgeward.http.wirefields`) with the outcomes and 422 messages of the
pydantic models they replaced (``tests/unit/test_identity_wire_fields.py`` compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from ..http.wirefields import BodyCheck
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

MAX_TYPE_CHARS = 64
MAX_MODULE_ID_CHARS = 128

# Fields are looked up under their wire name first, then their Python name; unknown fields are ignored.


@dataclass(frozen=True, slots=True)
class IdTypeRequest:
    type: str  # aziot-identityd reads it and uses none of it

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        kind = c.text("type", max_length=MAX_TYPE_CHARS)
        c.done()
        return cls(kind)


@dataclass(frozen=True, slots=True)
class LocalIdOpts:
    type: str = "x509"  # the only one aziot knows
    attributes: str = "client"  # or "server"

    @classmethod
    def check(cls, c: BodyCheck) -> Self:
        return cls(c.choice("type", choices=("x509",), default="x509"),
                   c.choice("attributes", choices=("client", "server"), default="client"))


@dataclass(frozen=True, slots=True)
class CreateModuleRequest:
    type: str  # checked by the route: an unknown type is aziot's 400, not a 422
    module_id: str
    local_id_opts: LocalIdOpts | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        c = BodyCheck(data)
        kind = c.text("type", max_length=MAX_TYPE_CHARS)
        module_id = c.text("moduleId", "module_id", max_length=MAX_MODULE_ID_CHARS)
        opts_body = c.nested("localIdOpts", "local_id_opts", model="LocalIdOpts")
        opts = LocalIdOpts.check(opts_body) if opts_body is not None else None
        c.done()
        return cls(kind, module_id, opts)


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
