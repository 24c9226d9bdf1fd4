"""Per-caller concurrency limit, so one misbehaving caller (a module, a local user) cannot starve every other one.

Callers are told apart by a caller key (see :mod:`.connections`): by default the socket a request arrived on and
the peer's uid, so every module's own workload socket is a caller of its own even when all modules run as root.

aziot's ``max_requests`` (``[aziot_max_requests]``, ``[iotedge_max_requests]``) is the number of simultaneous
requests one uid may have on one socket (http-common counts its connections, each serving one request at a time):
:func:`max_requests_limiter` makes a limiter that holds each caller to that many connections and running requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .callers import CallerKey, by_socket_and_uid, describe_caller
from .errors import TooManyRequests

__all__ = ["CallerLimiter", "UidLimiter", "max_requests_limiter"]


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    waiting: int = 0
    active: int = 0
    large: asyncio.Lock | None = None  # made by the caller's first large body


@dataclass
class CallerLimiter:
    """At most ``max_in_flight`` requests run per caller key; up to ``max_waiting`` more queue; the rest get a 429.

    ``caller_key`` says who a caller is, for the apps built with this limiter that do not name their own.
    ``max_connections``: open connections per caller key on the app's sockets, when lower than the process's
    per-caller cap (:class:`~edgeward.http.connections.ConnectionLimits`); None keeps that cap.
    """

    max_in_flight: int = 64
    max_waiting: int = 1024
    caller_key: CallerKey = by_socket_and_uid
    max_connections: int | None = None
    _slots: dict[Hashable, _Slot] = field(default_factory=dict)

    async def enter(self, key: Hashable) -> None:
        """Take a running slot for ``key`` (waiting in its queue if needed); pair with :meth:`leave`. Not an async
        context manager: this runs on every request, and the generator-based one cost ~4% of a keys-API sign."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(asyncio.Semaphore(self.max_in_flight))
        if slot.semaphore.locked():
            if slot.waiting >= self.max_waiting:
                raise TooManyRequests(
                    f"too many concurrent requests from {describe_caller(key)} (limit {self.max_in_flight} running, "
                    f"{self.max_waiting} queued); retry later"
                )
            slot.waiting += 1
            try:
                await slot.semaphore.acquire()
            finally:
                slot.waiting -= 1
        else:
            await slot.semaphore.acquire()  # free: returns without suspending
        slot.active += 1

    async def enter_large(self, key: Hashable) -> None:
        """Also take ``key``'s one slot for a request with a large body (inside a running slot: after
        :meth:`enter`); pair with :meth:`leave_large`. Handling a large body costs the event loop
        milliseconds (JSON, base64, crypto): a caller handling dozens at once would put all that work ahead of
        every other caller's requests, so its large requests are handled one after the other, while its small ones
        and everyone else's go on."""
        slot = self._slots[key]
        if slot.large is None:
            slot.large = asyncio.Lock()
        await slot.large.acquire()

    def leave_large(self, key: Hashable) -> None:
        lock = self._slots[key].large
        assert lock is not None
        lock.release()

    def leave(self, key: Hashable) -> None:
        slot = self._slots[key]
        slot.active -= 1
        slot.semaphore.release()
        if slot.active == 0 and slot.waiting == 0:
            self._slots.pop(key, None)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        await self.enter(key)
        try:
            yield
        finally:
            self.leave(key)

    def in_flight(self, key: Hashable) -> int:
        slot = self._slots.get(key)
        return slot.active if slot else 0


UidLimiter = CallerLimiter  # the name every service imports; limits are per caller key now, uid among them


def max_requests_limiter(max_requests: int | None, caller_key: CallerKey = by_socket_and_uid) -> CallerLimiter:
    """The limiter of a service whose ``max_requests`` is configured: each caller holds at most that many
    connections (the next is refused at once with a 429, where aziot closes it unanswered) and runs at most that
    many requests; None: Edgeward's defaults (64 running, 1,024 queued, the process's connection cap)."""
    if max_requests is None:
        return CallerLimiter(caller_key=caller_key)
    return CallerLimiter(max_in_flight=max_requests, caller_key=caller_key, max_connections=max_requests)
