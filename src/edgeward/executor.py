"""The one place blocking work (HSM, TPM, disk crypto) leaves the event loop, with one clear concurrency limit.

Why serial lanes: a device that runs one command at a time behind one lock (a TPM's ESYS context) gains nothing
from a pool of threads. Every pool thread that picks up one of its calls only queues on the lock, and each hand-off
(pool queue, lock, GIL, one wake-up of the loop per call) is time the device sits idle between two commands. A
:class:`SerialLane` is one thread that takes the device's calls from a bounded queue back to back and hands results
to the loop in batches (one wake-up for whatever finished since the loop last looked), so the device's own time is
the bound. Which calls take a lane is decided where the service is built (``BlockingExecutor(lanes=...)``); every
other call, and any call that finds its lane full, takes the pool as before.

Why a :class:`PriorityLock` for such a device: one key generation on it (an RSA key pair on a PKCS#11 token or a TPM)
takes hundreds of milliseconds to seconds, a signature milliseconds. Under a first-come lock a signature waits for
every generation queued before it; under this one it waits at most for the generation already running.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, ParamSpec, TypeVar

__all__ = ["BULK_PATIENCE", "BlockingExecutor", "LaneClosed", "PriorityLock", "SerialLane"]

P = ParamSpec("P")
JOIN_SECONDS = 10.0  # how long close() waits for the call a lane's thread is running
# Urgent acquisitions a waiting bulk one lets pass before it goes first: urgent callers never starve bulk ones.
BULK_PATIENCE = 16
log = logging.getLogger(__name__)
T = TypeVar("T")


class LaneClosed(RuntimeError):
    """The lane was closed before the call ran (its owner is shutting down)."""


class PriorityLock:
    """A mutex whose urgent holders (short operations) go ahead of waiting bulk ones (key generation).

    ``with lock:`` and ``acquire()`` are urgent; :meth:`bulk` (or ``acquire(bulk=True)``) waits while an urgent
    acquirer waits. So that a steady stream of short operations cannot shut bulk ones out for good, a waiting bulk
    acquirer lets at most ``patience`` urgent ones pass; then it goes next. Not reentrant, like ``threading.Lock``.
    """

    def __init__(self, patience: int = BULK_PATIENCE) -> None:
        self.patience = patience
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent_waiting = 0
        self._bulk_waiting = 0
        self._passed = 0  # urgent grants while a bulk acquirer waited, since the last bulk grant

    def _bulk_due(self) -> bool:
        return self._bulk_waiting > 0 and self._passed >= self.patience

    def acquire(self, blocking: bool = True, *, bulk: bool = False) -> bool:
        with self._cond:
            if bulk:
                self._bulk_waiting += 1
                try:
                    while self._held or (self._urgent_waiting and not self._bulk_due()):
                        if not blocking:
                            return False
                        self._cond.wait()
                finally:
                    self._bulk_waiting -= 1
                self._passed = 0
            else:
                self._urgent_waiting += 1
                try:
                    while self._held or self._bulk_due():
                        if not blocking:
                            return False
                        self._cond.wait()
                finally:
                    self._urgent_waiting -= 1
                if self._bulk_waiting:
                    self._passed += 1
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked PriorityLock")
            self._held = False
            if self._urgent_waiting or self._bulk_waiting:
                self._cond.notify_all()  # the waiters decide among themselves who is next

    def locked(self) -> bool:
        return self._held

    def waiting(self) -> tuple[int, int]:
        """Urgent and bulk acquirers waiting now (for status output and tests)."""
        with self._cond:
            return self._urgent_waiting, self._bulk_waiting

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Hold the lock as a bulk (long) operation."""
        self.acquire(bulk=True)
        try:
            yield
        finally:
            self.release()


class _Call:
    __slots__ = ("args", "ctx", "failed", "fn", "future", "loop", "outcome")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.loop = loop
        self.fn = fn
        self.args = args
        self.ctx = contextvars.copy_context()
        self.future: asyncio.Future[Any] = loop.create_future()
        self.outcome: Any = None
        self.failed = False


