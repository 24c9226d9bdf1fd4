"""A full run at debug log level — PKCS#11 with a PIN, a device SAS key, imported and derived keys, module
identities registered in the (emulated) hub, a module signing through the workload API — and then a grep of the
daemon's log for every secret it handled. None may appear, in any encoding."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.modules import client_spec, logs_until
from tests.fixtures.softhsm import make_token

pytestmark = pytest.mark.asyncio(loop_scope="session")

PIN = "pin-Xq9-77318"


def _encodings(secret: bytes) -> list[str]:
    return [base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("="),
            secret.hex(), secret.hex().upper()]


async def test_a_debug_run_logs_no_secret(public_dir: Path) -> None:
    hsm = make_token(public_dir / "hsm", label="secrets", pin=PIN)
    device_key = os.urandom(32)
    imported = os.urandom(32)
    async with HubEmulator() as hub:
        hub.add_device("edge-secrets", device_key)
        (public_dir / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = public_dir / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "edge-secrets"
            allow_elevated_docker_permissions = true  # its module runs as root
            [provisioning]
            source = "manual"
            connection_string = "HostName={hub.hostname};DeviceId=edge-secrets;SharedAccessKey={base64.b64encode(device_key).decode()}"
            [aziot_keys]
            pkcs11_lib_path = "{hsm.lib}"
            pkcs11_base_slot = "pkcs11:token=secrets?pin-value={PIN}"
            [edgeward.identity]
            cloud_trust_bundle = "file://{public_dir / 'hub-ca.pem'}"
        """))
        run, log = public_dir / "run", public_dir / "daemon.log"
        env = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf), "EDGEWARD_LOG_LEVEL": "DEBUG"}
        loop = asyncio.get_running_loop()
        daemon = await loop.run_in_executor(None, lambda: start_daemon(
            ["-vv", "run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(run)],
            env=env, log_path=log))
        exported = b""
        try:
            keys = KeysClient(run / "keyd.sock")
            try:
                handle = await keys.import_key("imported-secret", imported, "derive")
                exported = await keys.export_derived_key(await keys.create_derived_key(handle, b"ctx"))
                await keys.create_key_pair_if_not_exists("pair", "ec-p256")
                with pytest.raises(HttpError):
                    await keys.import_key("bad", b"\1" * 7, "nonsense")
            finally:
                await keys.close()
            mgmt = ManagementClient(run / "mgmt" / "mgmt.sock")
            try:
                calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
                          {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}]]
                await mgmt.create_module(client_spec("cloudmod", calls, image=sys.executable))
                await mgmt.action("cloudmod", "start")
                seen = await logs_until(mgmt, "cloudmod", b"DONE")
                assert b'"status": 200' in seen, seen  # the module's SAS key was derived and used
            finally:
                await mgmt.close()
            module = hub.modules_of("edge-secrets")["cloudmod"]
            module_keys = [base64.b64decode(module.authentication["symmetricKey"][k])  # type: ignore[index]
                           for k in ("primaryKey", "secondaryKey")]
        finally:
            await loop.run_in_executor(None, stop_daemon, daemon)
    text = log.read_text(errors="replace")
    assert "DEBUG" in text, "the run was not at debug level"
    secrets = {"PIN": [PIN], "device SAS key": _encodings(device_key), "imported key": _encodings(imported),
               "exported derived key": _encodings(exported)}
    for i, k in enumerate(module_keys):
        secrets[f"module key {i}"] = _encodings(k)
    leaks = {name: [v for v in values if v and v in text] for name, values in secrets.items()}
    assert not any(leaks.values()), json.dumps(leaks)
    assert "PRIVATE KEY" not in text and "SharedAccessKey=" not in text and "sig=" not in text
