"""The device lock of PKCS#11 libraries and TPM contexts: short operations go ahead of waiting key generations, but a
generation is never shut out for good."""

from __future__ import annotations

import threading
import time

import pytest

from edgeward.executor import PriorityLock


def _until_waiting(lock: PriorityLock, urgent: int, bulk: int) -> None:
    """The lock has no event for "a thread now waits"; its counters say it (bounded poll)."""
    deadline = time.monotonic() + 10
    while lock.waiting() != (urgent, bulk):
        assert time.monotonic() < deadline, lock.waiting()
        time.sleep(0.001)


def _taker(lock: PriorityLock, name: str, order: list[str], bulk: bool = False) -> threading.Thread:
    def run() -> None:
        lock.acquire(bulk=bulk)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_urgent_acquirer_goes_ahead_of_a_bulk_one_that_waited_longer() -> None:
    lock, order = PriorityLock(), []
    lock.acquire()
    threads = [_taker(lock, "generation", order, bulk=True)]
    _until_waiting(lock, 0, 1)
    threads.append(_taker(lock, "sign", order))
    _until_waiting(lock, 1, 1)
    lock.release()
    for t in threads:
        t.join()
    assert order == ["sign", "generation"]


def test_a_bulk_acquirer_goes_next_once_patience_urgent_ones_passed_it() -> None:
    lock, order = PriorityLock(patience=2), []
    with lock:
        threads = [_taker(lock, "generation", order, bulk=True)]
        _until_waiting(lock, 0, 1)
        for i in range(3):
            threads.append(_taker(lock, f"sign{i}", order))
            _until_waiting(lock, i + 1, 1)
    for t in threads:
        t.join()
    assert order.index("generation") == 2, order


def test_without_waiting() -> None:
    lock = PriorityLock()
    assert lock.acquire(blocking=False)
    assert lock.locked() and not lock.acquire(blocking=False) and not lock.acquire(blocking=False, bulk=True)
    assert lock.waiting() == (0, 0)
    lock.release()
    with lock.bulk():
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
