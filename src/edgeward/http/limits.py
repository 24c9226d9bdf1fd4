"""Per-uid concurrency limit, so one misbehaving local user cannot starve every other caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .errors import TooManyRequests

__all__ = ["UidLimiter"]


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    waiting: int = 0
    active: int = 0


@dataclass
class UidLimiter:
    """At most ``max_in_flight`` requests run per uid; up to ``max_waiting`` more queue; the rest get a 429."""

    max_in_flight: int = 64
    max_waiting: int = 1024
    _slots: dict[int, _Slot] = field(default_factory=dict)

    @asynccontextmanager
    async def hold(self, uid: int) -> AsyncIterator[None]:
        slot = self._slots.get(uid)
        if slot is None:
            slot = self._slots[uid] = _Slot(asyncio.Semaphore(self.max_in_flight))
        if slot.semaphore.locked() and slot.waiting >= self.max_waiting:
            raise TooManyRequests(
                f"too many concurrent requests from uid {uid} (limit {self.max_in_flight} running, "
                f"{self.max_waiting} queued); retry later"
            )
        slot.waiting += 1
        try:
            await slot.semaphore.acquire()
        finally:
            slot.waiting -= 1
        slot.active += 1
        try:
            yield
        finally:
            slot.active -= 1
            slot.semaphore.release()
            if slot.active == 0 and slot.waiting == 0:
                self._slots.pop(uid, None)

    def in_flight(self, uid: int) -> int:
        slot = self._slots.get(uid)
        return slot.active if slot else 0
