"""Workload encrypt/decrypt under attack, with modules as real containers on dockerd: a module must learn nothing
about another module's (or its own earlier generation's) ciphertexts, whatever initialization vector it passes,
and ciphertexts of the earlier single-key format open only for the module that sealed them."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from edgeward.keys.model import Aead
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import Dockerd
from tests.fixtures.modules import module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime
from tests.integration.test_runtime_docker import container_spec

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENCRYPT = "/modules/{name}/genid/{genid}/encrypt?api-version=2019-01-30"
DECRYPT = "/modules/{name}/genid/{genid}/decrypt?api-version=2019-01-30"
SECRET = b"the victim's database password: 7f3a9c21e8"
IV = b"same-iv-1234"  # what a careless (or hostile) module passes every time
LEGACY_KEY_ID = "edgeward-workload-encryption"  # the one AES key every module's data was sealed under before


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encrypt_call(plaintext: bytes, iv: bytes = IV) -> list[Any]:
    return ["POST", "workload", ENCRYPT, {"plaintext": _b64(plaintext), "initializationVector": _b64(iv)}]


def decrypt_call(ciphertext: bytes, iv: bytes = IV) -> list[Any]:
    return ["POST", "workload", DECRYPT, {"ciphertext": _b64(ciphertext), "initializationVector": _b64(iv)}]


def ciphertext_of(result: dict[str, Any]) -> bytes:
    assert result["status"] == 200, result
    return base64.b64decode(result["body"]["ciphertext"])


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def assert_refused(result: dict[str, Any]) -> None:
    assert result["status"] == 400, result
    assert "does not decrypt" in result["body"]["message"], result


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rt(request: pytest.FixtureRequest, dockerd: Dockerd) -> AsyncIterator[RuntimeEnv]:
    base = Path(tempfile.mkdtemp(prefix="edgeward-wlcrypto-"))
    os.chmod(base, 0o755)
    doc = {"hostname": "edge-crypto", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    try:
        async with serve_runtime(request, base, DockerEngine(dockerd.uri), doc) as env:
            try:
                yield env
            finally:
                for m in await env.parts.engine.list():
                    await env.parts.engine.remove(m.name)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def run_module(rt: RuntimeEnv, mgmt: ManagementClient, name: str, calls: list[Any]) -> list[dict[str, Any]]:
    await mgmt.create_module(container_spec(name, calls))
    await mgmt.action(name, "start")
    return await module_results(rt.parts.engine, name, timeout=60)


async def test_workload_encrypt_keystream_of_another_module_recovers_nothing(rt: RuntimeEnv,
                                                                            mgmt: ManagementClient) -> None:
    zeros = bytes(len(SECRET))
    victim = await run_module(rt, mgmt, "victim", [encrypt_call(SECRET), encrypt_call(zeros), encrypt_call(SECRET)])
    sealed, own_zeros, sealed_again = (ciphertext_of(r) for r in victim)

    # The attacker encrypts zeros with the victim's IV and XORs: with one key and the IV as the nonce, that was
    # the victim's plaintext.
    zeros_result, stolen, unknown, empty = await run_module(
        rt, mgmt, "attacker", [encrypt_call(zeros), decrypt_call(sealed), decrypt_call(b"\x07" + sealed[1:]),
                               decrypt_call(b"")])
    assert SECRET not in xor(ciphertext_of(zeros_result), sealed)
    assert_refused(stolen)
    assert_refused(unknown)
    assert_refused(empty)

    # The same module repeating an IV repeats no (key, nonce) pair either.
    assert SECRET not in xor(own_zeros, sealed)
    assert sealed != sealed_again

    # The victim still opens its own ciphertexts (the module is replaced, its generation kept).
    await mgmt.update_module("victim", container_spec("victim", [decrypt_call(sealed), decrypt_call(sealed_again),
                                                                 decrypt_call(sealed, b"another-iv-0")]))
    await mgmt.action("victim", "start")
    opened, opened_again, wrong_iv = await module_results(rt.parts.engine, "victim", timeout=60)
    assert opened["status"] == 200 and base64.b64decode(opened["body"]["plaintext"]) == SECRET, opened
    assert base64.b64decode(opened_again["body"]["plaintext"]) == SECRET
    assert_refused(wrong_iv)  # the IV stays bound to the ciphertext, as IoT Edge's callers expect


async def test_workload_encrypt_generations_of_one_module_do_not_share_a_keystream(rt: RuntimeEnv,
                                                                                  mgmt: ManagementClient) -> None:
    (first,) = await run_module(rt, mgmt, "rotor", [encrypt_call(SECRET)])
    old = rt.parts.registry.get("rotor")
    assert old is not None
    sealed = ciphertext_of(first)
    # The module is removed and its identity deleted (as the edge agent does when a deployment drops it); the
    # module deployed again under the same name is a new generation.
    await mgmt.delete_module("rotor")
    await rt.parts.identities.delete("rotor")
    zeros_result, stolen = await run_module(rt, mgmt, "rotor", [encrypt_call(bytes(len(SECRET))),
                                                                decrypt_call(sealed)])
    new = rt.parts.registry.get("rotor")
    assert new is not None and new.generation_id != old.generation_id
    assert SECRET not in xor(ciphertext_of(zeros_result), sealed)
    assert_refused(stolen)


async def test_workload_legacy_ciphertexts_open_only_for_their_module_and_are_never_produced(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    keeper = await rt.parts.identities.ensure("keeper")
    # A ciphertext as Edgeward sealed it before: one AES key for every module, the caller's IV as the GCM nonce,
    # module name and generation concatenated as the associated data.
    keys = rt.certs_env.keys
    legacy_key = await keys.create_key_if_not_exists(LEGACY_KEY_ID, "encrypt")
    legacy = await keys.encrypt(legacy_key, Aead(IV, f"keeper{keeper.generation_id}".encode()), SECRET)
    assert legacy[0] == 0x02

    opened, fresh = await run_module(rt, mgmt, "keeper", [decrypt_call(legacy), encrypt_call(SECRET)])
    assert opened["status"] == 200 and base64.b64decode(opened["body"]["plaintext"]) == SECRET, opened
    assert ciphertext_of(fresh)[0] not in (0x01, 0x02)  # re-sealing yields the new format, never the old one

    (stolen,) = await run_module(rt, mgmt, "thief", [decrypt_call(legacy)])
    assert_refused(stolen)
