"""The audit log: append-only records of what the integrity monitor and the runtime saw, tamper-evident.

Records are hash-chained and each carries a MAC; the head file names the last one under a MAC of its own; with a
TPM, each record moves a monotonic counter whose value the head names. SQLite triggers refuse UPDATE and DELETE, but
whoever can write the files can drop them: what stops a rewrite is the audit key (kept by the keys service, see
:mod:`.audit_key`), and what stops a rollback or a wipe is the TPM counter. See :mod:`.audit_chain` for what is
checked and why no crash reads as tampering.

The daemon opens the log with :func:`~edgeward.attest.audit_open.open_audit_log`, which checks it before anything
is appended: a log that does not check out is never extended under a fresh head (that would launder the
tampering). It is kept as found, and later records are appended without MACs, so ``verify`` goes on reporting it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write, private_dir
from ..sqlite import Store
from .audit_chain import (
    FIRST,
    GENESIS,
    Head,
    Row,
    Verification,
    check_log,
    counter_text,
    parse_head,
    record_hash,
    render_head,
    sign_head,
)
from .audit_counter import AuditCounter
from .audit_key import AuditKey

__all__ = ["GENESIS", "AuditCounterUnavailable", "AuditLog", "AuditRecord", "Unrecorded", "Verification",
           "record_hash"]

log = logging.getLogger(__name__)

_MAX_CATCH_UP = 64  # increments owed to the TPM counter after it was unreachable; more means something is wrong
# SQLite's page cache for this connection. The default (2 MB) filled with every page appended, since the log only
# grows (every module created, started, stopped, removed adds records): the daemon's memory grew with use until
# then (0.9 of the 1.6 MB per 1,000 module lifecycles the soak benchmark saw). An append touches the last leaf and
# its few parents, a read of recent records the same, and verification reads every page once: a few pages do.
CACHE_KIB = 64


# Told of a record the log could not take (a full disk): kind, module, detail. See AuditLog.on_unrecorded.
Unrecorded = Callable[[str, "str | None", Mapping[str, Any]], None]


class AuditCounterUnavailable(RuntimeError):
    """The TPM counter the log is anchored to cannot be read at start: the log is neither judged nor extended."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    kind: str
    module: str | None
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str
    counter: int | None = None
    mac: str | None = None


