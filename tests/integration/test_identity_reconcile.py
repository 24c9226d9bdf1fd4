"""A host agent removed from the configuration loses its cloud identity at the next start: the identity service
deletes the hub module identity it created for that `[[principal]]` (and only that one: never the edge runtime's
modules, never identities someone else created), drops its local copy, and deletes the principal's key in the keys
service, so the key handle the agent was given stops signing (401 from the keys service's socket). A hub outage does
not lose that intent: it is retried later in the same run and at the next start, and never holds up the start.

Every check goes through the real sockets (identity and keys, as the agents' uids) and the hub emulator's REST API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from edgeward.identity.compose import hub_factory_for
from edgeward.identity.hub import HUB_API_VERSION, HubClient
from edgeward.identity.model import HubModules
from edgeward.identity.sas import device_audience, make_token, parse_token, verify_token
from edgeward.identity.service import HubAuth
from edgeward.identity.settings import parse_identity_settings
from edgeward.identity.state import DeviceIdentity
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.identity import IdentityEnv, serve_identity
from tests.fixtures.peers import as_uid_async as as_uid

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEVICE = "edge-rec"
Q = "?api-version=2021-12-01"
AGENT, OTHER = ("host-agent", 3101), ("other-agent", 3102)


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[HubEmulator]:
    async with HubEmulator() as emulator:
        yield emulator


@dataclass
class Device:
    """The device's side of the hub, for the test to look at the registry as the cloud sees it."""

    hub: HubEmulator
    key: bytes
    base: Path

    def doc(self, *principals: tuple[str, int]) -> dict[str, Any]:
        ca = self.base / "hub-ca.pem"
        ca.write_bytes(self.hub.ca_pem)
        cs = f"HostName={self.hub.hostname};DeviceId={DEVICE};SharedAccessKey={base64.b64encode(self.key).decode()}"
        return {
            "hostname": DEVICE,
            "provisioning": {"source": "manual", "connection_string": cs},
            "principal": [{"uid": uid, "name": name, "idtype": ["module"]} for name, uid in principals],
            "edgeward": {"identity": {"cloud_trust_bundle": f"file://{ca}"}},
        }

    async def registry(self, method: str, module_id: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The hub's registry REST API with the device's own SAS token, over TLS."""

        async def sign(data: bytes) -> bytes:
            return hmac.new(self.key, data, hashlib.sha256).digest()

        headers = {"Authorization": await make_token(device_audience(self.hub.hostname, DEVICE), sign, 60)}
        if method == "DELETE":
            headers["If-Match"] = "*"
        url = f"https://{self.hub.hostname}/devices/{DEVICE}/modules/{module_id}?api-version={HUB_API_VERSION}"
        tls = ssl.create_default_context(cadata=self.hub.ca_pem.decode())
        async with aiohttp.ClientSession() as s, s.request(method, url, json=body, headers=headers, ssl=tls) as r:
            return r.status, await r.json() if r.content_length else None


def serve(request: pytest.FixtureRequest, dev: Device, *principals: tuple[str, int],
          hub_factory: Callable[[DeviceIdentity, HubAuth], HubModules] | None = None,
          ) -> AbstractAsyncContextManager[IdentityEnv]:
    """One start of the identity service (with its keys and certs services) on state kept under ``dev.base``."""
    doc = dev.doc(*principals)
    settings = parse_identity_settings(doc, dev.base / "state", dev.base / "run")
    return serve_identity(request, dev.base, doc, hub_factory or hub_factory_for(settings))


async def identity_as(env: IdentityEnv, uid: int) -> tuple[int, dict[str, Any]]:
    return await as_uid(uid, env.socket, "GET", "/identities/identity" + Q)


async def sign_as(env: IdentityEnv, uid: int, handle: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """The agent signing with its key handle on the keys service's socket, as aziot's clients do."""
    return await as_uid(uid, env.certs_env.keys_env.socket, "POST", "/sign?api-version=2020-09-01", {
        "keyHandle": handle, "algorithm": "HMAC-SHA256",
        "parameters": {"message": base64.b64encode(data).decode()}})


async def hub_accepts_token_of(env: IdentityEnv, dev: Device, uid: int, module_id: str, handle: str) -> bool:
    """Sign a module SAS token with ``handle`` through the keys socket; the hub would accept it iff it verifies
    against the module's key in the registry."""
    audience = f"{device_audience(dev.hub.hostname, DEVICE)}/modules/{module_id}"
    status, body = await sign_as(env, uid, handle, b"")  # probe: the handle still signs at all
    assert status == 200, body

    async def sign(data: bytes) -> bytes:
        status, body = await sign_as(env, uid, handle, data)
        assert status == 200, body
        return base64.b64decode(body["signature"])

    token = parse_token(await make_token(audience, sign, 60))
    status, module = await dev.registry("GET", module_id)
    assert status == 200, module
    try:
        verify_token(token, audience, base64.b64decode(module["authentication"]["symmetricKey"]["primaryKey"]),
                     now=time.time())
    except ValueError:
        return False
    return True


@pytest.fixture
def dev(hub: HubEmulator, public_dir: Path) -> Device:
    return Device(hub, hub.add_device(DEVICE), public_dir)


async def first_start(request: pytest.FixtureRequest, dev: Device) -> dict[str, dict[str, Any]]:
    """Both agents configured, the edge runtime's module, an identity made by someone else in the cloud, and one the
    edge agent tagged like ours: returns what the agents were given."""
    async with serve(request, dev, AGENT, OTHER) as env:
        given = {}
        for name, uid in (AGENT, OTHER):
            status, body = await identity_as(env, uid)
            assert status == 200 and body["spec"]["moduleId"] == name, body
            handle = body["spec"]["auth"]["keyHandle"]
            assert await hub_accepts_token_of(env, dev, uid, name, handle)
            given[name] = body["spec"]
        await env.service.create_module("edgeHub", managed_by="IotEdge")  # as the runtime does for its modules
        await env.service.create_module("lookalike", managed_by="edgeward")  # a managedBy any caller could choose
        status, body = await dev.registry("PUT", "from-portal", {"moduleId": "from-portal", "deviceId": DEVICE})
        assert status == 200, body
        return given


async def survivors(dev: Device) -> dict[str, str]:
    gens = {}
    for module_id in ("edgeHub", "lookalike", "from-portal", OTHER[0]):
        status, body = await dev.registry("GET", module_id)
        assert status == 200, (module_id, body)
        gens[module_id] = body["generationId"]
    return gens


async def test_removed_host_principal_loses_its_hub_identity_and_its_key_handle_stops_signing(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    given = await first_start(request, dev)
    before = await survivors(dev)
    old_handle = given[AGENT[0]]["auth"]["keyHandle"]

    async with serve(request, dev, OTHER) as env:  # restarted without the host agent
        status, body = await dev.registry("GET", AGENT[0])
        assert status == 404, body
        status, body = await sign_as(env, AGENT[1], old_handle, b"data")
        assert status == 401, body
        assert env.service.cache.get(DEVICE, "aziot", AGENT[0]) is None  # no local copy to answer from
        status, body = await identity_as(env, AGENT[1])
        assert status == 401, body
        # what was not the removed agent's is untouched: same generations, the other agent's handle still works
        assert await survivors(dev) == before
        status, body = await identity_as(env, OTHER[1])
        assert status == 200 and body["spec"]["genId"] == given[OTHER[0]]["genId"], body
        assert await hub_accepts_token_of(env, dev, OTHER[1], OTHER[0], given[OTHER[0]]["auth"]["keyHandle"])

    async with serve(request, dev, AGENT, OTHER) as env:  # added back: a new identity; the old handle stays dead
        status, body = await identity_as(env, AGENT[1])
        assert status == 200 and body["spec"]["genId"] != given[AGENT[0]]["genId"], body
        assert await hub_accepts_token_of(env, dev, AGENT[1], AGENT[0], body["spec"]["auth"]["keyHandle"])
        status, body = await sign_as(env, AGENT[1], old_handle, b"data")
        assert status == 401, body


async def test_a_principal_no_longer_of_idtype_module_loses_its_module_identity(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    given = await first_start(request, dev)
    doc = dev.doc(AGENT, OTHER)
    doc["principal"][0]["idtype"] = ["device"]  # same uid and name, now for the device identity only
    settings = parse_identity_settings(doc, dev.base / "state", dev.base / "run")
    async with serve_identity(request, dev.base, doc, hub_factory_for(settings)) as env:
        assert (await dev.registry("GET", AGENT[0]))[0] == 404
        status, body = await sign_as(env, AGENT[1], given[AGENT[0]]["auth"]["keyHandle"], b"data")
        assert status == 401, body
        status, body = await identity_as(env, AGENT[1])
        assert status == 200 and "moduleId" not in body["spec"], body


async def test_an_identity_someone_else_recreated_under_the_removed_name_is_left_alone(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    """While the service was stopped, the cloud operator deleted the agent's identity and made another of that name:
    it is not the one this service made, so removing the principal must not delete it."""
    given = await first_start(request, dev)
    assert (await dev.registry("DELETE", AGENT[0]))[0] == 204
    status, theirs = await dev.registry("PUT", AGENT[0], {"moduleId": AGENT[0], "deviceId": DEVICE,
                                                          "managedBy": "someone-else"})
    assert status == 200, theirs
    async with serve(request, dev, OTHER) as env:
        status, body = await dev.registry("GET", AGENT[0])
        assert status == 200 and body["generationId"] == theirs["generationId"], body
        status, body = await sign_as(env, AGENT[1], given[AGENT[0]]["auth"]["keyHandle"], b"data")
        assert status == 401, body  # the agent's own key is still revoked


async def test_a_configured_principal_does_not_take_over_an_identity_of_its_name_managed_by_another(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    """The edge runtime's module of the same name keeps its keys; the host agent gets no identity (404) rather than
    handles to a module that is not its own."""
    status, theirs = await dev.registry("PUT", AGENT[0], {"moduleId": AGENT[0], "deviceId": DEVICE,
                                                          "managedBy": "IotEdge"})
    assert status == 200, theirs
    async with serve(request, dev, AGENT) as env:
        status, body = await dev.registry("GET", AGENT[0])
        assert status == 200 and body["etag"] == theirs["etag"], body  # never written to
        status, body = await identity_as(env, AGENT[1])
        assert status == 404 and "managed by 'IotEdge'" in body["message"], body


class SwitchableHub:
    """A hub factory whose hub can be made unreachable (connections refused), as in a network outage."""

    def __init__(self, dev: Device) -> None:
        self.down = True
        self._real = hub_factory_for(parse_identity_settings(dev.doc(), dev.base / "state", dev.base / "run"))
        self._dead = "127.0.0.1:9"  # discard port: nothing listens

    def __call__(self, device: DeviceIdentity, auth: HubAuth) -> HubModules:
        client = self._real(device, auth)
        if self.down:
            assert isinstance(client, HubClient)
            client.hub = self._dead
        return client


async def test_hub_outage_during_reconcile_is_retried_at_the_next_start(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    given = await first_start(request, dev)
    old_handle = given[AGENT[0]]["auth"]["keyHandle"]
    outage = SwitchableHub(dev)
    started = time.monotonic()
    async with serve(request, dev, OTHER, hub_factory=outage) as env:
        assert time.monotonic() - started < 20  # the outage does not hold up the start
        # the key is gone at once: revoking it needs no cloud
        status, body = await sign_as(env, AGENT[1], old_handle, b"data")
        assert status == 401, body
        status, _ = await dev.registry("GET", AGENT[0])
        assert status == 200  # not deleted yet: the hub was unreachable
    async with serve(request, dev, OTHER) as env:
        status, body = await dev.registry("GET", AGENT[0])
        assert status == 404, body
        assert (await identity_as(env, OTHER[1]))[0] == 200


async def test_hub_outage_during_reconcile_is_retried_later_in_the_same_run(
    request: pytest.FixtureRequest, dev: Device
) -> None:
    given = await first_start(request, dev)
    old_handle = given[AGENT[0]]["auth"]["keyHandle"]
    outage = SwitchableHub(dev)
    async with serve(request, dev, OTHER, hub_factory=outage) as env:
        status, body = await sign_as(env, AGENT[1], old_handle, b"data")
        assert status == 401, body
        assert (await dev.registry("GET", AGENT[0]))[0] == 200
        assert not env.service.reconciled.is_set()
        outage.down = False
        await asyncio.wait_for(env.service.reconciled.wait(), 30)  # retried with backoff once the hub is back
        status, body = await dev.registry("GET", AGENT[0])
        assert status == 404, body
        assert env.service.cache.get(DEVICE, "aziot", AGENT[0]) is None