class SerialLane:
    """One thread running calls in arrival order; at most ``bound`` calls waiting or running at once.

    The thread starts with the first call and stops at :meth:`close`; a call still queued then fails with
    ``closed_error()`` (the lane's owner says what closed). Results reach the loop that submitted each call.
    """

    def __init__(self, name: str, bound: int = 256,
                 closed_error: Callable[[], BaseException] = lambda: LaneClosed("closed")) -> None:
        if bound < 1:
            raise ValueError("a lane holds at least one call")
        self.name = name
        self.bound = bound
        self._closed_error = closed_error
        self._mutex = threading.Lock()
        # SimpleQueue (C): an idle thread sleeps in one C call and wakes once per call, as the pool's threads do; a
        # threading.Condition would wake it and then have it take the Condition's lock back from the submitter.
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()  # None: stop
        self._in_flight = 0  # queued or running
        self._done: dict[asyncio.AbstractEventLoop, list[_Call]] = {}  # finished, not yet handed to their loop
        self._thread: threading.Thread | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"SerialLane({self.name!r}, bound={self.bound})"

    @property
    def thread(self) -> threading.Thread | None:
        """The lane's thread while it runs (None before the first call and after close)."""
        return self._thread

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T] | None:
        """Queue ``fn(*args)`` from the running loop; None if the lane is full (the caller takes another way).
        After :meth:`close`, the future fails with ``closed_error()``."""
        call = _Call(asyncio.get_running_loop(), fn, args)
        with self._mutex:
            if self._closing:
                call.future.set_exception(self._closed_error())
                return call.future
            if self._in_flight >= self.bound:
                return None
            self._in_flight += 1
            self._queue.put(call)  # under the mutex: never behind the stop marker
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        return call.future

    def close(self) -> None:
        """Stop the thread once the running call returns; calls still queued fail. Idempotent."""
        dropped: list[_Call] = []
        with self._mutex:
            self._closing = True
            thread = self._thread
            with suppress(queue.Empty):
                while True:
                    call = self._queue.get_nowait()
                    if call is not None:
                        dropped.append(call)
            if thread is not None:
                self._queue.put(None)
        for call in dropped:
            call.outcome, call.failed = self._closed_error(), True
            self._finished(call)
        if thread is not None and thread is not threading.current_thread():
            # bounded: a device stuck in a call must not hold up the process's stop (the thread is a daemon)
            thread.join(JOIN_SECONDS)
            if thread.is_alive():
                log.warning("%s: a call still runs after %g s; stopping without it", self.name, JOIN_SECONDS)
        with self._mutex:
            self._thread = None

    # the lane's thread ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            if self._closing:  # taken before close emptied the queue
                call.outcome, call.failed = self._closed_error(), True
            elif not call.future.cancelled():  # a cancelled caller's call is skipped, as the pool skips it
                try:
                    call.outcome = call.ctx.run(call.fn, *call.args)
                except BaseException as e:  # handed to the caller, as the pool does
                    call.outcome, call.failed = e, True
            self._finished(call)

    def _finished(self, call: _Call) -> None:
        with self._mutex:
            self._in_flight -= 1
            batch = self._done.get(call.loop)
            if batch is not None:  # the loop has a hand-off pending: this call joins it
                batch.append(call)
                return
            self._done[call.loop] = [call]
        try:
            call.loop.call_soon_threadsafe(self._hand_back, call.loop)
        except RuntimeError:  # the loop is closed: nobody awaits its calls any more
            with self._mutex:
                self._done.pop(call.loop, None)

    def _hand_back(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._mutex:
            batch = self._done.pop(loop, [])
        for call in batch:
            if call.future.cancelled():
                continue
            if call.failed:
                call.future.set_exception(call.outcome)
            else:
                call.future.set_result(call.outcome)


class BlockingExecutor:
    """A pool of ``max_workers`` threads, plus the serial lanes ``lanes`` routes calls to, plus a pool of
    ``bulk_workers`` threads (default ``max_workers``) for long calls (:meth:`run_bulk`).

    ``lanes`` maps callables, typically bound methods (equal when bound to the same object), to the lane that runs
    them; the lanes' owners close them.

    Why a separate bulk pool: a key generation takes a thread for hundreds of milliseconds to seconds; two of them on
    a pool of two left every short call (a key lookup, an RSA signature, a certificate issuance) waiting for one to
    end. Long calls never take a thread of the main pool, so short ones always find theirs.
    """

    def __init__(self, max_workers: int = 8, name: str = "edgeward-blocking",
                 lanes: Mapping[Callable[..., Any], SerialLane] | None = None, bulk_workers: int | None = None) -> None:
        self.max_workers = max_workers
        self.bulk_workers = bulk_workers if bulk_workers is not None else max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._bulk = ThreadPoolExecutor(max_workers=self.bulk_workers, thread_name_prefix=f"{name}-bulk")
        self._lanes = dict(lanes or {})

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._lanes and not kwargs:
            try:
                lane = self._lanes.get(fn)
            except TypeError:  # an unhashable callable is never a lane's
                lane = None
            if lane is not None:
                future = lane.submit(fn, *args)
                if future is not None:
                    return await future
        return await self._in(self._pool, fn, *args, **kwargs)

    async def run_bulk(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A long call (a key generation) on the bulk pool: it never holds a thread short calls need."""
        return await self._in(self._bulk, fn, *args, **kwargs)

    @staticmethod
    async def _in(pool: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(pool, call)

    def shutdown(self) -> None:
        self._bulk.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
