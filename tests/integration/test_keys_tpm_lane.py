"""The TPM backend's own thread (its serial lane) under concurrent load, through the keys API over a Unix socket on a
real swtpm: every signature verifies, errors map as on the pool, close stops the thread and leaves no TPM objects."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from tpm2_pytss import ESAPI, TPM2_CAP, TPM2_HC

from edgeward.http.errors import HttpError
from edgeward.keys.backends.fallback import SymmetricFallback
from edgeward.keys.backends.tpm import TpmBackend
from edgeward.keys.model import EcdsaDigest, RsaPss
from tests.fixtures.keys import KeysEnv, serve_keys
from tests.fixtures.swtpm import Swtpm

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed"),
]

DIGEST = hashlib.sha256(b"edgeward").digest()


def _tpm_config(tpm: Swtpm) -> dict[str, Any]:
    return {"edgeward": {"keys": {"backend": "tpm", "tpm_tcti": tpm.tcti}}}


def _backend(env: KeysEnv) -> TpmBackend:
    default = env.service.locator.default
    assert isinstance(default, SymmetricFallback) and isinstance(default.primary, TpmBackend)
    return default.primary


def _transient_handles(tcti: str) -> list[int]:
    with ESAPI(tcti) as ectx:
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 16)
        return [int(h) for h in data.data.handles]


def _tpm_threads(before: frozenset[threading.Thread] = frozenset()) -> list[threading.Thread]:
    """The TPM lane threads alive now, less ``before`` (a backend another test in this process left unclosed)."""
    return [t for t in threading.enumerate() if t.name == "edgeward-tpm" and t not in before]


async def _ec_key(env: KeysEnv, key_id: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    handle = await env.client.create_key_pair_if_not_exists(key_id, "ec-p256")
    info = _backend(env).key_pair_info(key_id)
    assert info is not None and isinstance(info.public_key, ec.EllipticCurvePublicKey)
    return handle, info.public_key


def _verify_ecdsa(public_key: ec.EllipticCurvePublicKey, signature: bytes) -> None:
    public_key.verify(signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


async def test_concurrent_signs_on_three_keys_all_verify_and_run_on_the_tpm_thread(
        request: pytest.FixtureRequest, fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    before = frozenset(_tpm_threads())
    async with serve_keys("tpm", request, tmp_path, _tpm_config(fresh_swtpm)) as env:
        keys = [await _ec_key(env, f"ec{i}") for i in range(3)]  # one more than the TPM backend keeps loaded
        rsa_handle = await env.client.create_key_pair_if_not_exists("rsa", "rsa-2048")
        rsa_info = _backend(env).key_pair_info("rsa")
        assert rsa_info is not None and isinstance(rsa_info.public_key, rsa.RSAPublicKey)
        ecdsa = [env.client.sign(keys[i % 3][0], EcdsaDigest(DIGEST)) for i in range(90)]
        pss = [env.client.sign(rsa_handle, RsaPss(b"firmware %d" % i)) for i in range(6)]
        signatures = await asyncio.gather(*ecdsa, *pss)
        for i, signature in enumerate(signatures[:90]):
            _verify_ecdsa(keys[i % 3][1], signature)
            with pytest.raises(InvalidSignature):
                _verify_ecdsa(keys[(i + 1) % 3][1], signature)  # signed by its own key, not any key
        for i, signature in enumerate(signatures[90:]):
            rsa_info.public_key.verify(signature, b"firmware %d" % i,
                                       padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        lane_thread = _backend(env).lane.thread
        assert lane_thread is not None and lane_thread.is_alive() and _tpm_threads(before) == [lane_thread]


async def test_errors_under_concurrency_map_as_on_the_pool(
        request: pytest.FixtureRequest, fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    async with serve_keys("tpm", request, tmp_path, _tpm_config(fresh_swtpm)) as env:
        good, public_key = await _ec_key(env, "good")
        gone, _ = await _ec_key(env, "gone")
        await env.client.sign(gone, EcdsaDigest(DIGEST))  # the service now knows its generation: no lookup
        _backend(env).delete_key_pair("gone")  # behind the service's back: only the backend can tell
        calls = []
        for _ in range(12):
            calls += [env.client.sign(good, EcdsaDigest(DIGEST)), env.client.sign(good, RsaPss(b"x")),
                      env.client.sign(gone, EcdsaDigest(DIGEST))]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for i in range(0, len(outcomes), 3):
            signature, wrong_scheme, missing = outcomes[i:i + 3]
            assert isinstance(signature, bytes)
            _verify_ecdsa(public_key, signature)
            # UnsupportedByBackend -> UnsupportedOperation (400), KeyMissing -> InvalidHandle (401), as the
            # service maps what its executor raises
            assert isinstance(wrong_scheme, HttpError) and wrong_scheme.status == 400
            assert "an EC key cannot sign with rsa-pss" in wrong_scheme.message
            assert isinstance(missing, HttpError) and missing.status == 401
            assert "no longer exists in its store" in missing.message
        assert isinstance(await env.client.sign(good, EcdsaDigest(DIGEST)), bytes)  # the lane goes on


async def test_close_under_load_stops_the_tpm_thread_and_leaves_no_objects_in_the_tpm(
        request: pytest.FixtureRequest, fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    before = frozenset(_tpm_threads())
    async with serve_keys("tpm", request, tmp_path, _tpm_config(fresh_swtpm)) as env:
        keys = [await _ec_key(env, f"ec{i}") for i in range(3)]
        backend = _backend(env)
        calls = [asyncio.ensure_future(env.client.sign(keys[i % 3][0], EcdsaDigest(DIGEST))) for i in range(48)]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)  # the TPM thread is at work
        lane_thread = backend.lane.thread
        assert lane_thread is not None
        await asyncio.to_thread(backend.close)  # as the daemon's stop does, with signatures in flight
        assert not lane_thread.is_alive() and backend.lane.thread is None and _tpm_threads(before) == []
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        signed = closed = 0
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, bytes):
                _verify_ecdsa(keys[i % 3][1], outcome)
                signed += 1
            else:  # queued when the backend closed: refused, never left waiting
                assert isinstance(outcome, HttpError) and outcome.status == 503, outcome
                assert "the TPM backend is closed" in outcome.message
                closed += 1
        assert signed >= 1 and signed + closed == len(calls)
        assert _transient_handles(fresh_swtpm.tcti) == []  # the cached keys were flushed
        await expect_closed(env, keys[0][0])
    assert _tpm_threads(before) == []


async def expect_closed(env: KeysEnv, handle: str) -> None:
    with pytest.raises(HttpError) as info:
        await env.client.sign(handle, EcdsaDigest(DIGEST))
    assert info.value.status == 503 and "the TPM backend is closed" in info.value.message
