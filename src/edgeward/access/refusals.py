"""A trace of every refusal: a log line and an audit record, rate-limited so a flood of refused calls cannot fill
the disk or slow the daemon, and summarised so the flood itself still shows.

Each recorded refusal is one INFO line (the daemon's default level shows it), whoever refused: the access table,
an attestation step, or a service's own 401/403; the summary of those suppressed in a window is a WARNING, since a
flood is worth an operator's attention.

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
    """Refusals are counted per caller, and per (caller, service, route, step): the first `per_route` of each
    `window` seconds for a route, and `per_caller` in all, are recorded; the rest are counted and summarised in one
    record when the window closes.

    The caller is what the kernel and attestation vouch for, never what a caller can pick: an attested module (its
    name), a host uid, or — for everything else (a process in namespaces that are not the host's and that no module
    owns, whatever cgroup it claims) — "elsewhere" under the uid the kernel reports for it (SO_PEERCRED maps it
    into the host's user namespace: `unshare -U` does not change it). So a flood from one module or host user never
    hides another's attempt, nor does a local user who steps into namespaces of its own hide another user's. Only
    a process that can take any uid (root in a container without a user namespace) can mint "elsewhere" callers:
    at most `elsewhere_uids` of them a window, the rest share one "elsewhere" caller with a budget of `elsewhere`,
    and the summary still counts them. At most `max_callers` distinct modules and host uids a window (the rest
    count as that shared "elsewhere" too)."""

    per_route: int = 3
    per_caller: int = 10
    elsewhere: int = 30
    elsewhere_uids: int = 32
    max_callers: int = 1000
    window: float = 60.0
    buffer_size: int = 256
    _sink: AuditSink | None = None
    _windows: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    _callers: dict[tuple[Any, ...], _Window] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)  # distinct callers this window, by kind
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
        caller = self._caller(module, where, uid)
        budget = self.elsewhere if caller == ("elsewhere",) else self.per_caller
        mine = self._callers.setdefault(caller, _Window(now))
        key = (caller, service, route, step)
        win = self._windows.setdefault(key, _Window(now))
        if mine.recorded >= budget or win.recorded >= self.per_route:
            win.suppressed += 1
            self._total.suppressed += 1
            return False
        mine.recorded += 1
        win.recorded += 1
        self._total.recorded += 1
        detail: dict[str, Any] = {"service": service, "pid": pid, "uid": uid, "caller": where, "step": step,
                                  "route": route, "status": status, "message": message[:300]}
        log.info("refused %s on %s: pid %d uid %d (%s) at %s: %s", route, service, pid, uid, where, step,
                    message[:300])
        self._emit(module, detail)
        return True

    def _caller(self, module: str | None, where: str, uid: int) -> tuple[Any, ...]:
        """The budget's key; a new one only while its kind has room this window, else the shared "elsewhere"."""
        caller: tuple[Any, ...] = (("module", module) if module is not None else ("host", uid) if where == "host"
                                   else ("elsewhere", uid))
        if caller in self._callers:
            return caller
        kind = "elsewhere" if caller[0] == "elsewhere" else "named"
        if self._seen.get(kind, 0) >= (self.elsewhere_uids if kind == "elsewhere" else self.max_callers):
            return ("elsewhere",)
        self._seen[kind] = self._seen.get(kind, 0) + 1
        return caller

    def _close_window(self, now: float) -> None:
        """A new window: the last one's suppressed refusals become one summary record, then the counts restart."""
        if self._total.suppressed:
            counts: dict[str, int] = {}
            for (caller, service, route, step), win in self._windows.items():
                if win.suppressed:
                    counts[f"{service} {route} {' '.join(map(str, caller))} at {step}"] = win.suppressed
            top = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:20])
            detail = {"suppressed": self._total.suppressed, "window_seconds": self.window, "most": top}
            log.warning("%d refusals in the last %.0f s were not logged one by one; most: %s",
                        self._total.suppressed, self.window, top)
            self._emit(None, detail, AUDIT_KIND + ".suppressed")
        self._windows = {}
        self._callers = {}
        self._seen = {}
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
