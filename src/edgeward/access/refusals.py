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
    rest counted and reported with the next recorded one, and every window's suppressed total in one summary record.

    The caller in the key is the module or container (never its uid, which a process in a container can change at
    will) or, for host processes, the uid; so a flood cannot mint new keys, and one caller's flood never silences
    another caller's first refusal. At most `max_keys` distinct keys are recorded a window (bounded disk use)."""

    per_key: int = 5
    max_keys: int = 1000
    window: float = 60.0
    buffer_size: int = 256
    _sink: AuditSink | None = None
    _windows: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    _total: _Window = field(default_factory=lambda: _Window(0.0))
    _pending: deque[tuple[str | None, str, dict[str, Any]]] = field(default_factory=deque)

    def set_sink(self, sink: AuditSink | None) -> None:
        self._sink = sink
        if sink is None:
            return
        while self._pending:
            module, kind, detail = self._pending.popleft()
            self._write(module, detail, kind)

    def record(self, *, service: str, pid: int, uid: int, where: str, module: str | None, step: str, route: str,
               status: int, message: str) -> bool:
        """Record one refusal; False when the rate limit suppressed it (it is then counted, not lost)."""
        now = time.monotonic()
        if now - self._total.start >= self.window:
            self._close_window(now)
        key = (service, where, route, step, uid if where == "host" else None)
        win = self._windows.get(key)
        if win is None:
            if len(self._windows) >= self.max_keys:
                self._total.suppressed += 1
                return False
            win = self._windows[key] = _Window(now)
        if win.recorded >= self.per_key:
            win.suppressed += 1
            self._total.suppressed += 1
            return False
        win.recorded += 1
        self._total.recorded += 1
        detail: dict[str, Any] = {"service": service, "pid": pid, "uid": uid, "caller": where, "step": step,
                                  "route": route, "status": status, "message": message[:300]}
        log.warning("refused %s on %s: pid %d uid %d (%s) at %s: %s", route, service, pid, uid, where, step,
                    message[:300])
        self._emit(module, detail)
        return True

    def _close_window(self, now: float) -> None:
        """A new window: the last one's suppressed refusals become one summary record, then the counts restart."""
        if self._total.suppressed:
            counts: dict[str, int] = {}
            for (service, where, route, step, _), win in self._windows.items():
                if win.suppressed:
                    counts[f"{service} {route} {where} at {step}"] = win.suppressed
            top = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:20])
            detail = {"suppressed": self._total.suppressed, "window_seconds": self.window, "most": top}
            log.warning("%d refusals in the last %.0f s were not logged one by one; most: %s",
                        self._total.suppressed, self.window, top)
            self._emit(None, detail, AUDIT_KIND + ".suppressed")
        self._windows = {}
        self._total = _Window(now)

    def _emit(self, module: str | None, detail: dict[str, Any], kind: str = AUDIT_KIND) -> None:
        if self._sink is None:
            if len(self._pending) < self.buffer_size:
                self._pending.append((module, kind, detail))
        else:
            self._write(module, detail, kind)

    def _write(self, module: str | None, detail: dict[str, Any], kind: str = AUDIT_KIND) -> None:
        assert self._sink is not None
        try:
            self._sink.append(kind, module, detail)
        except Exception:  # a full disk must not turn a refusal into a 500; the log line was written
            log.exception("could not write a refusal to the audit log")


refusals = RefusalRecorder()
