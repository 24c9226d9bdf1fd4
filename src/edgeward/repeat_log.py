"""A log line a caller may cause at will, kept to a bounded rate: certd's "issued cert" line, which a principal
re-issuing its own certs (or a local identity asking for itself, each answer a fresh certificate) wrote about 300
times a second (h/brk12a r04). journald drops a unit's lines past ~333/s (RateLimitBurst=10000 per 30 s), so the
refusals logged next would have been lost.

The first line of each key (a cert id) in an interval is logged at INFO, up to ``budget`` lines an interval over all
keys (a caller varying its cert ids gets no more); the rest go to DEBUG and are counted, and one INFO summary at the
end of the interval says how many, for which keys, so nothing is lost silently. At most ``budget + 1`` INFO lines an
interval, whatever the callers do. Compare ``edgeward.http.internal_errors``, which does the same for tracebacks.

Also used for identityd's answers from its local copy during a hub outage, the HTTP layer's full-disk and read-only
lines, and the keys fallback backend's "kept in" line: every line a caller can repeat per request (h/brk13a a01);
refusals have the refusal trail (``edgeward.access.refusals``). Safe from executor threads (a lock); there, with no
loop to wait on, the summary comes with the first line after the interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["RepeatLog"]

SUMMARY_KEYS = 5  # the keys a summary names (the most repeated), so a summary line stays short
SUMMARY_TASK = "edgeward: summary of lines held back"


class RepeatLog:
    def __init__(self, logger: logging.Logger, what: str, *, interval: float = 60.0, budget: int = 60,
                 max_keys: int = 1024, level: int = logging.INFO,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.what = what  # how the summary names the lines it stands for
        self.level = level  # of the lines logged and of the summary (a WARNING's summary is a WARNING too)
        self.interval = interval
        self.budget = budget
        self.max_keys = max_keys  # distinct keys counted by name; the others are counted together
        self.clock = clock
        self._start = clock()
        self._logged: set[str] = set()  # keys with an INFO line this interval (at most ``budget``)
        self._held: Counter[str] = Counter()  # lines sent to DEBUG this interval, by key
        self._held_others = 0  # ... of keys past ``max_keys``
        self._summary: asyncio.Task[None] | None = None
        self._lock = threading.RLock()  # executor threads log through one instance too (the keys fallback backend)

    def log(self, key: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` (INFO) if it is ``key``'s first line this interval and the budget allows;
        else at DEBUG, counted for the summary."""
        with self._lock:
            if self.clock() - self._start >= self.interval:
                self.flush()
            if key not in self._logged and len(self._logged) < self.budget:
                self._logged.add(key)
                self.logger.log(self.level, msg, *args)
                return
            if key in self._held or len(self._held) < self.max_keys:
                self._held[key] += 1
            else:
                self._held_others += 1
            self.logger.debug(msg, *args)
            self._summarise_later()

    def flush(self) -> None:
        """Log the summary of what was held back (if anything) and start a new interval: at the interval's end, on
        the next line after it, or when the loop cancels the pending summary (the daemon stopping)."""
        with self._lock:
            held = sum(self._held.values()) + self._held_others
            if held:
                top = ", ".join(f"{key!r} {n}" for key, n in self._held.most_common(SUMMARY_KEYS))
                more = len(self._held) - SUMMARY_KEYS
                others = f", and {more} more keys" if more > 0 else ""
                if self._held_others:
                    others += f" (and {self._held_others} lines of keys past the first {self.max_keys})"
                elapsed = self.clock() - self._start
                self.logger.log(self.level, "%d more %r lines in the last %.0f s went to debug only (bounded rate): "
                                "%s%s", held, self.what, elapsed, top, others)
            self._start = self.clock()
            self._logged.clear()
            self._held.clear()
            self._held_others = 0
            task, self._summary = self._summary, None
            if task is not None:
                task.cancel()  # nothing when it is the one that ended

    def _summarise_later(self) -> None:
        """A summary when the interval ends even if no line comes after it (a flood that stops), or when the loop
        cancels the wait (asyncio.run does, stopping the daemon): a done callback runs either way."""
        if self._summary is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next line after the interval flushes
            return
        delay = max(self.interval - (self.clock() - self._start), 0.0)
        self._summary = loop.create_task(asyncio.sleep(delay), name=SUMMARY_TASK)
        self._summary.add_done_callback(self._summary_due)

    def _summary_due(self, task: asyncio.Task[None]) -> None:
        if self._summary is task:  # not one flush() cancelled, having logged the summary itself
            self.flush()
