"""When a token's signature may run on the event loop: only once it has shown, on worker threads, that it is fast.

A thread hop costs tens of microseconds and, under load, far more (the worker threads and the event loop take
turns at the GIL): more than SoftHSM2's ECDSA P-256 signature itself. A hardware token over USB takes tens of
milliseconds per signature and must never run on the loop. So the gate opens once the quicker quarter of the last
signatures measured on worker threads took less than a thread hop (their slow ones waited for the GIL, not for the
token); only slow signatures on the loop close it (worker-thread timings also hold GIL waits): a few in a row, since
one alone is as likely the scheduler preempting the loop on a busy machine; then the worker threads must show it
fast again.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["InlineGate"]

FAST_SECONDS = 0.0005  # a signature this quick costs the loop less than handing it to a thread
SLOW_SECONDS = 0.002  # one this slow on the loop sends signatures back to the executor
WINDOW = 32  # signatures on worker threads that decide
SLOW_IN_A_ROW = 3  # slow signatures on the loop, one after another, that close the gate


class InlineGate:
    def __init__(self, window: int = WINDOW) -> None:
        self._offloaded: deque[float] = deque(maxlen=window)
        self._open = False
        self._slow_in_a_row = 0
        self._lock = threading.Lock()  # executor threads record too

    def allows(self) -> bool:
        return self._open

    def record_offloaded(self, seconds: float) -> None:
        """A signature timed on a worker thread."""
        with self._lock:
            self._offloaded.append(seconds)
            if not self._open and len(self._offloaded) == self._offloaded.maxlen:
                # only the loop's own measurements close it: these waited for the GIL as much as for the token
                self._open = sorted(self._offloaded)[len(self._offloaded) // 4] < FAST_SECONDS

    def record_inline(self, seconds: float) -> None:
        """A signature timed on the event loop: a few slow ones in a row close the gate."""
        if seconds < SLOW_SECONDS:
            self._slow_in_a_row = 0
            return
        with self._lock:
            self._slow_in_a_row += 1
            if self._slow_in_a_row >= SLOW_IN_A_ROW:
                self._open, self._slow_in_a_row = False, 0
                self._offloaded.clear()
