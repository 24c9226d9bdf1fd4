"""Revocation notices nobody can vouch for (unsigned, or signed by another key), counted rather than recorded one by
one.

Any client holding a certificate from the verifier's CA may post them, as fast as it likes. Each audit record costs
a TPM counter increment, done where it is appended: one per notice would let that client keep the TPM busy and the
event loop blocked. So an unverified notice costs a digest and a dictionary lookup: the same notice again is a
duplicate, and what arrived is written as one summary record (``keylime.revocation_unauthenticated``: how many,
how many distinct, the first few) at most once per window, appended in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..attest.audit import AuditLog

__all__ = ["KIND", "UnverifiedTally"]

log = logging.getLogger(__name__)
KIND = "keylime.revocation_unauthenticated"
WINDOW_SECONDS = 60.0
REMEMBERED = 4096  # distinct notices remembered for deduplication
SAMPLES = 3  # notices quoted in each summary


class UnverifiedTally:
    def __init__(self, audit: AuditLog, window: float = WINDOW_SECONDS) -> None:
        self.audit = audit
        self.window = window
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending = asyncio.Event()
        self._reset()

    def _reset(self) -> None:
        self.posted = self.distinct = 0
        self.samples: list[dict[str, Any]] = []
        self.since = time.time()

    def add(self, body: dict[str, Any], detail: dict[str, Any]) -> None:
        """Count one unverified notice (``detail``: how it was judged, bounded fields). No I/O."""
        digest = hashlib.sha256(json.dumps([body.get("msg"), body.get("signature")], default=str).encode()).hexdigest()
        self.posted += 1
        if digest in self._seen:
            self._seen.move_to_end(digest)
        else:
            self._seen[digest] = None
            if len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
            self.distinct += 1
            if len(self.samples) < SAMPLES:
                self.samples.append({"sha256": digest, **detail})
        self._pending.set()

    def summary(self) -> dict[str, Any] | None:
        """What arrived since the last summary, and start a new one; None if nothing did."""
        if not self.posted:
            return None
        out = {"authenticated": False, "notices": self.posted, "distinct": self.distinct,
               "duplicates": self.posted - self.distinct, "since": round(self.since, 3),
               "until": round(time.time(), 3), "first": self.samples}
        self._reset()
        self._pending.clear()
        return out

    async def run(self) -> None:
        """Write a summary as soon as something arrives, then at most one per window."""
        while True:
            await self._pending.wait()
            await self.flush()
            await asyncio.sleep(self.window)  # the rate limit itself: what arrives meanwhile waits for the next one

    async def flush(self) -> None:
        detail = self.summary()
        if detail is None:
            return
        log.warning("keylime: %d UNAUTHENTICATED revocation notice(s) (%d distinct) recorded as one audit record",
                    detail["notices"], detail["distinct"])
        try:
            await asyncio.to_thread(self.audit.append, KIND, None, detail)
        except Exception:  # a full disk: carried into the next summary rather than ending the task (and the stop)
            log.exception("keylime: could not record the unauthenticated notices; they go into the next summary")
            self._carry(detail)

    def _carry(self, unwritten: dict[str, Any]) -> None:
        self.posted += unwritten["notices"]
        self.distinct += unwritten["distinct"]
        self.since = min(self.since, unwritten["since"])
        self.samples = (unwritten["first"] + self.samples)[:SAMPLES]
        self._pending.set()
