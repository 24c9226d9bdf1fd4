"""AEAD-SALTED over the keys API (what the workload API's per-module encryption rests on): encryption under a
derived key the service never hands out, with nonces no caller can choose — on every key backend, through the real
HTTP API over a Unix socket."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeward.keys import aead
from edgeward.keys.model import Aead, AeadSalted, HmacSha256
from tests.fixtures.keys import KeysEnv
from tests.integration.test_keys_conformance import expect_status
from tests.integration.test_keys_wire import call

pytestmark = pytest.mark.asyncio(loop_scope="session")

IV = b"repeated-iv!"


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


async def test_salted_aead_never_repeats_a_keystream_whatever_the_iv(keys_env: KeysEnv) -> None:
    c = keys_env.client
    master = await c.create_key_if_not_exists(keys_env.new_id(), "derive")
    mine = await c.create_derived_key(master, b"module-a:gen-1")
    theirs = await c.create_derived_key(master, b"module-b:gen-1")
    secret = b"another module's secret, 40 bytes long."
    sealed = await c.encrypt(theirs, AeadSalted(IV, b""), secret)
    assert sealed[0] == aead.V3 and len(sealed) == 1 + aead.SALT_LENGTH + len(secret) + aead.TAG_LENGTH
    zeros = bytes(len(secret))
    for handle in (mine, theirs):  # another key, or the same key: the same IV yields an unrelated keystream
        keystream = await c.encrypt(handle, AeadSalted(IV, b""), zeros)
        assert secret not in xor(keystream, sealed)
    assert await c.decrypt(theirs, AeadSalted(IV, b""), sealed) == secret
    await expect_status(400, c.decrypt(mine, AeadSalted(IV, b""), sealed), "does not decrypt")
    await expect_status(400, c.decrypt(theirs, AeadSalted(b"other-iv-123", b""), sealed), "does not decrypt")
    await expect_status(400, c.decrypt(theirs, AeadSalted(IV, b"x"), sealed), "does not decrypt")
    tampered = sealed[:5] + bytes([sealed[5] ^ 1]) + sealed[6:]  # the salt is bound too
    await expect_status(400, c.decrypt(theirs, AeadSalted(IV, b""), tampered), "does not decrypt")
    # The salted and aziot formats are not interchangeable under one handle.
    await expect_status(400, c.decrypt(theirs, Aead(IV, b""), sealed), "unknown version 3")
    await expect_status(400, c.decrypt(theirs, AeadSalted(IV, b""), b"\x02" + sealed[1:]), "opens version 3 only")
    await expect_status(400, c.encrypt(master, AeadSalted(IV, b""), b"x"), "needs a derived key handle")


async def test_salted_aead_key_is_never_handed_out(software_keys: KeysEnv) -> None:
    """The key is HMAC(base, reserved prefix || derivation data): every route that returns an HMAC of the base key
    refuses that prefix, so a holder of the base key's handle still cannot obtain it."""
    c = software_keys.client
    base = secrets.token_bytes(32)
    master = await c.import_key(software_keys.new_id(), base, "derive,sign")
    derivation = b"module-b:gen-1"
    handle = await c.create_derived_key(master, derivation)
    sealed = await c.encrypt(handle, AeadSalted(IV, b"hdr"), b"sealed by the service")
    key = hmac.new(base, aead.salted_key_input(derivation), hashlib.sha256).digest()
    assert aead.open_salted(key, IV, b"hdr", sealed) == b"sealed by the service"  # the documented construction

    assert await c.export_derived_key(handle) != key
    reserved = aead.salted_key_input(derivation)
    await expect_status(400, c.sign(master, HmacSha256(reserved)), "reserved")
    await expect_status(400, c.create_derived_key(master, reserved), "reserved")
    # ...nor through the aziot AEAD algorithm, whose keystream under a derived handle is that handle's exported key's.
    legacy = await c.encrypt(handle, Aead(IV, b""), bytes(21))
    assert legacy[1:-16] != AESGCM(key).encrypt(IV, bytes(21), b"")[:-16]


async def test_salted_aead_is_edgewards_api_version_only(software_keys: KeysEnv) -> None:
    env = software_keys
    master = await env.client.create_key_if_not_exists(env.new_id(), "derive")
    handle = await env.client.create_derived_key(master, b"d")
    params = {"iv": base64.b64encode(IV).decode(), "aad": ""}
    body = {"keyHandle": handle, "algorithm": "AEAD-SALTED", "parameters": params, "plaintext": "c2VjcmV0"}
    status, answer = await call(env, "POST", "/encrypt", body, "2021-05-01")
    assert status == 422 and "unknown algorithm" in answer["message"], answer  # aziot: a serde error
    status, answer = await call(env, "POST", "/encrypt", body, "2026-11-01")
    assert status == 200 and set(answer) == {"ciphertext"}
    status, answer = await call(env, "POST", "/decrypt", {**body, "ciphertext": answer["ciphertext"]}, "2026-11-01")
    assert (status, answer) == (200, {"plaintext": "c2VjcmV0"})
