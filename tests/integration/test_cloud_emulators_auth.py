"""The cloud emulators refuse what IoT Hub and DPS refuse, over real TLS: tokens that claim more than their key
grants (a device key signing for the whole hub, for another device, under a policy name, for device CRUD), RFC 7232
ETag mismatches, api-versions DPS does not serve, and unknown routes answered in IoT Hub's JSON error shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from edgeward.identity.sas import make_token
from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator

pytestmark = pytest.mark.asyncio(loop_scope="session")

API = "api-version=2021-04-12"


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[tuple[HubEmulator, DpsEmulator]]:
    hub = HubEmulator()
    dps = DpsEmulator(hub)
    async with hub:
        yield hub, dps


def signer(key: bytes) -> Any:
    async def sign(data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()
    return sign


async def call(hub: HubEmulator, method: str, path: str, token: str | None = None,
               headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    ctx = ssl.create_default_context(cadata=hub.ca_pem.decode())
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = token
    async with aiohttp.ClientSession() as s, s.request(method, f"https://{hub.hostname}{path}", ssl=ctx,
                                                       headers=all_headers, json=body) as r:
        doc = await r.json(content_type=None) if r.status != 204 else None
        return r.status, doc, r.headers


async def test_a_device_key_authorises_only_its_own_scope(cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    hub, _ = cloud
    key = hub.add_device("dev-1")
    hub.add_device("dev-2")
    own = await make_token(f"{hub.hostname}/devices/dev-1", signer(key))
    status, _, _ = await call(hub, "GET", f"/devices/dev-1/modules?{API}", own)
    assert status == 200
    # the whole hub, signed with the device key and no policy named: which device's key? None: refused
    hub_wide = await make_token(hub.hostname, signer(key))
    for path in (f"/devices/dev-1/modules?{API}", f"/devices/dev-2/modules?{API}", f"/devices?{API}"):
        status, doc, headers = await call(hub, "GET", path, hub_wide)
        assert status == 401, path
        assert doc["Message"].startswith("ErrorCode:IotHubUnauthorizedAccess;")
        assert headers["IotHub-ErrorCode"] == "IotHubUnauthorizedAccess"
    # another device's scope, and the device registry itself (device CRUD needs a policy)
    assert (await call(hub, "GET", f"/devices/dev-2/modules?{API}", own))[0] == 401
    assert (await call(hub, "GET", f"/devices/dev-1?{API}", own))[0] == 401
    assert (await call(hub, "DELETE", f"/devices/dev-1?{API}", own, {"If-Match": "*"}))[0] == 401
    assert "dev-1" in hub.devices
    # a disabled device's credentials stop working
    owner = await make_token(hub.hostname, signer(hub.policies["iothubowner"].primary_key)) + "&skn=iothubowner"
    status, device, _ = await call(hub, "GET", f"/devices/dev-1?{API}", owner)
    status, _, _ = await call(hub, "PUT", f"/devices/dev-1?{API}", owner, {"If-Match": f'"{device["etag"]}"'},
                              {**device, "status": "disabled"})
    assert status == 200
    assert (await call(hub, "GET", f"/devices/dev-1/modules?{API}", own))[0] == 401


async def test_skn_names_the_policy_whose_key_must_have_signed(cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    hub, _ = cloud
    key = hub.add_device("dev-1")
    device_signed = await make_token(hub.hostname, signer(key)) + "&skn=iothubowner"
    assert (await call(hub, "GET", f"/devices?{API}", device_signed))[0] == 401
    # a policy key with the device's own sr but without skn is not a device token either
    owner = hub.policies["iothubowner"].primary_key
    unnamed = await make_token(f"{hub.hostname}/devices/dev-1", signer(owner))
    assert (await call(hub, "GET", f"/devices/dev-1/modules?{API}", unnamed))[0] == 401
    named = await make_token(hub.hostname, signer(owner)) + "&skn=iothubowner"
    assert (await call(hub, "GET", f"/devices/dev-1/modules?{API}", named))[0] == 200


async def test_a_policy_token_scoped_to_one_device_covers_it_by_path_segment(
    cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, _ = cloud
    hub.add_device("dev-1")
    hub.add_device("dev-10")
    read = hub.policies["registryRead"].primary_key
    scoped = await make_token(f"{hub.hostname}/devices/dev-1", signer(read)) + "&skn=registryRead"
    assert (await call(hub, "GET", f"/devices/dev-1?{API}", scoped))[0] == 200
    assert (await call(hub, "GET", f"/devices/dev-1/modules?{API}", scoped))[0] == 200
    assert (await call(hub, "GET", f"/devices/dev-10?{API}", scoped))[0] == 401
    assert (await call(hub, "GET", f"/devices?{API}", scoped))[0] == 401
    # upper-case sr, URL-encoded (what aziot and the SDKs send): the same scope
    upper = await make_token(f"{hub.hostname.upper()}/DEVICES/DEV-1", signer(read)) + "&skn=registryRead"
    assert (await call(hub, "GET", f"/devices/dev-1?{API}", upper))[0] == 200


async def test_a_module_credential_cannot_manage_identities(cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    hub, _ = cloud
    hub.add_device("dev-1")
    owner = await make_token(hub.hostname, signer(hub.policies["iothubowner"].primary_key)) + "&skn=iothubowner"
    status, module, _ = await call(hub, "PUT", f"/devices/dev-1/modules/m?{API}", owner,
                                   body={"moduleId": "m", "deviceId": "dev-1"})
    assert status == 200
    module_key = base64.b64decode(module["authentication"]["symmetricKey"]["primaryKey"])
    as_module = await make_token(f"{hub.hostname}/devices/dev-1/modules/m", signer(module_key))
    assert (await call(hub, "DELETE", f"/devices/dev-1/modules/m?{API}", as_module))[0] == 401
    assert "m" in hub.modules_of("dev-1")


async def test_if_match_follows_rfc_7232(cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    hub, _ = cloud
    key = hub.add_device("dev-1")
    token = await make_token(f"{hub.hostname}/devices/dev-1", signer(key))
    path = f"/devices/dev-1/modules/m?{API}"
    body = {"moduleId": "m", "deviceId": "dev-1"}
    status, module, _ = await call(hub, "PUT", path, token, body=body)
    assert status == 200
    etag = module["etag"]
    assert (await call(hub, "PUT", path, token, {"If-Match": etag}, body))[0] == 412  # unquoted: not an entity tag
    assert (await call(hub, "DELETE", path, token, {"If-Match": '"stale"'}))[0] == 412
    status, module, _ = await call(hub, "PUT", path, token, {"If-Match": f'W/"{etag}"'}, body)
    assert status == 200 and module["etag"] != etag
    assert (await call(hub, "PUT", path, token, {"If-Match": "*"}, body))[0] == 200  # aziot's unquoted wildcard
    assert (await call(hub, "DELETE", path, token, {"If-Match": f'"{etag}"'}))[0] == 412  # the old one
    assert (await call(hub, "DELETE", path, token, {"If-Match": '"*"'}))[0] == 204
    assert (await call(hub, "DELETE", path, token))[0] == 404


async def test_unknown_routes_answer_in_iot_hubs_json_error_shape(cloud: tuple[HubEmulator, DpsEmulator]) -> None:
    hub, _ = cloud
    status, doc, headers = await call(hub, "GET", f"/no/such/route?{API}")
    assert status == 404 and doc["Message"].startswith("ErrorCode:") and "ExceptionMessage" in doc
    assert headers["Content-Type"].startswith("application/json")
    status, doc, _ = await call(hub, "POST", f"/devices/dev-1/modules?{API}")
    assert status == 405 and doc["Message"].startswith("ErrorCode:MethodNotAllowed;")


async def test_dps_refuses_api_versions_it_does_not_serve_and_tokens_not_for_the_registration(
    cloud: tuple[HubEmulator, DpsEmulator]
) -> None:
    hub, dps = cloud
    key = dps.add_individual_enrollment("reg-1")
    path = f"/{dps.scope_id}/registrations/reg-1/register"
    body = {"registrationId": "reg-1"}
    good = await make_token(f"{dps.scope_id}/registrations/reg-1", signer(key)) + "&skn=registration"
    status, doc, _ = await call(hub, "PUT", f"{path}?api-version=2018-01-01", good, body=body)
    assert status == 400 and doc["errorCode"] == 400004 and "Unsupported API version 2018-01-01" in doc["message"]
    no_skn = await make_token(f"{dps.scope_id}/registrations/reg-1", signer(key))
    other = await make_token(f"{dps.scope_id}/registrations/reg-1/x", signer(key)) + "&skn=registration"
    for token in (no_skn, other):
        assert (await call(hub, "PUT", f"{path}?api-version=2019-03-31", token, body=body))[0] == 401
    for version in DpsEmulator.API_VERSIONS:
        status, doc, _ = await call(hub, "PUT", f"{path}?api-version={version}", good, body=body)
        assert status == 202 and doc["status"] == "assigning", version
