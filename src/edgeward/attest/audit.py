"""The audit log: append-only, hash-chained records of what the integrity monitor and the runtime saw.

Each record carries the hash of the one before it, so editing or deleting any record breaks every hash after it;
the head (last sequence number and hash) is also kept in a separate file, so cutting records off the end is caught
too. SQLite triggers refuse UPDATE and DELETE, so only someone bypassing Edgeward can change history — and
`verify` tells.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write, private_dir
from ..sqlite import Store

__all__ = ["GENESIS", "AuditLog", "AuditRecord", "Verification", "record_hash"]

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    kind: str
    module: str | None
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    head: str
    problem: str | None = None


def record_hash(prev_hash: str, seq: int, *, ts: float, kind: str, module: str | None,
                detail: Mapping[str, Any]) -> str:
    body = json.dumps([seq, repr(ts), kind, module, detail], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()


class AuditLog:
    def __init__(self, home: Path) -> None:
        self.home = private_dir(home)
        self._head_file = self.home / "audit.head"
        self._store = Store(
            self.home / "audit.db",
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, "
            "module TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
            "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
            "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
            "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END")

    def head(self) -> tuple[int, str]:
        with self._store.read() as db:
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def append(self, kind: str, module: str | None = None, detail: Mapping[str, Any] | None = None) -> AuditRecord:
        detail = dict(detail or {})
        with self._store.lock:  # the head file is written in the order the records are
            with self._store.transaction() as db:
                row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS)
                ts = time.time()
                digest = record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=detail)
                db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (seq, ts, kind, module, json.dumps(detail, sort_keys=True), prev, digest))
            atomic_write(self._head_file, f"{seq} {digest}\n".encode())
        return AuditRecord(seq, ts, kind, module, detail, prev, digest)

    def records(self, since: int = 0, limit: int | None = None) -> list[AuditRecord]:
        query = "SELECT seq, ts, kind, module, detail, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (since,)
        if limit is not None:
            query += " LIMIT ?"
            params = (since, limit)
        with self._store.read() as db:
            rows = db.execute(query, params).fetchall()
        return [AuditRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def verify(self) -> Verification:
        prev, expected_seq, count = GENESIS, 1, 0
        with self._store.read() as db:
            rows = db.execute(
                "SELECT seq, ts, kind, module, detail, prev_hash, hash FROM audit ORDER BY seq").fetchall()
        for seq, ts, kind, module, detail_text, prev_hash, digest in rows:
            if seq != expected_seq:
                return Verification(False, count, prev, f"record {expected_seq} is missing (next is {seq})")
            if prev_hash != prev:
                return Verification(False, count, prev, f"record {seq} does not follow record {seq - 1}")
            try:
                detail = json.loads(detail_text)
            except json.JSONDecodeError:
                return Verification(False, count, prev, f"record {seq} has a damaged detail field")
            if record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=detail) != digest:
                return Verification(False, count, prev, f"record {seq} was edited (its hash does not match)")
            prev, expected_seq, count = digest, expected_seq + 1, count + 1
        try:
            head_seq, head_hash = self._head_file.read_text().split()
        except FileNotFoundError:
            head_seq, head_hash = "0", GENESIS
        except ValueError:
            return Verification(False, count, prev, "the head file is damaged")
        if int(head_seq) != count or head_hash != prev:
            return Verification(False, count, prev, f"the log ends at record {count} but its head says record "
                                                    f"{head_seq}: records were cut off or the head was altered")
        return Verification(True, count, prev)

    def close(self) -> None:
        self._store.close()
