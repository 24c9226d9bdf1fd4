"""Nested edge (`parent_hostname`), with two hosts on this machine: a parent stand-in (the hub emulator, listening on
port 443 of a loopback address of its own with a certificate from its own CA, relaying for the hub
`child-hub.example.net`) and a child Edgeward daemon (`edgeward run`) provisioned manually with a connection string
naming the hub. As aziot-identityd (aziot-cloud-client-async's hub client), the child sends its registry calls to the
parent while its SAS tokens name the hub (`sr=<hub>/devices/<id>`), and it trusts the parent by `trust_bundle_cert`.
As aziot-edged (watchdog.rs) and the agent (CreateOrUpdateCommand.cs): the agent and edgeHub get
`IOTEDGE_GATEWAYHOSTNAME` = the parent, every other module `IOTEDGE_GATEWAYHOSTNAME` = this device and
`IOTEDGE_PARENTHOSTNAME` = the parent.

The agent is a host-process relay module (tests/contract/relay.py) that writes its environment and relays a private
socket of the test to its management socket, so the test calls the management API as the agent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.est_server import generate_ca
from edgeward.testing.hub_emulator import HubEmulator
from tests.contract.relay import RELAY_SCRIPT, relay_agent_toml

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the parent stand-in listens on port 443")]

HUB = "child-hub.example.net"
CHILD = "child-1"
MGMT = "api-version=2022-08-03"
IDENTITY = "api-version=2021-12-01"


@dataclass
class Child:
    parent: HubEmulator
    base: Path
    run: Path

    @property
    def agent_mgmt(self) -> Path:
        return self.base / "relays" / "agent-mgmt.sock"

    def env_of(self, module: str) -> dict[str, str]:
        return dict(json.loads((self.base / "relays" / f"{module}.env.json").read_text()))


async def _wait_for(path: Path, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not appear within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def call(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
            s.request(method, "http://localhost" + path, data=data, headers=headers,
                      timeout=aiohttp.ClientTimeout(total=60)) as r:
        raw = await r.read()
        return r.status, json.loads(raw) if raw else None


def child_config(base: Path, parent: HubEmulator, key: bytes, trust_bundle: Path, extra: str = "") -> Path:
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        hostname = "{CHILD}"
        parent_hostname = "{parent.address}"
        trust_bundle_cert = "file://{trust_bundle}"
        allow_elevated_docker_permissions = true  # the agent and the modules are host processes of root
        {extra}
        [provisioning]
        source = "manual"
        connection_string = "HostName={HUB};DeviceId={CHILD};SharedAccessKey={base64.b64encode(key).decode()}"
        """) + relay_agent_toml({
            "RELAY_1_AT": str(base / "relays" / "agent-mgmt.sock"), "RELAY_1_TO": "IOTEDGE_MANAGEMENTURI",
            "RELAY_ENV_OUT": str(base / "relays" / "edgeAgent.env.json")}, pull_policy=None))
    return config


def relay_module_spec(child: Child, name: str, env: dict[str, str]) -> dict[str, Any]:
    """A ModuleSpec as the agent sends it; the module relays nothing and writes its environment."""
    relay_env = {"RELAY_ENV_OUT": str(child.base / "relays" / f"{name}.env.json")}
    return {"name": name, "type": "docker", "imagePullPolicy": "On-Create",
            "config": {"settings": {"image": sys.executable, "createOptions": {"Cmd": ["-c", RELAY_SCRIPT]}},
                       "env": [{"key": k, "value": v} for k, v in (relay_env | env).items()]}}


