"""Key generation on a device that runs one call at a time (SoftHSM2 through PKCS#11, a TPM) must not stall everyone
else's signatures: two keys principals create RSA key pairs back to back from several connections each while root
signs, and no signature waits for more than the one generation already running. Before the fix a signature queued
behind every generation ahead of it (the executor's threads, then the device's first-come lock)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeward.http.peercred import Caller
from edgeward.keys.api import KeysApi
from edgeward.keys.backends.fallback import SymmetricFallback
from edgeward.keys.model import EcdsaDigest, HmacSha256, KeyPairAlgorithm, KeyPairInfo
from tests.fixtures.keys import KeysEnv, serve_keys

pytestmark = pytest.mark.skipif(shutil.which("swtpm") is None or shutil.which("softhsm2-util") is None,
                                reason="needs swtpm and SoftHSM2")

PRINCIPALS = {"principal": [{"uid": 1000, "keys": ["dev1-*"]}, {"uid": 1001, "keys": ["dev2-*"]}]}
CONNECTIONS_PER_UID = 3
GENERATIONS = 6  # completed by the flood before the probe stops
FLOOD_SECONDS = 60.0  # a bound, not a wait: the flood stops once GENERATIONS completed


class GenerationLog:
    """Wraps a backend's create_key_pair: when each generation finished, and how many ran at once per principal."""

    def __init__(self, backend: Any) -> None:
        self.finished: list[float] = []
        self.running: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self._lock = threading.Lock()
        original: Callable[[str, KeyPairAlgorithm], KeyPairInfo] = backend.create_key_pair

        def timed(ref: str, algorithm: KeyPairAlgorithm) -> KeyPairInfo:
            who = ref.split("-", 1)[0]
            with self._lock:
                self.running[who] = self.running.get(who, 0) + 1
                self.most_at_once[who] = max(self.most_at_once.get(who, 0), self.running[who])
            try:
                return original(ref, algorithm)
            finally:
                with self._lock:
                    self.running[who] -= 1
                    self.finished.append(time.monotonic())

        backend.create_key_pair = timed

    def finished_within(self, start: float, end: float) -> int:
        with self._lock:
            return sum(start < t < end for t in self.finished)


def _primary(env: KeysEnv) -> Any:
    default = env.service.locator.default
    assert isinstance(default, SymmetricFallback)
    return default.primary


def _as(env: KeysEnv, uid: int) -> KeysApi:
    return env.service.for_caller(Caller(pid=1, uid=uid, gid=uid))


async def _flood(api: KeysApi, prefix: str, log: GenerationLog, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        await api.create_key_pair_if_not_exists(f"{prefix}-{id(asyncio.current_task())}-{n}", "rsa-2048")
        if len(log.finished) >= GENERATIONS:
            stop.set()


async def _probe(sign: Callable[[], Any], log: GenerationLog, stop: asyncio.Event) -> list[tuple[float, int]]:
    """Sign back to back until the flood stops: each signature's latency and the generations that finished meanwhile."""
    seen = []
    while not stop.is_set():
        start = time.monotonic()
        await sign()
        end = time.monotonic()
        seen.append((end - start, log.finished_within(start, end)))
        await asyncio.sleep(0.01)
    return seen


@pytest.mark.parametrize("kind", ["pkcs11", "tpm"])
async def test_a_sign_waits_for_at_most_the_generation_already_running(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "tpm":
        tpm = request.getfixturevalue("fresh_swtpm")
        extra: dict[str, Any] = {"edgeward": {"keys": {"backend": "tpm", "tpm_tcti": tpm.tcti}}}
    else:
        extra = {}
    async with serve_keys(kind, request, tmp_path, PRINCIPALS | extra) as env:
        root = _as(env, 0)
        if kind == "tpm":  # the device SAS key: identityd's HMAC in the TPM
            handle = await root.create_key_if_not_exists("victim-sas", "sign")
            mechanism: Any = HmacSha256(b"sr\n1234")
        else:  # a workload's ECDSA signature with a token key
            handle = await root.create_key_pair_if_not_exists(f"victim-{id(env)}", "ec-p256")
            mechanism = EcdsaDigest(hashlib.sha256(b"edgeward").digest())
        for _ in range(3):
            await root.sign(handle, mechanism)
        log = GenerationLog(_primary(env))
        stop = asyncio.Event()
        floods = [asyncio.create_task(_flood(_as(env, uid), prefix, log, stop))
                  for uid, prefix in ((1000, "dev1"), (1001, "dev2")) for _ in range(CONNECTIONS_PER_UID)]
        try:
            seen = await asyncio.wait_for(_probe(lambda: root.sign(handle, mechanism), log, stop), FLOOD_SECONDS)
        finally:
            stop.set()
            await asyncio.gather(*floods, return_exceptions=True)
        worst = max(seen)
        passed_by = max(n for _, n in seen)
        assert passed_by <= 1, (f"a signature waited while {passed_by} generations finished ({worst[0] * 1000:.0f} "
                                f"ms); {len(seen)} signatures during {len(log.finished)} generations")
        assert log.most_at_once == {"dev1": 1, "dev2": 1}, log.most_at_once
