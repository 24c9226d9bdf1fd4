"""`edgeward serve edged` in a process of its own, as its systemd unit runs it: the runtime reaches keys, certs and
identity over their sockets, deploys a module, and the module's workload calls are answered."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.modules import client_spec, logs_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_edged_alone(public_dir: Path) -> None:
    config = public_dir / "config.toml"
    config.write_text('hostname = "split-edge"\nallow_elevated_docker_permissions = true\n'  # root module
                      '[edgeward.runtime]\nengine = "process"\n')
    common = ["-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(public_dir / "run")]
    loop = asyncio.get_running_loop()
    procs = []
    try:
        for service in ("keys", "certs", "identity", "edged"):
            procs.append(await loop.run_in_executor(None, start_daemon, ["serve", service, *common]))
        mgmt = ManagementClient(public_dir / "run" / "mgmt" / "mgmt.sock")
        try:
            calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03",
                      {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}],
                     ["POST", "workload", "/modules/{name}/genid/{genid}/certificate/server?api-version=2022-08-03",
                      {"commonName": "splitmod"}],
                     # per-module encryption: a key derived inside keyd, reached over its socket (AEAD-SALTED)
                     ["POST", "workload", "/modules/{name}/genid/{genid}/encrypt?api-version=2022-08-03",
                      {"plaintext": "c2VjcmV0", "initializationVector": "MDEyMzQ1Njc4OWFi"}]]
            await mgmt.create_module(client_spec("splitmod", calls, image=sys.executable))
            await mgmt.action("splitmod", "start")
            seen = await logs_until(mgmt, "splitmod", b"DONE", timeout=60)
            assert seen.count(b'"status": 200') == 2 and seen.count(b'"status": 201') == 1, seen
            encrypted = json.loads(seen.split(b"RESULT ")[3].split(b"\n")[0])
            assert base64.b64decode(encrypted["body"]["ciphertext"])[0] == 0x03, encrypted
        finally:
            await mgmt.close()
    finally:
        for proc in reversed(procs):
            await loop.run_in_executor(None, stop_daemon, proc)
