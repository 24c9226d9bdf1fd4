"""The per-caller limiter every request passes: running slots, a bounded queue, 429 beyond it, nothing kept for a
caller with nothing in flight (a key per caller ever seen would grow with use)."""

from __future__ import annotations

import asyncio

import pytest

from edgeward.http.errors import TooManyRequests
from edgeward.http.limits import CallerLimiter


async def test_running_queued_refused_and_forgotten() -> None:
    limiter = CallerLimiter(max_in_flight=2, max_waiting=1)
    await limiter.enter("a")
    await limiter.enter("a")
    assert limiter.in_flight("a") == 2
    queued = asyncio.create_task(limiter.enter("a"))
    await asyncio.sleep(0)
    assert not queued.done()
    with pytest.raises(TooManyRequests):
        await limiter.enter("a")
    await limiter.enter("b")  # another caller is not held up by a's queue
    limiter.leave("b")
    limiter.leave("a")
    await queued
    assert limiter.in_flight("a") == 2
    limiter.leave("a")
    limiter.leave("a")
    assert limiter.in_flight("a") == 0 and limiter._slots == {}


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    limiter = CallerLimiter(max_in_flight=1, max_waiting=4)
    await limiter.enter("a")
    waiter = asyncio.create_task(limiter.enter("a"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.leave("a")
    assert limiter._slots == {}
    async with limiter.hold("a"):
        assert limiter.in_flight("a") == 1
    assert limiter._slots == {}
