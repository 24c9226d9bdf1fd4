"""The management API and the identity service's daemon routes against the hub identities of host principals, over
the real daemon and the IoT Hub emulator (break-this review, session 12: i01, i02, x01).

A cloud deployment may name a module like a host principal ("host-agent"); the edge agent then asks the management
API to create, update or delete that identity. The identity belongs to the principal (Edgeward made it, managedBy
"edgeward"); before the fix the agent's DELETE removed it from the hub (the host agent got 404 until the daemon
restarted) and create/update answered managedBy "IotEdge" for it. And a module create the runtime refuses left a
module identity in the hub that no module owns."""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, host_agent
from tests.fixtures.peers import as_uid_async as as_uid

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as other uids")]

DEVICE = "edge-hostids"
MA = "?api-version=2022-08-03"  # the management API's
IA = "?api-version=2021-12-01"  # the identity service's
NO_PASSWD_UID = 4444


@contextlib.asynccontextmanager
async def principals_daemon(directory: Path) -> AsyncIterator[tuple[HubEmulator, Path]]:
    """The daemon with a manually provisioned device, host principal 3001 (idtype module, "host-agent") and daemon
    principal 3003; yields the hub emulator and the run directory."""
    async with HubEmulator() as hub:
        key = hub.add_device(DEVICE)
        (directory / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = directory / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "{DEVICE}"
            [provisioning]
            source = "manual"
            connection_string = "HostName={hub.hostname};DeviceId={DEVICE};SharedAccessKey={base64.b64encode(key).decode()}"

            [[principal]]
            uid = 3003
            name = "edge-daemon"
        """) + host_agent(directory / "hub-ca.pem", 3001))
        async with daemon(config, directory) as run:
            yield hub, run


async def test_the_agent_cannot_delete_create_over_or_update_a_host_principals_identity(public_dir: Path) -> None:
    async with principals_daemon(public_dir) as (hub, run):
        mgmt, identityd = run / "mgmt" / "mgmt.sock", run / "identityd.sock"
        status, mine = await as_uid(3001, identityd, "GET", "/identities/identity" + IA)
        assert status == 200, mine
        held = hub.modules_of(DEVICE)["host-agent"]
        assert held.managed_by == "edgeward" and mine["spec"]["genId"] == held.generation_id
        keys = list(held.keys)

        # The edge agent (host root here) on the management API: each is refused, nothing changes in the hub.
        for method, path, body in (("POST", "/identities/", {"moduleId": "host-agent"}),
                                   ("PUT", "/identities/host-agent", {"moduleId": "host-agent"}),
                                   ("DELETE", "/identities/host-agent", None)):
            status, answer = await as_uid(0, mgmt, method, path + MA, body)
            assert status == 409, (method, status, answer)
            assert "host principal" in answer["message"], answer
        # The identity service's daemon principal (aziot's edged) likewise.
        for method, path, body in (("POST", "/identities/modules", {"type": "aziot", "moduleId": "host-agent"}),
                                   ("PUT", "/identities/modules/host-agent", {"type": "aziot"}),
                                   ("DELETE", "/identities/modules/host-agent", None)):
            query = IA if method == "POST" else IA + "&type=aziot"
            status, answer = await as_uid(3003, identityd, method, path + query, body)
            assert status == 409, (method, status, answer)

        now = hub.modules_of(DEVICE)["host-agent"]
        assert (now.managed_by, now.generation_id, list(now.keys)) == ("edgeward", held.generation_id, keys)
        status, again = await as_uid(3001, identityd, "GET", "/identities/identity" + IA)
        assert status == 200 and again["spec"]["genId"] == held.generation_id, again

        # The list names the host principal's identity with its stored managedBy (the agent deletes only IotEdge's).
        status, listed = await as_uid(0, mgmt, "GET", "/identities/" + MA)
        assert status == 200
        assert {i["moduleId"]: i["managedBy"] for i in listed["identities"]}["host-agent"] == "edgeward"

        # Other identities: the answers carry the managedBy the hub stores, not the one the request asked for.
        status, made = await as_uid(0, mgmt, "POST", "/identities/" + MA, {"moduleId": "filter"})
        assert status == 200 and made["managedBy"] == "IotEdge", made
        status, updated = await as_uid(0, mgmt, "PUT", "/identities/filter" + MA,
                                       {"moduleId": "filter", "managedBy": "someone-else"})
        assert status == 200 and updated["managedBy"] == "IotEdge", updated
        status, again_made = await as_uid(0, mgmt, "POST", "/identities/" + MA,
                                          {"moduleId": "filter", "managedBy": "someone-else"})
        assert status == 200 and again_made["managedBy"] == "IotEdge", again_made
        assert hub.modules_of(DEVICE)["filter"].managed_by == "IotEdge"
        status, _ = await as_uid(0, mgmt, "DELETE", "/identities/filter" + MA)
        assert status == 204 and "filter" not in hub.modules_of(DEVICE)


async def test_a_refused_module_create_registers_no_hub_identity(public_dir: Path) -> None:
    with pytest.raises(KeyError):
        pwd.getpwuid(NO_PASSWD_UID)
    async with principals_daemon(public_dir) as (hub, run):
        mgmt = run / "mgmt" / "mgmt.sock"
        before = set(hub.modules_of(DEVICE))
        for i in range(3):
            spec = {"name": f"ghost{i}", "type": "docker", "imagePullPolicy": "never",
                    "config": {"settings": {"image": "/usr/bin/python3",
                                            "createOptions": {"Cmd": ["-c", "print(1)"],
                                                              "User": str(NO_PASSWD_UID)}}, "env": []}}
            status, answer = await as_uid(0, mgmt, "POST", "/modules" + MA, spec)
            assert status == 400 and "passwd" in answer["message"], answer
        assert set(hub.modules_of(DEVICE)) == before
        status, listed = await as_uid(0, mgmt, "GET", "/modules" + MA)
        assert status == 200 and not [m for m in listed["modules"] if m["name"].startswith("ghost")]
