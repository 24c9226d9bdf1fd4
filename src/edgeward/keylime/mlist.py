"""The measurement list Keylime's verifier replays into PCR 10: Edgeward itself first, then each module creation
and each re-measurement finding, in ``ima-ng`` format.

Why a journal, and why it names audit records rather than holding entries: the entries are a function of the audit
log (:mod:`.entries`), which is hash-chained and MAC'd, so the journal only says *which* records this boot's list
holds (their sequence numbers) and how far the audit log has been read. After a restart of Edgeward the list is
rebuilt from those records and must replay to the PCR's value; after a reboot (a TPM Reset, seen as a new
resetCount, with PCR 10 back at zero) a new list starts.

Write-ahead: a record is added to the journal before PCR 10 is extended with it. A crash in between leaves the PCR
at a prefix of the list, which the next start finds and completes; a PCR that matches no prefix was extended by
someone else, and the agent refuses to serve a list that cannot be true.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..attest.audit import AuditLog, AuditRecord
from ..fsutil import atomic_write
from .entries import entries_of
from .ima import IMA_PCR, ImaEntry, replay
from .tpm_ops import extend_measurement, read_pcr, reset_count

__all__ = ["MeasurementList", "MeasurementListBroken", "TpmRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ZERO = bytes(32)


class TpmRunner(Protocol):
    def run_exclusive(self, op: Callable[[Any], T]) -> Awaitable[T]: ...


class MeasurementListBroken(RuntimeError):
    """PCR 10 holds a value this list cannot explain: the agent must not serve it."""


@dataclass
class _Journal:
    reset_count: int
    boottime: int
    cursor: int  # the last audit record read
    seqs: list[int] = field(default_factory=list)  # the records this boot's list holds, in order

    def dump(self) -> bytes:
        return json.dumps({"version": 1, "reset_count": self.reset_count, "boottime": self.boottime,
                           "cursor": self.cursor, "seqs": self.seqs}).encode()

    @classmethod
    def load(cls, path: Path) -> _Journal | None:
        try:
            doc = json.loads(path.read_bytes())
            return cls(int(doc["reset_count"]), int(doc["boottime"]), int(doc["cursor"]),
                       [int(s) for s in doc["seqs"]])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise MeasurementListBroken(f"the measurement list's journal {path} is unreadable ({e}); PCR {IMA_PCR} "
                                        "cannot be explained until the next reboot") from None


class MeasurementList:
    def __init__(self, audit: AuditLog, journal: Path, tpm: TpmRunner) -> None:
        self.audit = audit
        self.path = journal
        self.tpm = tpm
        self._journal: _Journal | None = None
        self._entries: list[ImaEntry] = []  # journal order; the PCR holds the first `_extended`
        self._lines: list[str] = []
        self._extended = 0
        self._pcr = _ZERO
        self._lock = asyncio.Lock()

    @property
    def boottime(self) -> int:
        assert self._journal is not None
        return self._journal.boottime

    def __len__(self) -> int:
        return len(self._entries)

    # start ------------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild this boot's list and check it against PCR 10, or start a new one after a reboot."""
        count, pcr = await self.tpm.run_exclusive(lambda e: (reset_count(e), read_pcr(e, IMA_PCR)))
        journal = _Journal.load(self.path)
        async with self._lock:
            if journal is not None and journal.reset_count == count:
                self._journal = journal
                self._adopt(self._records(journal.seqs))
                self._extended = self._prefix_matching(pcr)
                self._pcr = pcr
                log.info("measurement list: %d entries rebuilt from the audit log, %d in PCR %d", len(self._entries),
                         self._extended, IMA_PCR)
            else:
                if pcr != _ZERO:
                    raise MeasurementListBroken(
                        f"PCR {IMA_PCR} is not zero at the first start of this boot (TPM resetCount {count}): "
                        "something else extends it (a kernel running IMA, another agent), and a list of Edgeward's "
                        "alone would not replay to it")
                head, _ = self.audit.head()
                self._journal = _Journal(count, int(time.time()), head, self._initial_seqs(head))
                atomic_write(self.path, self._journal.dump())
                self._adopt(self._records(self._journal.seqs))
                log.info("measurement list: new boot (TPM resetCount %d), %d entries", count, len(self._entries))
            await self._extend_pending()
        await self.sync()

    def _initial_seqs(self, head: int) -> list[int]:
        """At the first start of a boot: the latest ``edgeward.started`` (Edgeward itself first), then the creation
        record of each module that exists now, in the order they were created."""
        started: AuditRecord | None = None
        created: dict[str, int] = {}
        for record in self.audit.records(since=0):
            if record.seq > head:
                break
            if record.kind == "edgeward.started":
                started = record
            elif record.kind == "module.created" and record.module:
                created[record.module] = record.seq
            elif record.kind == "module.removed" and record.module:
                created.pop(record.module, None)
        return ([started.seq] if started is not None else []) + sorted(created.values())

    def _records(self, seqs: list[int]) -> list[AuditRecord]:
        if not seqs:
            return []
        wanted = set(seqs)
        found = {r.seq: r for r in self.audit.records(since=min(seqs) - 1) if r.seq in wanted}
        missing = wanted - found.keys()
        if missing:
            raise MeasurementListBroken(f"the audit log lacks records {sorted(missing)[:5]} the measurement list "
                                        "was built from")
        return [found[s] for s in seqs]

    def _adopt(self, records: list[AuditRecord]) -> None:
        for record in records:
            for entry in entries_of(record):
                self._entries.append(entry)
                self._lines.append(entry.line())

    def _prefix_matching(self, pcr: bytes) -> int:
        value = _ZERO
        if pcr == value:
            return 0
        for i, entry in enumerate(self._entries):
            value = replay([entry], value)
            if value == pcr:
                return i + 1
        raise MeasurementListBroken(f"PCR {IMA_PCR} ({pcr.hex()[:16]}...) matches no prefix of the measurement list "
                                    f"rebuilt from the audit log ({len(self._entries)} entries)")

    # growth -----------------------------------------------------------------------------------------------------
    async def sync(self) -> None:
        """Take in the audit records appended since the last call (each quote starts with this, so a finding
        reaches the verifier in its next quote)."""
        async with self._lock:
            journal = self._journal
            assert journal is not None, "start() first"
            records = self.audit.records(since=journal.cursor)
            if records:
                wanted = [r for r in records if entries_of(r)]
                # The journal in memory moves only once the new one is on disk: a failed write (a full disk)
                # leaves the cursor where it was, so the next sync takes these records again rather than skip a
                # finding for good.
                grown = replace(journal, cursor=records[-1].seq, seqs=[*journal.seqs, *(r.seq for r in wanted)])
                atomic_write(self.path, grown.dump())  # before the PCR moves: see the module docstring
                self._journal = grown
                self._adopt(wanted)
            await self._extend_pending()

    async def _extend_pending(self) -> None:
        while self._extended < len(self._entries):
            entry = self._entries[self._extended]
            self._pcr = await self.tpm.run_exclusive(
                functools.partial(extend_measurement, before=self._pcr, digest=entry.pcr_digest))
            self._extended += 1

    # serving ----------------------------------------------------------------------------------------------------
    def lines_from(self, start: int) -> tuple[str, int]:
        """The list from entry ``start`` on, and the index it starts at. Every journalled entry is served, extended
        or not: a PCR that lags is tolerated by the verifier for one quote and fails the next, so an extend that
        never happens cannot hide a finding. A start beyond the end (the verifier knew a longer list: a reboot)
        serves the whole list from 0, which makes the verifier start its replay over."""
        if start < 0 or start > len(self._lines):
            start = 0
        return "".join(self._lines[start:]), start
