"""Who takes the TPM for a quote next, and who is told to come back later.

Why: anyone holding a client certificate from the verifier's CA may ask for quotes. When the agent refused quotes
beyond two at once with 503, four identity-quote loops of one such client made it answer the verifier's integrity
quote 503 too; Keylime's verifier retries a quote only on 408, 500 and 599 and takes any other status but 200 (and
400 naming the API version) as an irrecoverable failure (no_quote): it stopped polling the device for good.

So, per quote:

- a peer is a client certificate (its SHA-256): the verifier and a tenant may share an address, not a key;
- one quote of each kind in flight per peer; a second one of the same peer waits a bounded time for the first;
- quotes are taken one at a time (each holds the TPM service's lock, which its other callers share, so no more than
  one quote ever waits there), integrity quotes before identity quotes and first come first served within a kind.
  With one request per peer and kind in the queue that is a round robin over peers, and the verifier's quote waits
  for the quote being taken and for other peers' integrity quotes, never behind identity quotes;
- identity quotes (the tenant asks for one when it adds the agent) are rate limited per peer, a request over the
  rate waiting for its turn for up to the same bounded time, so a loop of them is slowed rather than answered at
  once over and over.

A request that waited its bound is answered with a status its asker retries, never 503: 408 for an integrity quote
(the verifier retries it, up to its ``max_retries``, counted afresh after each good quote), 504 for an identity
quote (the tenant retries 503 and 504); an identity quote over its peer's rate is answered 429 after the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["IDENTITY_BURST", "IDENTITY_PER_SECOND", "PEER_WAIT", "TURN_WAIT", "QuoteDeferred", "QuoteQueue"]

Kind = Literal["integrity", "identity"]

PEER_WAIT = 2.0  # seconds a peer's second quote of a kind waits for its first (and an identity quote for its rate)
TURN_WAIT = 10.0  # seconds a quote waits for the TPM behind other peers' quotes: several TPM quotes' time
IDENTITY_PER_SECOND = 1.0  # the tenant asks for one identity quote per `add` (a few with retries)
IDENTITY_BURST = 4.0
_MAX_BUCKETS = 1024  # peers remembered for the rate; full buckets are dropped first
_RETRY = {"integrity": 408, "identity": 504}


class QuoteDeferred(Exception):
    """The quote was not taken; ``status`` is the HTTP status that tells the asker to retry."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class QuoteQueue:
    def __init__(self, *, peer_wait: float = PEER_WAIT, turn_wait: float = TURN_WAIT,
                 identity_rate: float = IDENTITY_PER_SECOND, identity_burst: float = IDENTITY_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.peer_wait, self.turn_wait = peer_wait, turn_wait
        self.identity_rate, self.identity_burst = identity_rate, identity_burst
        self.clock = clock
        self._slots: dict[tuple[str, Kind], tuple[asyncio.Lock, int]] = {}  # the lock, and how many want it
        self._waiting: dict[Kind, deque[asyncio.Future[None]]] = {"integrity": deque(), "identity": deque()}
        self._busy = False
        self._buckets: dict[str, _Bucket] = {}
        self.deferred = 0

    @contextlib.asynccontextmanager
    async def turn(self, peer: str, kind: Kind) -> AsyncIterator[None]:
        """Hold the quote turn for ``peer``: the TPM is this request's until the block ends."""
        if kind == "identity":
            await self._throttle(peer)
        async with self._slot(peer, kind):
            await self._take_turn(kind)
            try:
                yield
            finally:
                self._pass_turn()

    # one in flight per peer and kind ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _slot(self, peer: str, kind: Kind) -> AsyncIterator[None]:
        key = (peer, kind)
        lock, users = self._slots.get(key, (asyncio.Lock(), 0))
        self._slots[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(self.peer_wait):
                    await lock.acquire()
            except TimeoutError:
                raise self._defer(_RETRY[kind], f"another {kind} quote for this client is being taken; "
                                                f"retry") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._slots[key]
            if users > 1:
                self._slots[key] = (lock, users - 1)
            else:
                del self._slots[key]

    # one quote at a time, integrity first -----------------------------------------------------------------------
    async def _take_turn(self, kind: Kind) -> None:
        if not self._busy:
            self._busy = True
            return
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[kind].append(handed)
        try:
            async with asyncio.timeout(self.turn_wait):
                await handed
        except TimeoutError:
            if handed.done() and not handed.cancelled():
                return  # handed the turn as the time ran out: take it
            self._waiting[kind].remove(handed)
            raise self._defer(_RETRY[kind], "the TPM is taking other quotes; retry") from None
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self._pass_turn()  # the asker left after it was handed the turn
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[kind].remove(handed)
            raise

    def _pass_turn(self) -> None:
        for kind in ("integrity", "identity"):
            waiting = self._waiting[kind]
            while waiting:
                handed = waiting.popleft()
                if not handed.done():
                    handed.set_result(None)
                    return
        self._busy = False

    # identity quotes' rate --------------------------------------------------------------------------------------
    async def _throttle(self, peer: str) -> None:
        """A token bucket per peer; a request finding it empty reserves the next token and waits for it, up to
        ``peer_wait``, or is refused once that time is up (a refusal answered at once would be asked again at
        once, by a loop)."""
        now = self.clock()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[peer] = _Bucket(self.identity_burst, now)
        bucket.tokens = min(self.identity_burst, bucket.tokens + (now - bucket.stamp) * self.identity_rate)
        bucket.stamp = now
        wait = (1.0 - bucket.tokens) / self.identity_rate
        if wait > self.peer_wait:
            await asyncio.sleep(self.peer_wait)
            raise self._defer(429, f"at most {self.identity_rate:g} identity quotes a second per client; retry",
                              retry_after=wait - self.peer_wait)
        bucket.tokens -= 1.0  # reserved now: the requests queued behind this one wait for later tokens
        if wait > 0:
            await asyncio.sleep(wait)

    def _forget_full(self, now: float) -> None:
        for peer, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * self.identity_rate >= self.identity_burst:
                del self._buckets[peer]
        while len(self._buckets) >= _MAX_BUCKETS:  # all busy (a flood of certificates): the oldest go
            del self._buckets[next(iter(self._buckets))]

    def _defer(self, status: int, message: str, retry_after: float | None = None) -> QuoteDeferred:
        self.deferred += 1
        return QuoteDeferred(status, message, retry_after)
