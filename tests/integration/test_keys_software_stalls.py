"""A keys principal's own software keys must not stall everyone else's key calls.

Two attacks (brk13a a08, a03). Two principals generating RSA key pairs back to back took both of the keys executor's
threads, so root's key lookups waited for a generation (p50 0.5 -> 290 ms). A principal looping on RSA-PKCS1 or
RSA-NO-PADDING "encrypt" (a private-key operation) with its own RSA-4096 key ran pure-Python pow(m, d, n) holding the
interpreter for ~130 ms per call, from as many connections as it liked: every service of the process stalled
(root p50 1 -> 520 ms).
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeward.http.peercred import Caller
from edgeward.keys.api import KeysApi
from edgeward.keys.model import RsaNoPadding, RsaPkcs1, RsaPss
from tests.fixtures.keys import KeysEnv, serve_keys

PRINCIPALS = {"principal": [{"uid": 1000, "keys": ["one-*"]}, {"uid": 1001, "keys": ["two-*"]}]}
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
BOUND = 10.0  # seconds: a bound on a call that must not wait, not a wait


def _as(env: KeysEnv, uid: int) -> KeysApi:
    return env.service.for_caller(Caller(pid=1, uid=uid, gid=uid))


class Held:
    """Wraps a backend method: every call waits (on its executor thread) until released; counts calls inside."""

    def __init__(self, loop: asyncio.AbstractEventLoop, original: Callable[..., Any], entered_wanted: int) -> None:
        self.release = threading.Event()
        self.entered = asyncio.Event()
        self.inside = 0
        self.most_inside = 0
        self._loop = loop
        self._original = original
        self._wanted = entered_wanted
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside >= self._wanted:
                self._loop.call_soon_threadsafe(self.entered.set)
        try:
            self.release.wait(60)
            return self._original(*args)
        finally:
            with self._lock:
                self.inside -= 1


async def test_two_principals_generating_key_pairs_leave_short_calls_their_threads(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Both principals' generations are held running; root's lookups, signatures and symmetric keys still go."""
    async with serve_keys("software", request, tmp_path, PRINCIPALS) as env:
        root = _as(env, 0)
        await root.create_key_pair_if_not_exists("victim-rsa", "rsa-2048")
        backend = env.service.locator.default
        held = Held(asyncio.get_running_loop(), backend.create_key_pair, entered_wanted=2)
        backend.create_key_pair = held  # type: ignore[method-assign]
        generations = [asyncio.create_task(_as(env, uid).create_key_pair_if_not_exists(f"{prefix}-gen", "rsa-2048"))
                       for uid, prefix in ((1000, "one"), (1001, "two"))]
        try:
            await asyncio.wait_for(held.entered.wait(), BOUND)
            async with asyncio.timeout(BOUND):  # before the fix: both executor threads held, root waits forever
                handle = await root.load_key_pair("victim-rsa")
                await root.sign(handle, RsaPss(hashlib.sha256(b"m").digest(), prehashed=True))
                await root.encrypt(handle, RsaPkcs1(), SHA256_DIGEST_INFO + hashlib.sha256(b"m").digest())
                await root.create_key_if_not_exists("victim-sas", "sign")
        finally:
            held.release.set()
            await asyncio.gather(*generations)
        assert held.most_inside == 2


async def test_queued_raw_rsa_calls_take_one_executor_thread(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A principal's raw RSA calls from four connections: one runs, the others wait without an executor thread, so
    root's calls still find one."""
    async with serve_keys("software", request, tmp_path, PRINCIPALS) as env:
        root, attacker = _as(env, 0), _as(env, 1000)
        victim = await root.create_key_pair_if_not_exists("victim-rsa", "rsa-2048")
        own = await attacker.create_key_pair_if_not_exists("one-rsa", "rsa-2048")
        backend = env.service.locator.default
        held = Held(asyncio.get_running_loop(), backend.rsa_private_encrypt, entered_wanted=1)
        backend.rsa_private_encrypt = held  # type: ignore[method-assign]
        raw = [asyncio.create_task(attacker.encrypt(own, RsaNoPadding(), b"\x01" * 256)) for _ in range(2)]
        raw += [asyncio.create_task(attacker.encrypt(own, RsaPkcs1(), b"x" * 32)) for _ in range(2)]
        try:
            await asyncio.wait_for(held.entered.wait(), BOUND)
            async with asyncio.timeout(BOUND):  # before the fix: both executor threads held by raw calls
                await root.load_key_pair("victim-rsa")
                await root.sign(victim, RsaPss(hashlib.sha256(b"m").digest(), prehashed=True))
            assert held.most_inside == 1
        finally:
            held.release.set()
            results = await asyncio.gather(*raw)
        assert all(len(r) == 256 for r in results)
        assert held.most_inside == 1


async def _loop_gaps(done: asyncio.Event) -> list[float]:
    """How late a 1 ms sleep wakes, over and over, until ``done``: the event loop's stalls."""
    gaps = []
    while not done.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        gaps.append(time.perf_counter() - start)
    return gaps


async def test_raw_rsa_4096_calls_do_not_stall_the_event_loop(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """RSA-NO-PADDING and RSA-PKCS1 of arbitrary bytes from four connections with an RSA-4096 key: the event loop
    (every service's) keeps running. Before the fix each call held the interpreter for its whole exponentiation, so
    the loop's typical stall was about one call's time; now it is a small part of it."""
    async with serve_keys("software", request, tmp_path, PRINCIPALS) as env:
        attacker = _as(env, 1000)
        own = await attacker.create_key_pair_if_not_exists("one-rsa4096", "rsa-4096")
        block = b"\x01" * 512
        start = time.perf_counter()
        for _ in range(3):
            await attacker.encrypt(own, RsaNoPadding(), block)
        one_call = (time.perf_counter() - start) / 3

        async def loop_of_calls(mechanism: Any, data: bytes) -> None:
            for _ in range(3):
                await attacker.encrypt(own, mechanism, data)

        done = asyncio.Event()
        probe = asyncio.create_task(_loop_gaps(done))
        try:
            await asyncio.gather(*(loop_of_calls(RsaNoPadding(), block) for _ in range(2)),
                                 *(loop_of_calls(RsaPkcs1(), b"x" * 32) for _ in range(2)))
        finally:
            done.set()
            gaps = sorted(await probe)
        median, p90 = statistics.median(gaps), gaps[int(len(gaps) * 0.9)]
        # A thread that wants the interpreter gets it within the switch interval (5 ms): the floor of any stall while
        # another thread computes. Before the fix the median stall was one whole call (133 ms here, 45 ms after).
        bound = max(one_call / 3, 4 * sys.getswitchinterval())
        assert median < bound and p90 < bound, (
            f"loop stalls median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms ({len(gaps)} samples); "
            f"one call {one_call * 1000:.1f} ms")
