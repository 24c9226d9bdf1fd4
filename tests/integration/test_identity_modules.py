"""Module identities against the IoT Hub emulator over real TLS: SAS keys derived per generation in the keys
service, registered in the hub, usable to sign tokens the hub accepts; offline answers from the local copy."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from edgeward.identity.compose import hub_factory_for
from edgeward.identity.sas import device_audience, make_token, parse_token, verify_token
from edgeward.identity.settings import parse_identity_settings
from edgeward.keys.model import HmacSha256
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.identity import IdentityEnv, serve_identity

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[HubEmulator]:
    async with HubEmulator() as emulator:
        yield emulator


def config(hub: HubEmulator, key: bytes, ca: Path) -> dict[str, Any]:
    ca.write_bytes(hub.ca_pem)
    cs = f"HostName={hub.hostname};DeviceId=edge-1;SharedAccessKey={base64.b64encode(key).decode()}"
    return {
        "hostname": "edge-1",
        "provisioning": {"source": "manual", "connection_string": cs},
        "principal": [{"uid": 3001, "name": "host-agent", "idtype": ["module"]}],
        "edgeward": {"identity": {"cloud_trust_bundle": f"file://{ca}"}},
    }


async def serve(request: pytest.FixtureRequest, tmp_path: Path, hub: HubEmulator) -> Any:
    key = hub.add_device("edge-1")
    doc = config(hub, key, tmp_path / "hub-ca.pem")
    settings = parse_identity_settings(doc, tmp_path / "state", tmp_path / "run")
    return serve_identity(request, tmp_path, doc, hub_factory_for(settings))


async def module_token_accepted(env: IdentityEnv, hub: HubEmulator, module_id: str, key_handle: str) -> None:
    audience = f"{device_audience(hub.hostname, 'edge-1')}/modules/{module_id}"

    async def sign(data: bytes) -> bytes:
        return await env.certs_env.keys.sign(key_handle, HmacSha256(data))

    token = parse_token(await make_token(audience, sign, 60))
    stored = hub.modules_of("edge-1")[module_id].authentication
    assert stored is not None
    verify_token(token, audience, base64.b64decode(stored["symmetricKey"]["primaryKey"]), now=time.time())


async def test_module_identities_are_registered_with_per_generation_keys(
    request: pytest.FixtureRequest, tmp_path: Path, hub: HubEmulator
) -> None:
    async with await serve(request, tmp_path, hub) as env:
        svc = env.service
        # the host-process principal's module was reconciled at start
        assert "host-agent" in hub.modules_of("edge-1")
        created = await svc.create_module("telemetry")
        assert created.gen_id == hub.modules_of("edge-1")["telemetry"].generation_id
        await module_token_accepted(env, hub, "telemetry", created.key_handle)
        again = await svc.get_module("telemetry")
        assert again.gen_id == created.gen_id
        assert {m.module_id for m in await svc.list_modules()} == {"host-agent", "telemetry"}
        # re-created module: new generation, new keys
        await svc.delete_module("telemetry")
        assert "telemetry" not in hub.modules_of("edge-1")
        recreated = await svc.create_module("telemetry")
        assert recreated.gen_id != created.gen_id
        await module_token_accepted(env, hub, "telemetry", recreated.key_handle)
        with pytest.raises(Exception, match="not found"):
            await svc.get_module("never-created")


async def test_hub_outage_is_answered_from_the_local_copy(request: pytest.FixtureRequest, tmp_path: Path,
                                                          hub: HubEmulator) -> None:
    async with await serve(request, tmp_path, hub) as env:
        created = await env.service.create_module("metrics")
        hub.fail_next(2, 503)
        offline = await env.service.get_module("metrics")
        assert offline.gen_id == created.gen_id
        listed = await env.service.list_modules()
        assert "metrics" in {m.module_id for m in listed}
        hub.fail_next(1, 429, retry_after=5)
        with pytest.raises(Exception, match="429") as e:
            await env.service.create_module("other")
        assert getattr(e.value, "retry_after", None) == 5


async def test_a_principal_reading_its_identity_in_a_loop_during_an_outage_writes_one_line(
        request: pytest.FixtureRequest, tmp_path: Path, hub: HubEmulator, caplog: pytest.LogCaptureFixture) -> None:
    """Each answer from the local copy wrote a WARNING, which a principal asking for its identity in a loop during a
    hub outage repeats at will (as h/brk13a a01 did with refusals): now the first per module an interval, the rest
    at DEBUG, counted in one summary."""
    import logging

    from edgeward.http.peercred import Caller

    async with await serve(request, tmp_path, hub) as env:
        agent = Caller(1, 3001, 3001)
        online = await env.service.caller_identity(agent)
        caplog.set_level(logging.DEBUG, logger="edgeward")
        hub.fail_next(30, 503)
        for _ in range(30):
            assert (await env.service.caller_identity(agent)).gen_id == online.gen_id  # type: ignore[union-attr]
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "answering 'host-agent' from the local copy" in warned[0], warned
        caplog.clear()
        env.service.from_copy_log.flush()  # the interval's end
        summary = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(summary) == 1 and summary[0].startswith("29 more 'answered from the local copy' lines"), summary


async def test_identity_api_over_the_socket(request: pytest.FixtureRequest, tmp_path: Path, hub: HubEmulator) -> None:
    async with await serve(request, tmp_path, hub) as env:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(env.socket))) as s:
            url = "http://identityd/identities/modules?api-version=2021-12-01"
            async with s.post(url, json={"type": "aziot", "moduleId": "sensor"}) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["type"] == "aziot" and body["spec"]["moduleId"] == "sensor"
                assert body["spec"]["deviceId"] == "edge-1" and body["spec"]["auth"]["type"] == "sas"
                assert body["spec"]["genId"] == hub.modules_of("edge-1")["sensor"].generation_id
            async with s.get("http://identityd/identities/modules?api-version=2021-12-01&type=aziot") as r:
                ids = {i["spec"]["moduleId"] for i in (await r.json())["identities"]}
                assert ids == {"host-agent", "sensor"}
            async with s.post(url, json={"type": "aziot", "moduleId": "bad/id"}) as r:
                assert r.status == 400 and "invalid module id" in (await r.json())["message"]
            async with s.delete("http://identityd/identities/modules/sensor?api-version=2021-12-01&type=aziot") as r:
                assert r.status == 204
            async with s.post("http://identityd/identities/device?api-version=2021-12-01", json={"type": "aziot"}) as r:
                assert r.status == 200 and (await r.json())["spec"]["deviceId"] == "edge-1"


async def test_wrong_device_key_is_a_clear_gateway_error(request: pytest.FixtureRequest, tmp_path: Path,
                                                         hub: HubEmulator) -> None:
    hub.add_device("edge-1")
    doc = config(hub, b"not-the-registered-key-000000000", tmp_path / "hub-ca.pem")
    settings = parse_identity_settings(doc, tmp_path / "state", tmp_path / "run")
    async with serve_identity(request, tmp_path, doc, hub_factory_for(settings)) as env:
        with pytest.raises(Exception, match="answered 401") as e:
            await env.service.create_module("x")
        assert getattr(e.value, "status", None) == 502
