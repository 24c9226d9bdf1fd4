"""The integrity monitor: re-measures every module on a timer and on engine events, records each finding in the
audit log, and applies the configured policy.

Findings: a module whose engine object was replaced or whose image/binary changed since registration, an engine
object carrying Edgeward's label that Edgeward never registered (someone started a look-alike by hand), a
registered module whose object vanished. A finding is recorded once when it appears and once when it clears, not
on every pass.

A module the monitor could not measure for its own lack of resources (see `measure.measurer_short_of_resources`:
out of descriptors under a connection flood, out of memory, an I/O error) is no finding: the device would be
reported (and revoked by a Keylime verifier) for a load anyone can put on it. It is the monitor's own failure,
and fails closed in the other ways open to it: a finding the module already had stands until a measurement clears
it, attestation refuses the module's calls meanwhile (the measurement is not ok), the pass is retried with backoff,
and the failure is recorded (``integrity.monitor_error``, at most once per module per `REPORT_EVERY`, and again
once it has lasted `STALE_AFTER`; ``integrity.monitor_recovered`` when a measurement succeeds again) and shown by
`health()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..runtime.engine import EngineError, ModuleEngine
from ..runtime.registry import Registration, Registry
from ..tasks import cancel_all
from .audit import AuditLog, AuditRecord
from .measure import measure
from .pipeline import Attestor

__all__ = ["Finding", "IntegrityMonitor", "MonitorHealth", "Policy", "Unmeasured", "unresolved_monitor_errors"]

log = logging.getLogger(__name__)

Policy = Literal["log", "stop", "refuse"]
REPORT_EVERY = 600.0  # seconds between two records of one lasting failure to measure
STALE_AFTER = 120.0  # a failure to measure lasting this long is reported as persistent (and logged as an error)
RETRY_FIRST = 0.5  # seconds to the first retry of a pass that could not measure; doubled up to the period
_MEASURED_KINDS = frozenset({"binary_changed", "image_swapped", "engine_object_replaced"})
_PASS = ""  # the key of a whole pass that failed, among the modules' keys


@dataclass
class Unmeasured:
    """A module (or, under the key "", a whole pass) the monitor has not been able to measure since `since`."""

    error: str
    since: float = field(default_factory=time.time)  # wall clock, for people
    started: float = field(default_factory=time.monotonic)
    attempts: int = 1
    reported: float | None = None  # monotonic time of its last audit record; None: not recorded yet
    persistent_reported: bool = False

    @property
    def lasted(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class MonitorHealth:
    """What the monitor could not do: modules it cannot measure now (and since when), a pass that failed whole."""

    passes: int
    last_pass: float | None  # wall clock of the last pass that ran to its end
    unmeasured: dict[str, Unmeasured]
    pass_failure: Unmeasured | None

    @property
    def stale(self) -> bool:
        """Some module (or every module) has gone unmeasured for `STALE_AFTER` or longer."""
        failures = [*self.unmeasured.values(), *([self.pass_failure] if self.pass_failure else [])]
        return any(u.lasted >= STALE_AFTER for u in failures)


def unresolved_monitor_errors(records: Iterable[AuditRecord]) -> dict[str | None, Mapping[str, Any]]:
    """From the audit log: the monitor's failures to measure with no recovery recorded since, module (None: whole
    passes) -> the latest ``integrity.monitor_error`` detail. A start of the daemon closes them all (its monitor
    starts afresh). What `edgeward status` shows, from the log, whichever process asks."""
    unresolved: dict[str | None, Mapping[str, Any]] = {}
    for record in records:
        if record.kind == "integrity.monitor_error":
            unresolved[record.module] = record.detail
        elif record.kind == "integrity.monitor_recovered":
            unresolved.pop(record.module, None)
        elif record.kind == "edgeward.started":
            unresolved.clear()
    return unresolved


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
        self.last_pass: float | None = None
        self.unmeasured: dict[str, Unmeasured] = {}  # module (or _PASS) -> why it is not measured now
        self._retry = RETRY_FIRST
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

    def health(self) -> MonitorHealth:
        modules = {name: u for name, u in self.unmeasured.items() if name != _PASS}
        return MonitorHealth(self.passes, self.last_pass, modules, self.unmeasured.get(_PASS))

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except EngineError as e:  # nothing measured: as visible as any other failure to measure
                self._failed(_PASS, f"module engine unavailable: {e.message}")
            except Exception as e:  # the audit log or the registry could not be read: no pass, no finding either
                if self._failed(_PASS, f"integrity monitor pass failed: {e!r}"):
                    log.exception("integrity monitor pass failed")
            else:
                self._recovered(_PASS)
            self._wake.clear()
            delay = self.period
            if self.unmeasured:  # something went unmeasured: look again soon, backing off to the period
                delay, self._retry = min(self.period, self._retry), min(self.period, self._retry * 2)
            else:
                self._retry = RETRY_FIRST
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as the event fires
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _failed(self, key: str, error: str) -> bool:
        """Note that `key` (a module, or _PASS) could not be measured; record it in the audit log when it is new,
        when it has become persistent, and every REPORT_EVERY while it lasts. Whether it was recorded now."""
        u = self.unmeasured.get(key)
        if u is None:
            u = self.unmeasured[key] = Unmeasured(error)
        else:
            u.error = error
            u.attempts += 1
        persistent = u.lasted >= STALE_AFTER
        due = (u.reported is None or time.monotonic() - u.reported >= REPORT_EVERY
               or (persistent and not u.persistent_reported))
        if not due:
            return False
        (log.error if persistent else log.warning)(
            "integrity monitor: %s (%d attempts since %s%s)", error, u.attempts,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(u.since)), "; measurements are stale" if persistent
            else "; retrying")
        if self._record("integrity.monitor_error", key or None, {
                "error": error, "since": u.since, "attempts": u.attempts, "persistent": persistent}):
            u.reported = time.monotonic()
            u.persistent_reported = persistent
        return True

    def _recovered(self, key: str) -> None:
        u = self.unmeasured.get(key)
        if u is None:
            return
        if self._record("integrity.monitor_recovered", key or None, {
                "error": u.error, "since": u.since, "attempts": u.attempts, "seconds": round(u.lasted, 3)}):
            del self.unmeasured[key]  # else: told on the next pass (the audit log itself may be what failed)
            log.warning("integrity monitor: measuring %s again after %d failed attempts", key or "every module",
                        u.attempts)

    def _record(self, kind: str, module: str | None, detail: dict[str, Any]) -> bool:
        """The monitor's own trouble in the audit log, when it can write there (the descriptors it lacked to
        measure, it may lack to write too): whether it was written."""
        try:
            self.audit.append(kind, module, detail)
        except Exception as e:
            log.warning("integrity monitor: cannot record %s for %s in the audit log: %r", kind,
                        module or "the monitor", e)
            return False
        return True

    async def check(self) -> list[Finding]:
        """One pass over every registration and every labelled engine object; returns the current findings."""
        found: dict[tuple[str, str], Finding] = {}
        registrations = {r.name: r for r in self.registry.all()}
        for reg in registrations.values():
            if not reg.engine_id:
                continue  # being created right now
            result = await measure(self.engine, reg)
            if result.retryable:  # the monitor's failure, not the module's: what it had found stands
                self._failed(reg.name, result.finding or "not measured")
                found.update({key: f for key, f in self.active.items()
                              if f.module == reg.name and f.kind in _MEASURED_KINDS})
                continue
            self._recovered(reg.name)
            if not result.ok and result.kind is not None and result.kind != "gone":
                found[(reg.name, result.kind)] = Finding(result.kind, reg.name, result.finding or "")
        for gone in [name for name in self.unmeasured if name != _PASS and name not in registrations]:
            del self.unmeasured[gone]  # removed meanwhile: nothing left to measure
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
        self.last_pass = time.time()
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
            for column, have in (("engine_id", reg.engine_id), ("image_id", reg.image_id),
                                 ("generation_id", reg.generation_id)):
                if want.get(column) != have:
                    problems[name] = f"registration of {name}: {column} differs from the audit log's creation record"
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
