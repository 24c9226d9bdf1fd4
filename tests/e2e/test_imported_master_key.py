"""``imported_master_encryption_key``: an IoT Edge 1.1 device's master encryption key carried over, so what its
modules sealed with the 1.1 workload API still opens after the upgrade - for the module that sealed it only - and
nothing is sealed in that format again. The daemon is ``edgeward run``; the modules are containers on a real dockerd
calling the workload socket, as IoT Edge's module SDKs do."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edgeward.runtime.engine import ENGINE_LABEL
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.dockerd import Dockerd
from tests.fixtures.modules import module_results
from tests.integration.test_runtime_docker import container_spec

pytestmark = pytest.mark.asyncio(loop_scope="session")

DECRYPT = "/modules/{name}/genid/{genid}/decrypt?api-version=2019-01-30"
ENCRYPT = "/modules/{name}/genid/{genid}/encrypt?api-version=2019-01-30"
SECRET = b"sealed by IoT Edge 1.1: the historian's password"
IV = b"1.1-module-iv-0001"  # 1.1's API took any IV the module chose, used as the GCM nonce


def seal_like_iotedge_1_1(key: bytes, module: str, genid: str, iv: bytes, plaintext: bytes) -> bytes:
    """IoT Edge 1.1's workload encrypt, written from its documented layout (edgelet-hsm's encryption key, cipher
    version 1): AES-256-GCM under the master encryption key, the caller's IV as the nonce, the module id followed
    by its generation id as associated data; out: version 0x01 || 16-byte tag || ciphertext."""
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(f"{module}{genid}".encode())
    body = enc.update(plaintext) + enc.finalize()
    return b"\x01" + enc.tag + body


def seal_like_iotedge_1_5(key: bytes, module: str, genid: str, iv: bytes, plaintext: bytes) -> bytes:
    """IoT Edge 1.5's (aziot-keys' AEAD, version 2) under the same key: 0x02 || ciphertext || tag."""
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(f"{module}{genid}".encode())
    body = enc.update(plaintext) + enc.finalize()
    return b"\x02" + body + enc.tag


def opens_like_iotedge_1_1(key: bytes, module: str, genid: str, iv: bytes, ciphertext: bytes) -> bool:
    if ciphertext[:1] != b"\x01" or len(ciphertext) < 17:
        return False
    dec = Cipher(algorithms.AES(key), modes.GCM(iv, ciphertext[1:17])).decryptor()
    dec.authenticate_additional_data(f"{module}{genid}".encode())
    try:
        dec.update(ciphertext[17:])
        dec.finalize()
    except InvalidTag:
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decrypt_call(ciphertext: bytes, iv: bytes = IV) -> list[Any]:
    return ["POST", "workload", DECRYPT, {"ciphertext": _b64(ciphertext), "initializationVector": _b64(iv)}]


def opened(result: dict[str, Any]) -> bytes:
    assert result["status"] == 200, result
    return base64.b64decode(result["body"]["plaintext"])


def refused(result: dict[str, Any]) -> bool:
    return result["status"] == 400 and "does not decrypt" in result["body"]["message"]


async def run_module(mgmt: ManagementClient, engine: DockerEngine, name: str, calls: list[Any]) -> list[dict[str, Any]]:
    await mgmt.create_module(container_spec(name, calls))
    await mgmt.action(name, "start")
    return await module_results(engine, name, timeout=60)


async def test_workload_decrypt_opens_iotedge_1_1_ciphertexts_for_the_module_that_sealed_them(
        public_dir: Path, dockerd: Dockerd) -> None:
    key = secrets.token_bytes(32)  # the 1.1 device's enc_keys/edgelet-master*.enc.key: raw AES-256 key bytes
    key_file = public_dir / "edgelet-master.enc.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    config = public_dir / "config.toml"
    config.write_text(f'hostname = "edge-upgraded"\nimported_master_encryption_key = "{key_file}"\n'
                      f'[moby_runtime]\nuri = "{dockerd.uri}"\nnetwork = "none"\n'
                      '[edgeward.runtime]\nengine = "docker"\n')
    loop = asyncio.get_running_loop()
    proc: subprocess.Popen[bytes] = await loop.run_in_executor(None, start_daemon, [
        "run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(public_dir / "run")])
    mgmt = ManagementClient(public_dir / "run" / "mgmt" / "mgmt.sock")
    engine = DockerEngine(dockerd.uri)
    try:
        # The module identity the 1.1 device had (its generation is part of what sealed the secret).
        keeper = await mgmt._json("POST", "/identities", {"moduleId": "keeper"})
        genid = keeper["generationId"]
        v1 = seal_like_iotedge_1_1(key, "keeper", genid, IV, SECRET)
        v2 = seal_like_iotedge_1_5(key, "keeper", genid, IV, SECRET)

        own_v1, own_v2, wrong_iv, tampered, fresh = await run_module(mgmt, engine, "keeper", [
            decrypt_call(v1), decrypt_call(v2), decrypt_call(v1, b"another-iv-000001"),
            decrypt_call(v1[:20] + bytes([v1[20] ^ 1]) + v1[21:]),
            ["POST", "workload", ENCRYPT, {"plaintext": _b64(SECRET), "initializationVector": _b64(IV)}]])
        assert opened(own_v1) == SECRET
        assert opened(own_v2) == SECRET
        assert refused(wrong_iv), wrong_iv
        assert refused(tampered), tampered
        # Re-sealing never produces the old formats: nothing the 1.1 key (or IV reuse) can open.
        assert fresh["status"] == 200, fresh
        resealed = base64.b64decode(fresh["body"]["ciphertext"])
        assert resealed[0] not in (0x01, 0x02)
        assert not opens_like_iotedge_1_1(key, "keeper", genid, IV, resealed)

        # Another module, whatever it passes, opens nothing of the keeper's.
        (stolen,) = await run_module(mgmt, engine, "thief", [decrypt_call(v1)])
        assert refused(stolen), stolen
    finally:
        await mgmt.close()
        await engine.close()
        await loop.run_in_executor(None, stop_daemon, proc)
        ids = dockerd.cli("ps", "-aq", "--filter", f"label={ENGINE_LABEL}").stdout.split()
        if ids:
            dockerd.cli("rm", "-f", *ids, check=False)
