"""aziot-identityd's contract against Edgeward's identity service in the real daemon, over its real socket, as root
and as host principals (other uids, via setpriv). Facts from `identity/aziot-identityd/src/lib.rs` (the
`SettingsAuthorizer`, `get_identity`, `get_trust_bundle`, `match_id_type!`), `src/http/*.rs` (status codes) and
`identity/aziot-identity-client-async/src/lib.rs` (what clients send: `type=aziot` on every module route, the module
name percent-encoded, `parse_expect_ok`, i.e. 200, and 204 for delete and reprovision); identities deserialize into
`aziot-identity-common`'s `Identity`, whose `AzureIoTSpec.gatewayHost` is a required string.

The security boundary tested here: a host principal whose idtype holds "module" or "local" may read the module
identity named exactly like itself and no other; anything that is not its own name, however it is spelled or
encoded, is a 401 as aziot answers."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.contract._aziot import Device, call, device
from tests.fixtures.peers import as_uid_async

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

__all__ = ["device"]

V = "api-version=2022-08-01"
AGENT_A, AGENT_B, LOCAL_A, LOCAL_B, DEVICE_AGENT, BOTH_A, DEV_MOD = 3101, 3102, 3103, 3104, 3105, 3106, 3107


def _aziot_spec_complete(body: dict, hub: str) -> dict:
    """The fields aziot-identity-common's AzureIoTSpec requires, present and typed."""
    assert body["type"] == "aziot", body
    spec = body["spec"]
    assert spec["hubName"] == hub and spec["gatewayHost"] == hub  # no parent: the gateway is the hub itself
    assert isinstance(spec["deviceId"], str)
    return dict(spec)


async def test_identityd_trust_bundle_without_a_configured_bundle_is_200_and_empty(device: Device) -> None:
    """aziot-identityd `get_trust_bundle`: 200 `{"certificate": ""}` (an empty `Pem`); every caller may ask."""
    assert await call(device.identityd, "GET", f"/trust-bundle?{V}") == (200, {"certificate": ""})
    assert await as_uid_async(AGENT_A, device.identityd, "GET", f"/trust-bundle?{V}") == (200, {"certificate": ""})


async def test_module_principal_reads_its_own_module_identity_by_name(device: Device) -> None:
    """aziot: `GetModule(m)` is allowed to a host principal when `m` is its name and its idtype holds module or
    local; the identity-client crate sends `GET /identities/modules/<name>?api-version=..&type=aziot`."""
    for version in ("2020-09-01", "2021-12-01", "2022-08-01"):
        status, body = await as_uid_async(AGENT_A, device.identityd, "GET",
                                          f"/identities/modules/agent-a?api-version={version}&type=aziot")
        assert status == 200, body
        spec = _aziot_spec_complete(body, device.hub.hostname)
        assert spec["moduleId"] == "agent-a"
        assert spec["genId"] == device.hub.modules_of(device.device_id)["agent-a"].generation_id
        assert spec["auth"]["type"] == "sas" and spec["auth"]["keyHandle"]
    # the same identity /identities/identity gives it
    status, mine = await as_uid_async(AGENT_A, device.identityd, "GET", f"/identities/identity?{V}")
    assert status == 200 and mine["spec"]["moduleId"] == "agent-a" and mine["spec"]["genId"] == spec["genId"]


@pytest.mark.parametrize("path", [
    "agent-b?type=aziot",            # another principal's
    "agent-b",                       # ... without a type (aziot authorizes before it looks at the type)
    "agent-b?type=local",
    "agent-b?type=aziot&type=aziot",
    "AGENT-A?type=aziot",            # case variations are other names to the hub
    "Agent-a?type=aziot",
    "agent-a%20?type=aziot",         # trailing space
    "%2561gent-a?type=aziot",        # double encoding: decoded once, it is "%61gent-a"
    "agent-b%2F..%2Fagent-a?type=aziot",
    "agent-a%00?type=aziot",
    "agent-a%0A?type=aziot",
    "agent-a;x?type=aziot",
    "device-agent?type=aziot",
    "local-a?type=local",            # a local principal's local identity
    "both-a?type=local",
    "both-a?type=aziot",
    "edgeAgent?type=aziot",          # a runtime module's
])
async def test_a_module_principal_never_reads_another_identity(device: Device, path: str) -> None:
    status, body = await as_uid_async(AGENT_A, device.identityd, "GET", f"/identities/modules/{path}&{V}"
                                      if "?" in path else f"/identities/modules/{path}?{V}")
    assert status == 401, body
    assert "spec" not in body


