"""The log of 500s: Edgeward's own bugs, whose tracebacks are what fixes them, but which a caller who found one can
provoke in a loop (a traceback is ~2 KB: one client made 0.85 MB/s of them, enough for journald's rate limit to drop
other units' lines, refusals among them). The first traceback per route and exception type per interval is logged;
the repeats are counted and the count goes with the next one logged."""

from __future__ import annotations

import logging
import time

from aiohttp import web

__all__ = ["InternalErrorLog", "route_of"]

_Key = tuple[str, str, type[BaseException]]


def route_of(request: web.Request) -> str:
    """The request's route as registered ("/keypair/{keyId}"), "" when none matched: what lines a caller can repeat
    are counted by, so that varying the path (a key or cert id) gets the caller no more of them."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


class InternalErrorLog:
    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_kinds: int = 256) -> None:
        self.logger = logger
        self.interval = interval
        self.max_kinds = max_kinds  # routes x exception types is small; the bound is for a bug in that reasoning
        self._last: dict[_Key, tuple[float, int]] = {}  # -> (when its traceback was logged, repeats since)

    def log(self, request: web.Request, error: BaseException) -> None:
        # by route, not path: a caller varying the path (a module name, a key id) must not get a traceback each
        key = (request.method, route_of(request), type(error))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is None and len(self._last) >= self.max_kinds:
            self._last.clear()
        repeats = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        also = f" ({repeats} more like it in the {self.interval:.0f} s before, not logged)" if repeats else ""
        self.logger.error("internal error on %s %s%s", request.method, request.path, also, exc_info=error)
