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

A full disk must not hide a finding (A4 of the break-this review: the finding could not be appended to the audit
log, so it never reached the list, and the verifier went on reporting PASS). So:

- a finding the audit log could not take reaches the list all the same: the log tells the list of it
  (:meth:`~edgeward.attest.audit.AuditLog.on_unrecorded`), and it is held in memory and in the journal inline;
- a journal write that fails for want of room first frees a reserve file kept beside the journal (preallocated, made
  again once there is room) and is tried again in the room it held;
- a journal that still cannot be written does not hold the PCR back: the entries are extended and served from
  memory, and the journal is written at the next sync that can. Write-ahead is given up for them, knowingly: a
  restart of Edgeward before the journal is written finds PCR 10 beyond the rebuilt list, refuses to start the agent,
  and the device fails attestation rather than pass.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..attest.audit import AuditLog, AuditRecord
from ..fsreserve import Reserve
from .entries import entries_of, finding_kind, unrecorded_entry
from .ima import IMA_PCR, ImaEntry, replay
from .tpm_ops import extend_measurement, read_pcr, reset_count

__all__ = ["MeasurementList", "MeasurementListBroken", "TpmRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ZERO = bytes(32)
RESERVE_BYTES = 256 * 1024  # the room kept for the journal (its items are a few dozen bytes each)
Item = int | ImaEntry  # an audit record's seq, or an entry the audit log could not take, held inline


class TpmRunner(Protocol):
    def run_exclusive(self, op: Callable[[Any], T]) -> Awaitable[T]: ...


class MeasurementListBroken(RuntimeError):
    """PCR 10 holds a value this list cannot explain: the agent must not serve it."""


@dataclass
class _Journal:
    reset_count: int
    boottime: int
    cursor: int  # the last audit record read
    items: list[Item] = field(default_factory=list)  # what this boot's list holds, in order

    def dump(self) -> bytes:
        items = [i if isinstance(i, int) else {"path": i.path, "sha256": i.sha256} for i in self.items]
        return json.dumps({"version": 2, "reset_count": self.reset_count, "boottime": self.boottime,
                           "cursor": self.cursor, "seqs": items}).encode()

    @classmethod
    def load(cls, path: Path) -> _Journal | None:
        try:
            doc = json.loads(path.read_bytes())
            return cls(int(doc["reset_count"]), int(doc["boottime"]), int(doc["cursor"]),
                       [_item(i) for i in doc["seqs"]])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise MeasurementListBroken(f"the measurement list's journal {path} is unreadable ({e}); PCR {IMA_PCR} "
                                        "cannot be explained until the next reboot") from None


def _item(value: Any) -> Item:
    if isinstance(value, Mapping):
        return ImaEntry(str(value["path"]), str(value["sha256"]))
    return int(value)


class MeasurementList:
    def __init__(self, audit: AuditLog, journal: Path, tpm: TpmRunner) -> None:
        self.audit = audit
        self.path = journal
        self.reserve = journal.with_name(f"{journal.stem}.reserve")
        self._reserve = Reserve(self.reserve, RESERVE_BYTES)
        self.tpm = tpm
        self._journal: _Journal | None = None
        self._entries: list[ImaEntry] = []  # journal order; the PCR holds the first `_extended`
        self._lines: list[str] = []
        self._extended = 0
        self._pcr = _ZERO
        self._lock = asyncio.Lock()
        self._unsaved = False  # the journal on disk is behind the one in memory
        self._unsaved_logged = False
        # findings the audit log could not take, as its listener was told of them (on the appender's thread)
        self._unrecorded: deque[tuple[tuple[str, str | None], ImaEntry]] = deque()
        self._noted: set[tuple[str, str | None]] = set()
        audit.on_unrecorded(self._note_unrecorded)

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
                self._adopt(self._entries_of(journal.items))
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
                self._journal = _Journal(count, int(time.time()), head, list(self._initial_seqs(head)))
                self._write(self._journal)
                self._adopt(self._entries_of(self._journal.items))
                log.info("measurement list: new boot (TPM resetCount %d), %d entries", count, len(self._entries))
            await self._extend_pending()
        self._keep_reserve()
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

    def _entries_of(self, items: list[Item]) -> list[ImaEntry]:
        seqs = {i for i in items if isinstance(i, int)}
        found = {r.seq: r for r in self.audit.records(since=min(seqs) - 1) if r.seq in seqs} if seqs else {}
        missing = seqs - found.keys()
        if missing:
            raise MeasurementListBroken(f"the audit log lacks records {sorted(missing)[:5]} the measurement list "
                                        "was built from")
        return [e for i in items for e in (entries_of(found[i]) if isinstance(i, int) else [i])]

    def _adopt(self, entries: list[ImaEntry]) -> None:
        for entry in entries:
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
                                    f"rebuilt from the audit log ({len(self._entries)} entries): it was extended "
                                    "by someone else, or with entries whose journal could not be written (a full "
                                    "disk; see the log before the restart)")

    # growth -----------------------------------------------------------------------------------------------------
    async def sync(self) -> None:
        """Take in the audit records appended since the last call, and the findings the audit log could not take
        (each quote starts with this, so a finding reaches the verifier in its next quote)."""
        async with self._lock:
            journal = self._journal
            assert journal is not None, "start() first"
            records = self.audit.records(since=journal.cursor)
            wanted = [r for r in records if entries_of(r)]
            unrecorded = self._take_unrecorded(records)
            if records or unrecorded:
                self._journal = replace(journal, cursor=records[-1].seq if records else journal.cursor,
                                        items=[*journal.items, *(r.seq for r in wanted), *unrecorded])
                self._adopt([*(e for r in wanted for e in entries_of(r)), *unrecorded])
                self._unsaved = True
            if self._unsaved:
                self._save()  # before the PCR moves, if the disk lets it: see the module docstring
            self._keep_reserve()
            await self._extend_pending()

    def flush(self) -> None:
        """At stop: the journal, if a sync could not write it (a restart would otherwise find PCR 10 beyond the
        rebuilt list, and refuse to start the agent)."""
        if self._unsaved:
            self._save()

    def _save(self) -> None:
        assert self._journal is not None
        try:
            self._write(self._journal)
        except OSError as e:
            if not self._unsaved_logged:
                self._unsaved_logged = True
                log.error("measurement list: the journal %s cannot be written (%s); PCR %d is extended all the "
                          "same, from memory (a finding must reach the verifier), and the journal is written once "
                          "it can be. Until then a restart of Edgeward cannot rebuild the list, and the agent will "
                          "not start", self.path, e.strerror or e, IMA_PCR)
            return
        if self._unsaved_logged:
            log.warning("measurement list: the journal %s is written again", self.path)
        self._unsaved = self._unsaved_logged = False

    def _write(self, journal: _Journal) -> None:
        """The journal, atomically; short of room, in the room the reserve file held."""
        self._reserve.write(self.path, journal.dump())

    def _keep_reserve(self) -> None:
        """Keep :data:`RESERVE_BYTES` allocated beside the journal for the day the file system is full: made at
        start, and again at the first sync with room after it was given up (or removed)."""
        self._reserve.keep()

    # findings the audit log could not take ----------------------------------------------------------------------
    def _note_unrecorded(self, kind: str, module: str | None, detail: Mapping[str, Any]) -> None:
        """The audit log's listener (on the appender's thread): keep the finding for the next sync. The integrity
        monitor tries again at each pass; one entry per finding is enough."""
        key = (kind, module)
        if finding_kind(kind) is None or key in self._noted:
            return
        entry = unrecorded_entry(kind, module, detail, time.time())
        assert entry is not None
        self._noted.add(key)
        self._unrecorded.append((key, entry))
        log.error("measurement list: the audit log could not take %s of %s; it goes into PCR %d and the list all "
                  "the same", kind, module, IMA_PCR)

    def _take_unrecorded(self, records: list[AuditRecord]) -> list[ImaEntry]:
        """The findings noted since the last sync, but for those the audit log has taken meanwhile."""
        recorded = {(r.kind, r.module) for r in records}
        for record in records:  # recorded at last, or cleared: a later failure to record it is noted afresh
            self._noted.discard((record.kind, record.module))
            if record.kind == "integrity.cleared":
                self._noted.discard((f"integrity.{record.detail.get('kind')}", record.module))
        taken = []
        while self._unrecorded:
            key, entry = self._unrecorded.popleft()
            if key not in recorded:
                taken.append(entry)
        return taken

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
