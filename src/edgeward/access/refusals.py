"""A trace of every refusal: a log line and an audit record, rate-limited so a flood of refused calls cannot fill
the disk or slow the daemon, and summarised so the flood itself still shows.

One recorder per process (`refusals`): services start before the module runtime opens the audit log, so records
made before a sink is set wait in a small buffer and are written when it is.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["AuditSink", "RefusalRecorder", "refusals"]

log = logging.getLogger("edgeward.refusals")

AUDIT_KIND = "access.refused"


class AuditSink(Protocol):
    def append(self, kind: str, module: str | None = None, detail: Mapping[str, Any] | None = None) -> Any: ...


@dataclass
class _Window:
    start: float
    recorded: int = 0
    suppressed: int = 0


@dataclass
class RefusalRecorder:
    """Per (service, caller, route, step): the first `per_key` refusals of each `window` seconds are recorded, the
    rest counted and reported with the next recorded one; at most `per_window_total` records a window overall."""

    per_key: int = 5
    per_window_total: int = 200
    window: float = 60.0
    buffer_size: int = 256
    _sink: AuditSink | None = None
    _windows: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    _total: _Window = field(default_factory=lambda: _Window(0.0))
    _pending: deque[tuple[str | None, dict[str, Any]]] = field(default_factory=deque)

    def set_sink(self, sink: AuditSink | None) -> None:
        self._sink = sink
        if sink is None:
            return
        while self._pending:
            module, detail = self._pending.popleft()
            self._write(module, detail)

    def record(self, *, service: str, pid: int, uid: int, where: str, module: str | None, step: str, route: str,
               status: int, message: str) -> bool:
        """Record one refusal; False when the rate limit suppressed it (it is then counted, not lost)."""
        now = time.monotonic()
        key = (service, uid, where, route, step)
        win = self._windows.get(key)
        if win is None or now - win.start >= self.window:
            if len(self._windows) > 4096:  # many distinct callers: forget old windows, never grow without bound
                self._windows = {k: w for k, w in self._windows.items() if now - w.start < self.window}
            carried = win.suppressed if win is not None else 0
            win = self._windows[key] = _Window(now, suppressed=carried)
        if now - self._total.start >= self.window:
            self._total = _Window(now)
        if win.recorded >= self.per_key or self._total.recorded >= self.per_window_total:
            win.suppressed += 1
            return False
        win.recorded += 1
        self._total.recorded += 1
        detail: dict[str, Any] = {"service": service, "pid": pid, "uid": uid, "caller": where, "step": step,
                                  "route": route, "status": status, "message": message[:300]}
        if win.suppressed:
            detail["suppressed_before"] = win.suppressed
            win.suppressed = 0
        log.warning("refused %s on %s: pid %d uid %d (%s) at %s: %s%s", route, service, pid, uid, where, step,
                    message[:300], f" ({detail['suppressed_before']} similar refusals not logged)"
                    if "suppressed_before" in detail else "")
        if self._sink is None:
            if len(self._pending) < self.buffer_size:
                self._pending.append((module, detail))
        else:
            self._write(module, detail)
        return True

    def _write(self, module: str | None, detail: dict[str, Any]) -> None:
        assert self._sink is not None
        try:
            self._sink.append(AUDIT_KIND, module, detail)
        except Exception:  # a full disk must not turn a refusal into a 500; the log line was written
            log.exception("could not write a refusal to the audit log")


refusals = RefusalRecorder()
