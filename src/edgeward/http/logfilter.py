"""Rate limits for log lines a caller can provoke before any of Edgeward's checks run.

aiohttp logs every malformed request (an over-long request line, bytes that are not ASCII in the path) at ERROR
with a traceback, after answering it with a 400; a local user sending them in a loop would fill the disk and push
other lines out of journald's rate limit. One such line per interval is kept, with a count of those dropped.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitFilter", "limit_provoked_logs"]

PROVOKED = ("aiohttp.server", "aiohttp.access", "aiohttp.internal")


class RateLimitFilter(logging.Filter):
    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -interval
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return False
        self._last = now
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} similar lines dropped in the last {self.interval:.0f} s)"
            self._dropped = 0
        record.exc_info = None  # the traceback of a malformed request says nothing about Edgeward
        record.exc_text = None
        return True


def limit_provoked_logs(interval: float = 10.0) -> None:
    """Install the filter on aiohttp's loggers (once per logger)."""
    for name in PROVOKED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter(interval))
