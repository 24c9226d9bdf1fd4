"""Serial lanes of the blocking executor: one thread, calls in order, bounded, batched hand-back, clean stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from edgeward.executor import BlockingExecutor, LaneClosed, SerialLane


class Device:
    """Stands in for a backend whose hot method the executor routes to a lane."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.order: list[int] = []

    def op(self, i: int) -> int:
        self.threads.append(threading.current_thread())
        self.order.append(i)
        return i * 2

    def other(self) -> threading.Thread:
        return threading.current_thread()

    def fail(self, message: str) -> None:
        raise KeyError(message)


def _count_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """How often anyone called the loop from another thread (patched on this loop only)."""
    calls = [0]
    original: Callable[..., Any] = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return calls


async def test_routed_calls_run_in_order_on_the_lane_thread_and_others_on_the_pool() -> None:
    device, lane = Device(), SerialLane("test-lane")
    executor = BlockingExecutor(2, lanes={device.op: lane})
    try:
        results = await asyncio.gather(*(executor.run(device.op, i) for i in range(50)))
        assert results == [i * 2 for i in range(50)]
        assert device.order == list(range(50))
        assert set(device.threads) == {lane.thread}
        other = await executor.run(device.other)
        assert other is not lane.thread and other is not threading.current_thread()
        # another object's method of the same class is not routed
        stranger = Device()
        await executor.run(stranger.op, 1)
        assert stranger.threads[0] is not lane.thread
    finally:
        lane.close()
        executor.shutdown()


async def test_an_exception_reaches_the_caller_as_raised() -> None:
    device, lane = Device(), SerialLane("test-lane")
    executor = BlockingExecutor(1, lanes={device.fail: lane})
    try:
        with pytest.raises(KeyError, match="gone"):
            await executor.run(device.fail, "gone")
        assert await lane.submit(device.op, 3) == 6  # the lane goes on after a failure  # type: ignore[misc]
    finally:
        lane.close()
        executor.shutdown()


async def test_a_full_lane_sends_calls_to_the_pool_instead_of_waiting_or_growing() -> None:
    gate = threading.Event()
    device, lane = Device(), SerialLane("test-lane", bound=2)
    executor = BlockingExecutor(1, lanes={device.op: lane})
    blocker = lane.submit(gate.wait)
    assert blocker is not None
    try:
        queued = asyncio.ensure_future(executor.run(device.op, 1))
        await asyncio.sleep(0)  # let it reach the lane
        assert lane.submit(device.op, 2) is None  # two in flight: full
        assert await executor.run(device.op, 3) == 6  # the pool ran it while the lane was full
        assert device.threads[-1] is not lane.thread
        gate.set()
        assert await queued == 2
        assert device.threads[-1] is lane.thread
        await blocker
    finally:
        gate.set()
        lane.close()
        executor.shutdown()


async def test_results_that_finish_together_reach_the_loop_in_one_wakeup() -> None:
    loop = asyncio.get_running_loop()
    lane = SerialLane("test-lane")
    gate, last_done = threading.Event(), threading.Event()
    try:
        first = lane.submit(gate.wait)
        assert first is not None
        futures = [lane.submit(lambda i=i: i) for i in range(19)]
        futures.append(lane.submit(last_done.set))
        wakeups = _count_wakeups(loop)
        gate.set()
        last_done.wait(10)  # the loop stays busy (blocked here) while all twenty-one calls finish
        await asyncio.gather(first, *futures)  # type: ignore[arg-type]
        assert wakeups[0] == 1
        assert [f.result() for f in futures[:-1]] == list(range(19))  # type: ignore[union-attr]
    finally:
        gate.set()
        lane.close()


async def test_close_fails_queued_calls_lets_the_running_one_finish_and_stops_the_thread() -> None:
    gate = threading.Event()
    lane = SerialLane("test-lane", closed_error=lambda: LaneClosed("the device is closed"))
    running = lane.submit(lambda: gate.wait() and "finished")
    queued = [lane.submit(lambda: "ran") for _ in range(5)]
    thread = lane.thread
    assert thread is not None and thread.is_alive()
    closing = asyncio.ensure_future(asyncio.to_thread(lane.close))
    for future in queued:
        with pytest.raises(LaneClosed, match="the device is closed"):
            await future  # type: ignore[misc]
    assert not closing.done()  # still waiting for the running call
    gate.set()
    await closing
    assert await running == "finished"  # type: ignore[misc]
    assert not thread.is_alive() and lane.thread is None
    assert "test-lane" not in {t.name for t in threading.enumerate()}
    after = lane.submit(lambda: "never")
    assert after is not None
    with pytest.raises(LaneClosed):
        await after
    lane.close()  # idempotent


async def test_a_call_cancelled_while_queued_is_skipped() -> None:
    gate = threading.Event()
    device, lane = Device(), SerialLane("test-lane")
    try:
        running = lane.submit(gate.wait)
        skipped = lane.submit(device.op, 1)
        assert running is not None and skipped is not None
        skipped.cancel()
        after = lane.submit(device.op, 2)
        gate.set()
        assert await after == 4  # type: ignore[misc]
        assert device.order == [2]
        await running
    finally:
        gate.set()
        lane.close()


def test_a_lane_never_used_starts_no_thread_and_closes() -> None:
    before = set(threading.enumerate())
    lane = SerialLane("test-lane")
    lane.close()
    assert set(threading.enumerate()) == before


async def test_close_does_not_wait_forever_for_a_device_stuck_in_a_call(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A TPM that never answers must not hold up the daemon's stop: close gives up after JOIN_SECONDS (the thread
    is a daemon thread) and says so."""
    from edgeward import executor

    monkeypatch.setattr(executor, "JOIN_SECONDS", 0.1)
    lane = SerialLane("stuck")
    release, entered = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(30)

    future = lane.submit(stuck)
    assert future is not None
    await asyncio.to_thread(entered.wait, 5)
    try:
        await asyncio.wait_for(asyncio.to_thread(lane.close), 5)
        assert "a call still runs after 0.1 s" in caplog.text
    finally:
        release.set()


async def test_bulk_calls_never_take_the_threads_short_calls_need() -> None:
    """Key generations (bulk) holding every bulk thread leave the main pool to short calls, and the other way round."""
    executor = BlockingExecutor(2, bulk_workers=2)
    release = threading.Event()
    try:
        held = [asyncio.ensure_future(executor.run_bulk(release.wait, 30)) for _ in range(3)]
        short = await asyncio.wait_for(executor.run(threading.current_thread), 10)
        assert short.name.startswith("edgeward-blocking_")
        assert not any(f.done() for f in held)
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*held), 10) == [True] * 3
        bulk = await executor.run_bulk(threading.current_thread)
        assert bulk.name.startswith("edgeward-blocking-bulk_")
    finally:
        release.set()
        executor.shutdown()
