"""The integrity monitor: re-measures every module on a timer and on engine events, records each finding in the
audit log, and applies the configured policy.

Findings: a module whose engine object was replaced or whose image/binary changed since registration, an engine
object carrying Edgeward's label that Edgeward never registered (someone started a look-alike by hand), a
registered module whose object vanished. A finding is recorded once when it appears and once when it clears, not
on every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..runtime.engine import EngineError, ModuleEngine
from ..runtime.registry import Registration, Registry
from ..tasks import cancel_all
from .audit import AuditLog
from .measure import measure
from .pipeline import Attestor

__all__ = ["Finding", "IntegrityMonitor", "Policy"]

log = logging.getLogger(__name__)

Policy = Literal["log", "stop", "refuse"]


@dataclass(frozen=True)
class Finding:
    kind: str
    module: str
    detail: str


class IntegrityMonitor:
    def __init__(self, engine: ModuleEngine, registry: Registry, audit: AuditLog, attestor: Attestor, *,
                 policy: Policy = "refuse", period: float = 30.0) -> None:
        self.engine = engine
        self.registry = registry
        self.audit = audit
        self.attestor = attestor
        self.policy = policy
        self.period = period
        self.active: dict[tuple[str, str], Finding] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.passes = 0
        self._created: dict[str, dict[str, Any]] = {}  # module -> its latest creation record in the audit log
        self._audit_seen = 0

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(), name="integrity-monitor"),
                       asyncio.create_task(self._events(), name="integrity-events")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    def wake(self) -> None:
        self._wake.set()

    async def _events(self) -> None:
        while True:
            try:
                async for event in self.engine.events():
                    if event.action in ("create", "start", "destroy", "die"):
                        self._wake.set()
            except EngineError:
                pass
            except Exception:
                log.exception("integrity monitor: engine event stream failed")
            await asyncio.sleep(self.period)

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except EngineError as e:
                log.warning("integrity monitor: engine unavailable: %s", e.message)
            except Exception:
                log.exception("integrity monitor pass failed")
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as the event fires
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period):
                    await self._wake.wait()

    async def check(self) -> list[Finding]:
        """One pass over every registration and every labelled engine object; returns the current findings."""
        found: dict[tuple[str, str], Finding] = {}
        registrations = {r.name: r for r in self.registry.all()}
        for reg in registrations.values():
            if not reg.engine_id:
                continue  # being created right now
            result = await measure(self.engine, reg)
            if not result.ok and result.kind is not None and result.kind != "gone":
                found[(reg.name, result.kind)] = Finding(result.kind, reg.name, result.finding or "")
        for name, problem in self._registrations_against_audit(registrations).items():
            found[(name, "registration_tampered")] = Finding("registration_tampered", name, problem)
        for status in await self.engine.list():
            known = registrations.get(status.name)
            if known is None or (known.engine_id and status.engine_id != known.engine_id):
                found[(status.name, "unregistered")] = Finding(
                    "unregistered", status.name, f"{self.engine.kind} object {status.engine_id[:12]} carries "
                                                 f"Edgeward's label as {status.name} but Edgeward did not create it")
        for key, finding in found.items():
            if key not in self.active:
                self.audit.append(f"integrity.{finding.kind}", finding.module,
                                  {"detail": finding.detail, "policy": self.policy})
                log.warning("integrity: %s (policy: %s)", finding.detail, self.policy)
                await self._apply(finding)
        for key, finding in self.active.items():
            if key not in found:
                self.audit.append("integrity.cleared", finding.module, {"kind": finding.kind})
                if finding.kind != "unregistered":
                    self.attestor.refused.discard(finding.module)
        self.active = found
        self.passes += 1
        return list(found.values())

    def _registrations_against_audit(self, registrations: dict[str, Registration]) -> dict[str, str]:
        """The registry is a plain SQLite file; the audit log is hash-chained. Every registration must equal what
        the runtime recorded in the audit log when it created the module, or someone edited the registry."""
        # Only the records appended since the last pass are read: the log grows for the device's whole life.
        for record in self.audit.records(since=self._audit_seen):
            self._audit_seen = record.seq
            if record.kind == "module.created" and record.module is not None:
                self._created[record.module] = dict(record.detail)
            elif record.kind == "module.removed" and record.module is not None:
                self._created.pop(record.module, None)
        recorded = self._created
        problems: dict[str, str] = {}
        for name, reg in registrations.items():
            if not reg.engine_id:
                continue
            want = recorded.get(name)
            if want is None:
                problems[name] = f"registration of {name} has no creation record in the audit log"
                continue
            for field, have in (("engine_id", reg.engine_id), ("image_id", reg.image_id),
                                ("generation_id", reg.generation_id)):
                if want.get(field) != have:
                    problems[name] = f"registration of {name}: {field} differs from the audit log's creation record"
                    break
        return problems

    async def _apply(self, finding: Finding) -> None:
        if self.policy == "log":
            return
        if finding.kind != "unregistered":
            self.attestor.refused.add(finding.module)  # both "stop" and "refuse" stop answering it
        if self.policy == "stop":
            try:
                await self.engine.stop(finding.module, timeout=5.0)
                self.audit.append("integrity.stopped", finding.module, {"kind": finding.kind})
            except EngineError as e:
                log.error("integrity: could not stop %s: %s", finding.module, e.message)