class AuditLog:
    """``key`` authenticates (without it the log can be read, not appended to or verified); ``counter`` is the
    TPM's; ``anchored``/``counted`` are the key store's marks that the log was anchored (to the counter)."""

    def __init__(self, home: Path, key: AuditKey | None = None, counter: AuditCounter | None = None, *,
                 anchored: bool = False, counted: bool = False) -> None:
        self.home = private_dir(home)
        self._head_file = self.home / "audit.head"
        self._key = key
        self._counter = counter
        self._anchored = anchored
        self._counted = counted
        self._store = Store(
            self.home / "audit.db",
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, "
            "module TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, counter INTEGER, "
            "mac TEXT)",
            "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
            "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END")
        self._store.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._add_columns()
        self._head: Head | None = None  # the authenticated head, once started
        self._broken: str | None = None  # why the log is not extended under a head
        self._counter_behind = False
        self._unrecorded: list[Unrecorded] = []

    def on_unrecorded(self, listener: Unrecorded) -> None:
        """Call ``listener`` with each record an append fails to store (SQLite or the file system refused it: a
        full disk), before the append raises. Why: what depends on a record being in the log (the Keylime agent's
        measurement list, which reports integrity findings to its verifier) must not be silenced by the very
        condition that kept it out. The listener is called on the appender's thread and must not block."""
        self._unrecorded.append(listener)

    def _add_columns(self) -> None:
        """Logs written before records carried MACs: their rows stay as they are, covered by the chain."""
        with self._store.read() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
            for column in ("counter INTEGER", "mac TEXT"):
                if column.split()[0] not in have:
                    db.execute(f"ALTER TABLE audit ADD COLUMN {column}")

    @property
    def problem(self) -> str | None:
        """Why this log, as found at start, did not check out (it is then not extended under a head)."""
        return self._broken

    @property
    def marks(self) -> tuple[bool, bool]:
        """Whether the log is now anchored, and anchored to the TPM counter (for the key store's marks)."""
        head = self._head
        return head is not None, head is not None and isinstance(head.counter, int)

    def head(self) -> tuple[int, str]:
        with self._store.read() as db:
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    # reading ---------------------------------------------------------------------------------------------------
    def _rows(self, db: sqlite3.Connection) -> list[Row]:
        return db.execute("SELECT seq, ts, kind, module, detail, prev_hash, hash, counter, mac FROM audit "
                          "ORDER BY seq").fetchall()

    def records(self, since: int = 0, limit: int | None = None) -> list[AuditRecord]:
        query = ("SELECT seq, ts, kind, module, detail, prev_hash, hash, counter, mac FROM audit WHERE seq > ? "
                 "ORDER BY seq")
        params: tuple[Any, ...] = (since,)
        if limit is not None:
            query += " LIMIT ?"
            params = (since, limit)
        with self._store.read() as db:
            rows = db.execute(query, params).fetchall()
        return [AuditRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    def _read_head(self) -> Head | str | None:
        try:
            return parse_head(self._head_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return "the head file cannot be read"

    def _verify_locked(self, *, starting: bool = False) -> Verification:
        rows = self._rows(self._store.db)
        tpm_value: int | None = None
        if self._counter is not None:
            try:
                tpm_value = self._counter.read()
            except Exception as e:
                if starting:  # an unreachable TPM is no finding about the log: do not start on a guess
                    raise AuditCounterUnavailable(
                        f"the TPM audit counter cannot be read ({self._counter.description}): {e}") from e
                return Verification(False, len(rows), rows[-1][6] if rows else GENESIS,
                                    f"the TPM audit counter cannot be read ({self._counter.description}): {e}")
        return check_log(rows, self._read_head(), self._key, counter_expected=self._counter is not None,
                         tpm_value=tpm_value, anchored=self._anchored, counted=self._counted)

    def verify(self) -> Verification:
        with self._store.lock:
            return self._verify_locked()

    # starting --------------------------------------------------------------------------------------------------
    def start(self) -> Verification:
        """Check the log as found and finish what a crash left undone; adopt a log that was never anchored; anchor
        to the TPM counter when there is one. A log that does not check out is left as it is (see the module doc)."""
        if self._key is None:
            raise RuntimeError("the audit log needs its key to be started")
        with self._store.lock:
            return self._start_locked(self._key)

    def _start_locked(self, key: AuditKey) -> Verification:
        found = self._verify_locked(starting=True)
        if not found.ok and not found.unanchored:
            self._broken = found.problem
            log.error("the audit log does not check out: %s; it is kept as found and not extended under a head "
                      "(edgeward audit verify shows it)", found.problem)
            return found
        rows = self._rows(self._store.db)
        last_seq, last_hash = (rows[-1][0], rows[-1][6]) if rows else (0, GENESIS)
        if found.unanchored:
            log.info("anchoring the audit log: %d record(s) under an authenticated head", last_seq)
            self._write_head(sign_head(key, last_seq, last_hash, None))
        elif found.pending_head:
            self._write_head(sign_head(key, last_seq, last_hash, rows[-1][7]))
        else:
            head = self._read_head()
            assert isinstance(head, Head)
            self._head = head
        assert self._head is not None
        if found.pending_increment and isinstance(self._head.counter, int):
            self._advance(self._head.counter, last_seq)
        if self._counter is not None and self._head.counter in (None, FIRST):
            self._anchor_to_counter(key, self._counter)
        return found

    def _anchor_to_counter(self, key: AuditKey, counter: AuditCounter) -> None:
        head = self._head
        assert head is not None
        if head.counter is None:
            self._write_head(sign_head(key, head.seq, head.hash, FIRST))
        value = counter.read()
        if value is None:
            value = counter.increment()
        self._write_head(sign_head(key, head.seq, head.hash, value))
        log.info("the audit log is anchored to %s at value %d", counter.description, value)

    def _write_head(self, head: Head) -> None:
        atomic_write(self._head_file, render_head(head))
        self._head = head

    # appending -------------------------------------------------------------------------------------------------
    def append(self, kind: str, module: str | None = None, detail: Mapping[str, Any] | None = None) -> AuditRecord:
        if self._key is None:
            raise RuntimeError("this audit log was opened without its key: it can be read, not appended to")
        detail = dict(detail or {})
        try:
            return self._append(self._key, kind, module, detail)
        except (OSError, sqlite3.Error):
            for listener in self._unrecorded:
                try:
                    listener(kind, module, detail)
                except Exception:
                    log.exception("audit log: a listener for unrecorded records failed")
            raise

    def _append(self, key: AuditKey, kind: str, module: str | None, detail: dict[str, Any]) -> AuditRecord:
        with self._store.lock:
            if self._head is None and self._broken is None:
                self._start_locked(key)
            head = self._head if self._broken is None else None
            if head is not None and self._counter_behind:
                self._catch_up()
            counter = head.counter + 1 if head is not None and isinstance(head.counter, int) else None
            with self._store.transaction() as db:
                row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS)
                ts = time.time()
                digest = record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=detail)
                mac = key.mac("record", seq, digest, counter_text(counter)) if head is not None else None
                db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq, ts, kind, module, json.dumps(detail, sort_keys=True), prev, digest, counter, mac))
            if head is not None:
                self._write_head(sign_head(key, seq, digest, counter))
                if counter is not None:
                    self._advance(counter, seq)
        return AuditRecord(seq, ts, kind, module, detail, prev, digest, counter, mac)

    def _advance(self, expected: int, seq: int) -> None:
        """Move the TPM counter to the head's value before the next record. If the TPM cannot be reached, the
        record stays (losing it would be worse) and the counter is caught up before the next one."""
        assert self._counter is not None
        try:
            value = self._counter.increment()
        except Exception as e:
            self._counter_behind = True
            log.error("could not move the TPM audit counter for record %d (%s); trying again before the next "
                      "record", seq, e)
            return
        if value != expected:
            self._broken = (f"the TPM audit counter read {value} after the increment for record {seq}, where "
                            f"{expected} was expected: something else moves it")
            log.error("%s; the audit log is no longer extended under a head", self._broken)

    def _catch_up(self) -> None:
        assert self._counter is not None and self._head is not None and isinstance(self._head.counter, int)
        target = self._head.counter
        try:
            value = self._counter.read()
            for _ in range(_MAX_CATCH_UP):
                if value is not None and value >= target:
                    break
                value = self._counter.increment()
        except Exception as e:
            log.error("the TPM audit counter is still out of reach (%s)", e)
            return
        self._counter_behind = False
        if value != target:
            self._broken = f"the TPM audit counter reads {value} where the log's head is at {target}"
            log.error("%s; the audit log is no longer extended under a head", self._broken)

    def close(self) -> None:
        self._store.close()
