"""Per-id locks: exclusive per id, concurrent across ids, and nothing kept for an id no one holds (the keys service
and the runtime used to keep a lock for every key id and module name ever seen)."""

from __future__ import annotations

import asyncio

import pytest

from edgeward.keyedlocks import KeyedLocks

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_one_holder_per_id_others_run_and_nothing_is_kept() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    both = asyncio.Event()

    async def worker(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            if inside["a"] and inside["b"]:
                both.set()
            await asyncio.sleep(0.001)
            inside[key] -= 1

    await asyncio.gather(*(worker(k) for k in "ab" * 20))
    assert most == {"a": 1, "b": 1}  # exclusive per id
    assert both.is_set()  # "a" and "b" were held at once
    assert len(locks) == 0


async def test_a_failed_or_cancelled_holder_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("x"):
            raise RuntimeError("boom")
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("y"):
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0)
    assert len(locks) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await first
    assert len(locks) == 0