async def test_percent_encoded_own_name_is_still_the_own_name(device: Device) -> None:
    """The client crate percent-encodes names; the server decodes once (aziot: `percent_decode_str`)."""
    status, body = await as_uid_async(AGENT_A, device.identityd, "GET", f"/identities/modules/%61gent-a?{V}&type=aziot")
    assert status == 200 and body["spec"]["moduleId"] == "agent-a"


async def test_a_module_principal_gets_no_local_identity_of_its_name(device: Device) -> None:
    """aziot: the read is authorized (its own name), then `type=local` needs a principal with idtype local of that
    name: 400. A module principal must not get a client certificate under the local-identity domain."""
    status, body = await as_uid_async(AGENT_A, device.identityd, "GET", f"/identities/modules/agent-a?{V}&type=local")
    assert status == 400, body
    assert "spec" not in body


async def test_local_principal_gets_its_local_identity_by_name(device: Device) -> None:
    """aziot `get_identity` with `type=local`: `issue_local_identity` for the caller's own name, an Identity::Local
    `{moduleId, auth: {privateKey, certificate, expiration}}`, the cert for `<name>.<hostname>.<localid domain>`."""
    status, body = await as_uid_async(LOCAL_A, device.identityd, "GET", f"/identities/modules/local-a?{V}&type=local")
    assert status == 200, body
    assert body["type"] == "local" and body["spec"]["moduleId"] == "local-a"
    auth = body["spec"]["auth"]
    assert set(auth) == {"privateKey", "certificate", "expiration"}
    leaf = x509.load_pem_x509_certificates(auth["certificate"].encode())[0]
    assert leaf.subject.rfc4514_string() == "CN=local-a.contract.local.test"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    key = serialization.load_pem_private_key(auth["privateKey"].encode(), None)
    assert key.public_key() == leaf.public_key()
    # Edgeward also serves it on /identities/identity (aziot looks up a hub module there, which a local-only
    # principal does not have): kept, a caller that asks for "its identity" gets the one it has.
    status, same_kind = await as_uid_async(LOCAL_A, device.identityd, "GET", f"/identities/identity?{V}")
    assert status == 200 and same_kind["type"] == "local" and same_kind["spec"]["moduleId"] == "local-a"


@pytest.mark.parametrize("path", ["local-b?type=local", "LOCAL-A?type=local", "local-a%2F?type=local",
                                  "agent-a?type=aziot", "agent-a?type=local"])
async def test_a_local_principal_never_reads_another_identity(device: Device, path: str) -> None:
    status, body = await as_uid_async(LOCAL_A, device.identityd, "GET",
                                      f"/identities/modules/{path.replace('?', f'?{V}&')}")
    assert status == 401, body


async def test_a_local_principal_has_no_hub_identity_of_its_name(device: Device) -> None:
    """aziot would look the name up in the hub; there is none made for it: 404 (aziot's HubClient error code)."""
    status, body = await as_uid_async(LOCAL_A, device.identityd, "GET", f"/identities/modules/local-a?{V}&type=aziot")
    assert status == 404, body


async def test_a_module_and_local_principal_reads_both_of_its_own(device: Device) -> None:
    status, body = await as_uid_async(BOTH_A, device.identityd, "GET", f"/identities/modules/both-a?{V}&type=aziot")
    assert status == 200 and body["spec"]["moduleId"] == "both-a", body
    status, body = await as_uid_async(BOTH_A, device.identityd, "GET", f"/identities/modules/both-a?{V}&type=local")
    assert status == 200 and body["type"] == "local", body


