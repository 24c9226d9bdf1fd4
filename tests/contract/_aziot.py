"""Shared helpers of the aziot contract tests: one `edgeward run` daemon (keyd, certd, identityd on their real
sockets, manually provisioned against the IoT Hub emulator) and a raw client that sends exactly the bytes an aziot
client crate sends, so status codes and bodies are checked as the crate would see them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tempfile
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from yarl import URL

from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.hub_emulator import HubEmulator

__all__ = ["PRINCIPALS", "Device", "call", "device"]

# uid -> (name, idtype); a principal without idtype is a daemon (allowed every API, as aziot's docs say).
PRINCIPALS: dict[int, tuple[str, list[str] | None]] = {
    3101: ("agent-a", ["module"]),
    3102: ("agent-b", ["module"]),
    3103: ("local-a", ["local"]),
    3104: ("local-b", ["local"]),
    3105: ("device-agent", ["device"]),
    3106: ("both-a", ["module", "local"]),
    3107: ("dev-mod", ["device", "module"]),
}


@dataclass
class Device:
    run: Path
    hub: HubEmulator
    device_id: str

    @property
    def certd(self) -> Path:
        return self.run / "certd.sock"

    @property
    def identityd(self) -> Path:
        return self.run / "identityd.sock"

    @property
    def keyd(self) -> Path:
        return self.run / "keyd.sock"


def _principals() -> str:
    out = []
    for uid, (name, idtype) in PRINCIPALS.items():
        out.append(f'[[principal]]\nuid = {uid}\nname = "{name}"')
        if idtype is not None:
            out.append(f"idtype = {json.dumps(idtype)}")
    return "\n".join(out)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def device() -> AsyncIterator[Device]:
    public_dir = Path(tempfile.mkdtemp(prefix="edgeward-contract-"))
    os.chmod(public_dir, 0o755)  # principals' clients run as other uids and must reach the sockets
    try:
        async with _device(public_dir) as dev:
            yield dev
    finally:
        shutil.rmtree(public_dir, ignore_errors=True)


@asynccontextmanager
async def _device(public_dir: Path) -> AsyncIterator[Device]:
    async with HubEmulator() as hub:
        key = hub.add_device("contract-1")
        (public_dir / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = public_dir / "config.toml"
        config.write_text(textwrap.dedent(f"""
            hostname = "contract"
            [provisioning]
            source = "manual"
            connection_string = "HostName={hub.hostname};DeviceId=contract-1;SharedAccessKey={base64.b64encode(key).decode()}"

            [edgeward.identity]
            cloud_trust_bundle = "file://{public_dir / 'hub-ca.pem'}"

            [localid]
            domain_name = "local.test"

            [cert_issuance.local_ca]
            cert = "contract-ca"
            pk = "contract-ca"

            [cert_issuance.contract-server]
            method = "local_ca"
        """) + _principals() + "\n")
        run = public_dir / "run"
        loop = asyncio.get_running_loop()
        daemon = await loop.run_in_executor(None, start_daemon, [
            "run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(run)])
        try:
            yield Device(run, hub, "contract-1")
        finally:
            await loop.run_in_executor(None, stop_daemon, daemon)


async def call(sock: Path, method: str, path: str, body: Mapping[str, Any] | None = None, *,
               raw: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """One request as host root; the JSON body of the answer (None when empty). ``path`` is sent verbatim."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = dict(headers or ({"Content-Type": "application/json"} if data is not None else {}))
    async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
                session.request(method, URL(f"http://aziot{path}", encoded=True),
                                data=data, headers=hdrs) as resp):
        text = await resp.read()
        return resp.status, (json.loads(text) if text else None)
