"""The daemon (keys + certs + identity in one process) with a manually provisioned device and the IoT Hub emulator:
each local user sees only the identity its principal allows, checked over the real socket as that uid."""

from __future__ import annotations

import asyncio
import base64
import os
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, host_agent
from tests.fixtures.peers import as_uid_async as as_uid

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as other uids")]


def manual_device(hub: HubEmulator, key: bytes, base: Path, principals: str) -> Path:
    """The config of device edge-e2e, manually provisioned with its SAS key against ``hub``, with ``principals``
    and host principal 3001 (``host-agent``, a module identity)."""
    (base / "hub-ca.pem").write_bytes(hub.ca_pem)
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "edge-e2e"
        [provisioning]
        source = "manual"
        connection_string = "HostName={hub.hostname};DeviceId=edge-e2e;SharedAccessKey={base64.b64encode(key).decode()}"
    """) + principals + host_agent(base / "hub-ca.pem", 3001))
    return config


async def test_each_uid_sees_only_its_own_identity(public_dir: Path) -> None:
    async with HubEmulator() as hub:
        key = hub.add_device("edge-e2e")
        config = manual_device(hub, key, public_dir, textwrap.dedent("""

            [[principal]]
            uid = 3002
            name = "device-agent"
            idtype = ["device"]

            [[principal]]
            uid = 3003
            name = "edge-daemon"
        """))
        async with daemon(config, public_dir) as run:
            sock, q = run / "identityd.sock", "?api-version=2021-12-01"
            status, body = await as_uid(3001, sock, "GET", "/identities/identity" + q)
            assert status == 200, body
            assert body["spec"]["moduleId"] == "host-agent"  # reconciled into the hub at start
            assert body["spec"]["genId"] == hub.modules_of("edge-e2e")["host-agent"].generation_id
            status, body = await as_uid(3002, sock, "GET", "/identities/identity" + q)
            assert status == 200 and "moduleId" not in body["spec"] and body["spec"]["deviceId"] == "edge-e2e"
            status, body = await as_uid(4444, sock, "GET", "/identities/identity" + q)
            assert status == 401 and "row 'identityd (every route)'" in body["message"]
            for uid in (3001, 3002, 4444):
                status, body = await as_uid(uid, sock, "POST", "/identities/modules" + q,
                                            {"type": "aziot", "moduleId": "intruder"})
                assert status == 401, body
            status, body = await as_uid(3003, sock, "POST", "/identities/modules" + q,
                                        {"type": "aziot", "moduleId": "by-daemon"})
            assert status == 200 and body["spec"]["moduleId"] == "by-daemon"
            assert "intruder" not in hub.modules_of("edge-e2e")


# A host principal's client (the system interpreter, run as its uid): N requests on one keep-alive connection,
# printing how many got each status.
LOOP_AS_UID = textwrap.dedent("""
    import collections, http.client, socket, sys
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
    c, seen = C("identityd"), collections.Counter()
    for _ in range(int(sys.argv[3])):
        c.request("GET", sys.argv[2]); r = c.getresponse(); r.read(); seen[r.status] += 1
    print(dict(seen))
""")


async def test_a_principal_asking_for_another_s_identity_in_a_loop_writes_a_bounded_number_of_lines(
        public_dir: Path) -> None:
    """Found by h/brk13a a01: each refused GET /identities/modules/{another's} wrote an unthrottled WARNING besides
    the refusal trail's rate-limited line (2,000 lines in 0.4 s from one connection; journald drops a unit's lines
    past ~300 a second, the refusals logged next among them). Now the refusal trail alone logs it: the first ones
    with their facts (route, uid, the module asked for), the rest counted."""
    async with HubEmulator() as hub:
        key = hub.add_device("edge-e2e")
        config = manual_device(hub, key, public_dir, textwrap.dedent("""

            [[principal]]
            uid = 3003
            name = "edge-daemon"
        """))
        log = public_dir / "daemon.log"
        async with daemon(config, public_dir) as run:
            path = "/identities/modules/edge-daemon?api-version=2021-12-01&type=aziot"
            proc = await asyncio.create_subprocess_exec(
                "setpriv", "--reuid=3001", "--regid=3001", "--clear-groups", "/usr/bin/python3", "-c", LOOP_AS_UID,
                str(run / "identityd.sock"), path, "500", stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert out.decode().strip() == "{401: 500}", out
            await asyncio.sleep(0.5)
            lines = [line for line in log.read_text().splitlines() if "edge-daemon" in line and "refused" in line]
        assert 1 <= len(lines) <= 3, lines  # the refusal trail's per-route budget a minute
        assert "refused GET /identities/modules/{moduleId} on identityd" in lines[0] and "uid 3001" in lines[0] and (
            "module 'edge-daemon'" in lines[0]), lines