@pytest.fixture(scope="module")
async def child(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Child]:
    base = tmp_path_factory.mktemp("nested")
    os.chmod(base, 0o755)
    (base / "relays").mkdir(mode=0o700)
    async with HubEmulator(hub_name=HUB) as parent:
        key = parent.add_device(CHILD)
        (base / "parent-ca.pem").write_bytes(parent.ca_pem)
        config = child_config(base, parent, key, base / "parent-ca.pem")
        run = base / "run"
        loop = asyncio.get_running_loop()
        daemon = await loop.run_in_executor(None, lambda: start_daemon(
            ["run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(run)],
            log_path=base / "daemon.log"))
        try:
            found = Child(parent, base, run)
            await _wait_for(found.agent_mgmt, "the edge agent's management relay")
            yield found
        finally:
            await loop.run_in_executor(None, stop_daemon, daemon)


async def test_child_registers_module_identities_through_its_parent_with_the_hub_in_its_tokens(child: Child) -> None:
    """The agent's own identity was registered at start, and a module identity now, both through the parent: the
    parent stand-in accepts only tokens whose sr names the hub (not the parent's address it is reached by)."""
    assert "$edgeAgent" in child.parent.modules_of(CHILD)
    status, body = await call(child.run / "identityd.sock", "POST", "/identities/modules?" + IDENTITY,
                              {"type": "aziot", "moduleId": "through-parent"})
    assert status == 200, body
    spec = body["spec"]
    assert (spec["hubName"], spec["gatewayHost"], spec["deviceId"]) == (HUB, child.parent.address, CHILD)
    assert spec["genId"] == child.parent.modules_of(CHILD)["through-parent"].generation_id
    status, body = await call(child.run / "identityd.sock", "GET", "/identities/identity?" + IDENTITY)
    assert status == 200 and body["spec"]["gatewayHost"] == child.parent.address, body
    # the agent's identity calls go the same way
    status, body = await call(child.agent_mgmt, "POST", "/identities/?" + MGMT,
                              {"moduleId": "plainmod", "managedBy": "IotEdge"})
    assert status == 200, body
    assert "plainmod" in child.parent.modules_of(CHILD)


async def test_agent_gets_the_parent_as_its_gateway(child: Child) -> None:
    env = child.env_of("edgeAgent")
    assert env["IOTEDGE_GATEWAYHOSTNAME"] == child.parent.address
    assert env["IOTEDGE_IOTHUBHOSTNAME"] == HUB and env["EdgeDeviceHostName"] == CHILD
    assert "IOTEDGE_PARENTHOSTNAME" not in env


async def test_edgehub_goes_to_the_parent_and_other_modules_to_this_device(child: Child) -> None:
    """CreateOrUpdateCommand: edgeHub's upstream is the parent; every other module's gateway is this device's
    edgeHub, with the parent in IOTEDGE_PARENTHOSTNAME."""
    for name, identity in (("edgeHub", "$edgeHub"), ("othermod", "othermod")):
        status, body = await call(child.agent_mgmt, "POST", "/identities/?" + MGMT,
                                  {"moduleId": identity, "managedBy": "IotEdge"})
        assert status == 200, body
        status, body = await call(child.agent_mgmt, "POST", "/modules?" + MGMT,
                                  relay_module_spec(child, name, {"IOTEDGE_MODULEID": identity}))
        assert status == 201, body
        status, body = await call(child.agent_mgmt, "POST", f"/modules/{name}/start?" + MGMT)
        assert status == 204, body
        await _wait_for(child.base / "relays" / f"{name}.env.json", f"{name}'s environment")
    hub_env, other_env = child.env_of("edgeHub"), child.env_of("othermod")
    assert hub_env["IOTEDGE_GATEWAYHOSTNAME"] == child.parent.address
    assert "IOTEDGE_PARENTHOSTNAME" not in hub_env
    assert other_env["IOTEDGE_GATEWAYHOSTNAME"] == CHILD
    assert other_env["IOTEDGE_PARENTHOSTNAME"] == child.parent.address
    assert {"$edgeHub", "othermod"} <= set(child.parent.modules_of(CHILD))


async def test_a_child_that_does_not_trust_its_parents_ca_fails_clearly(tmp_path: Path) -> None:
    """trust_bundle_cert holds another CA: the child does not talk to the parent, and says why."""
    os.chmod(tmp_path, 0o755)
    (tmp_path / "relays").mkdir(mode=0o700)
    other_ca, _ = generate_ca("Not the parent's CA")
    (tmp_path / "other-ca.pem").write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    async with HubEmulator(hub_name=HUB) as parent:
        key = parent.add_device(CHILD)
        config = child_config(tmp_path, parent, key, tmp_path / "other-ca.pem",
                              "cloud_timeout_sec = 5\ncloud_retries = 0")
        run = tmp_path / "run"
        loop = asyncio.get_running_loop()
        daemon = await loop.run_in_executor(None, lambda: start_daemon(
            ["run", "-c", str(config), "--state-dir", str(tmp_path / "state"), "--run-dir", str(run)],
            log_path=tmp_path / "daemon.log"))
        try:
            status, body = await call(run / "identityd.sock", "POST", "/identities/modules?" + IDENTITY,
                                      {"type": "aziot", "moduleId": "never"})
        finally:
            await loop.run_in_executor(None, stop_daemon, daemon)
        assert status == 503, body
        message = body["message"]
        assert f"parent device (parent_hostname {parent.address})" in message, message
        assert "not trusted" in message and f"trust_bundle_cert (file://{tmp_path / 'other-ca.pem'})" in message
        assert parent.modules_of(CHILD) == {}


async def test_dps_provisioning_under_a_parent_is_refused_clearly(tmp_path: Path) -> None:
    """As aziot-identityd ("DPS provisioning is not supported in nested mode"): nothing is sent anywhere."""
    os.chmod(tmp_path, 0o755)
    key = base64.b64encode(b"d" * 32).decode()
    (tmp_path / "config.toml").write_text(textwrap.dedent(f"""\
        hostname = "{CHILD}"
        parent_hostname = "parent.invalid"
        [provisioning]
        source = "dps"
        global_endpoint = "https://dps.invalid"
        id_scope = "0ne00000000"
        [provisioning.attestation]
        method = "symmetric_key"
        registration_id = "{CHILD}"
        symmetric_key = {{ value = "{key}" }}
        """))
    run = tmp_path / "run"
    loop = asyncio.get_running_loop()
    daemon = await loop.run_in_executor(None, lambda: start_daemon(
        ["run", "-c", str(tmp_path / "config.toml"), "--state-dir", str(tmp_path / "state"), "--run-dir", str(run)],
        log_path=tmp_path / "daemon.log"))
    try:
        status, body = await call(run / "identityd.sock", "GET", "/identities/identity?" + IDENTITY)
    finally:
        await loop.run_in_executor(None, stop_daemon, daemon)
    assert status == 503, body
    assert "DPS provisioning is not supported under a parent device (parent_hostname parent.invalid)" in \
        body["message"], body