async def test_a_device_principal_reads_no_module_identity_not_even_of_its_name(device: Device) -> None:
    status, body = await as_uid_async(DEVICE_AGENT, device.identityd, "GET",
                                      f"/identities/modules/device-agent?{V}&type=aziot")
    assert status == 401, body
    status, body = await as_uid_async(DEVICE_AGENT, device.identityd, "GET", f"/identities/identity?{V}")
    assert status == 200 and "moduleId" not in body["spec"], body
    _aziot_spec_complete(body, device.hub.hostname)


async def test_a_device_principal_gets_the_device_identity_from_post_identities_device(device: Device) -> None:
    """aziot's GetDevice is allowed to a host principal whose idtype holds "device" (the identity client's
    `get_device_identity`: POST `{"type": "aziot"}`, 200)."""
    status, body = await as_uid_async(DEVICE_AGENT, device.identityd, "POST", f"/identities/device?{V}",
                                      {"type": "aziot"})
    assert status == 200, body
    assert "moduleId" not in _aziot_spec_complete(body, device.hub.hostname)
    assert body["spec"]["auth"]["type"] == "sas" and body["spec"]["auth"]["keyHandle"]


async def test_caller_identity_prefers_the_device_identity_as_aziot_does(device: Device) -> None:
    """aziot `get_caller_identity` asks GetDevice first: a principal of idtype ["device", "module"] gets the device
    identity from /identities/identity, and its module identity by name."""
    status, body = await as_uid_async(DEV_MOD, device.identityd, "GET", f"/identities/identity?{V}")
    assert status == 200 and "moduleId" not in body["spec"], body
    status, body = await as_uid_async(DEV_MOD, device.identityd, "GET", f"/identities/modules/dev-mod?{V}&type=aziot")
    assert status == 200 and body["spec"]["moduleId"] == "dev-mod", body


async def test_provisioning_info_is_served_to_every_principal(device: Device) -> None:
    """aziot-identityd's `get_provisioning_info` checks no caller at all; Edgeward serves every principal."""
    for uid in (AGENT_A, LOCAL_A, DEVICE_AGENT):
        status, body = await as_uid_async(uid, device.identityd, "GET", f"/identities/provisioning?{V}")
        assert (status, body) == (200, {"source": "manual", "auth": "sas"}), uid


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/identities/modules/agent-a?type=aziot", {"type": "aziot", "moduleId": "agent-a"}),
    ("DELETE", "/identities/modules/agent-a?type=aziot", None),
    ("GET", "/identities/modules?type=aziot", None),
    ("POST", "/identities/modules", {"type": "aziot", "moduleId": "agent-a"}),
    ("POST", "/identities/modules", {"type": "local", "moduleId": "agent-a"}),
    ("POST", "/identities/device", {"type": "aziot"}),
    ("POST", "/identities/device/reprovision", {"type": "aziot"}),
])
async def test_host_principals_may_not_write_or_list(device: Device, method: str, path: str,
                                                     body: dict | None) -> None:
    """aziot: Create/Update/DeleteModule, GetAllHubModules and ReprovisionDevice are refused to host processes;
    GetDevice to a principal whose idtype lacks "device"."""
    sep = "&" if "?" in path else "?"
    for uid in (AGENT_A, LOCAL_A):
        status, answer = await as_uid_async(uid, device.identityd, method, f"{path}{sep}{V}", body)
        assert status == 401, (uid, answer)


async def test_module_routes_need_a_type_as_aziot_answers(device: Device) -> None:
    """`match_id_type!`: no `type` is 400 "missing parameter", an unknown one 400 "invalid type"."""
    for method, path in (("GET", "/identities/modules/agent-a"), ("GET", "/identities/modules"),
                         ("DELETE", "/identities/modules/no-such-module")):
        status, body = await call(device.identityd, method, f"{path}?{V}")
        assert status == 400 and "type" in body["message"], (path, body)
        status, body = await call(device.identityd, method, f"{path}?{V}&type=bogus")
        assert status == 400 and "type" in body["message"], (path, body)
    status, body = await call(device.identityd, "POST", f"/identities/modules?{V}", {"type": "bogus", "moduleId": "x"})
    assert status == 400 and "invalid type: bogus" in body["message"], body


async def test_daemon_routes_answer_aziots_codes_and_shapes(device: Device) -> None:
    """What aziot-identity-client-async calls, with its bodies, and the codes it accepts."""
    hub = device.hub.hostname
    status, body = await call(device.identityd, "POST", f"/identities/device?{V}", {"type": "aziot"})
    assert status == 200, body
    spec = _aziot_spec_complete(body, hub)
    assert "moduleId" not in spec and spec["auth"]["type"] == "sas"
    status, body = await call(device.identityd, "POST", f"/identities/modules?{V}",
                              {"type": "aziot", "moduleId": "contract-mod", "opts": None})
    assert status == 200, body
    created = _aziot_spec_complete(body, hub)
    assert created["moduleId"] == "contract-mod" and created["genId"] and created["auth"]["keyHandle"]
    status, body = await call(device.identityd, "PUT", f"/identities/modules/contract-mod?{V}&type=aziot",
                              {"type": "aziot", "moduleId": "contract-mod"})
    assert status == 200 and body["spec"]["genId"] == created["genId"], body
    status, body = await call(device.identityd, "PUT", f"/identities/modules/contract-mod?{V}&type=aziot", {})
    assert status == 200 and body["spec"]["moduleId"] == "contract-mod", body  # the docs' `{}` body
    status, body = await call(device.identityd, "PUT", f"/identities/modules/never-made?{V}&type=aziot",
                              {"type": "aziot", "moduleId": "never-made"})
    assert status == 404, body  # aziot updates only what the hub has; it never creates on PUT
    assert "never-made" not in device.hub.modules_of(device.device_id)
    status, body = await call(device.identityd, "DELETE", f"/identities/modules/never-made?{V}&type=aziot")
    assert status == 404, body  # aziot: the hub's refusal, a HubClient error, is a 404
    status, body = await call(device.identityd, "GET", f"/identities/modules?{V}&type=aziot")
    assert status == 200 and set(body) == {"identities"}
    listed = {i["spec"]["moduleId"]: i for i in body["identities"]}
    assert {"contract-mod", "agent-a", "agent-b"} <= set(listed)
    _aziot_spec_complete(listed["contract-mod"], hub)
    assert await call(device.identityd, "DELETE", f"/identities/modules/contract-mod?{V}&type=aziot") == (204, None)
    status, body = await call(device.identityd, "GET", f"/identities/modules/contract-mod?{V}&type=aziot")
    assert status == 404, body
    status, body = await call(device.identityd, "GET", f"/identities/provisioning?{V}")
    assert (status, body) == (200, {"source": "manual", "auth": "sas"})
    status, body = await call(device.identityd, "POST", f"/identities/device?{V}")
    assert status == 400 and "missing request body" in body["message"], body
    # reprovision: 204; aziot ignores the body, so none at all is fine too
    assert await call(device.identityd, "POST", f"/identities/device/reprovision?{V}", {"type": "aziot"}) == (204, None)
    assert await call(device.identityd, "POST", f"/identities/device/reprovision?{V}") == (204, None)


async def test_daemon_local_identities_follow_aziots_principal_rules(device: Device) -> None:
    """aziot: `GET ?type=local` only for names of local principals (else 400); `POST type=local` only for names
    that are NOT (400 "already exists"), with `localIdOpts`."""
    status, body = await call(device.identityd, "GET", f"/identities/modules/stranger?{V}&type=local")
    assert status == 400 and "stranger" in body["message"], body
    status, body = await call(device.identityd, "POST", f"/identities/modules?{V}",
                              {"type": "local", "moduleId": "local-a"})
    assert status == 400 and "already exists" in body["message"], body
    status, body = await call(device.identityd, "POST", f"/identities/modules?{V}", {
        "type": "local", "moduleId": "contract-local", "localIdOpts": {"type": "x509", "attributes": "server"}})
    assert status == 200 and body["type"] == "local", body
    leaf = x509.load_pem_x509_certificates(body["spec"]["auth"]["certificate"].encode())[0]
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    status, body = await call(device.identityd, "GET", f"/identities/modules/local-a?{V}&type=local")
    assert status == 200 and body["spec"]["moduleId"] == "local-a", body
