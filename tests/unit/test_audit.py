"""The audit log's hash chain catches any edit, deletion, reordering or truncation done behind its back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.attest.audit import AuditLog


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(tmp_path / "audit")
    for i in range(5):
        audit.append("integrity.image_swapped", f"m{i}", {"detail": f"finding {i}"})
    yield audit
    audit.close()


def _tamper(home: Path, *sql: str) -> None:
    """What an attacker with file access does: open the database directly and drop the guards first."""
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for statement in sql:
        db.execute(statement)
    db.close()


def test_intact_log_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.records == 5 and result.head == log.head()[1]


def test_updates_and_deletes_are_refused_by_the_database(log: AuditLog, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "audit" / "audit.db", isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET kind='x' WHERE seq=1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq=1")
    db.close()


@pytest.mark.parametrize(("sql", "problem"), [
    (["UPDATE audit SET detail='{\"detail\": \"nothing to see\"}' WHERE seq=3"], "record 3 was edited"),
    (["UPDATE audit SET module='other' WHERE seq=1"], "record 1 was edited"),
    (["DELETE FROM audit WHERE seq=2"], "record 2 is missing"),
    (["DELETE FROM audit WHERE seq=5"], "cut off"),
    (["UPDATE audit SET ts=ts+1 WHERE seq=4"], "record 4 was edited"),
])
def test_tampering_is_detected(log: AuditLog, tmp_path: Path, sql: list[str], problem: str) -> None:
    _tamper(tmp_path / "audit", *sql)
    result = log.verify()
    assert not result.ok
    assert problem in (result.problem or "")


def test_rewriting_a_record_and_its_hash_still_breaks_the_chain(log: AuditLog, tmp_path: Path) -> None:
    from edgeward.attest.audit import record_hash

    row = log.records()[1]
    forged = record_hash(row.prev_hash, row.seq, ts=row.ts, kind="benign", module=row.module, detail=row.detail)
    _tamper(tmp_path / "audit", f"UPDATE audit SET kind='benign', hash='{forged}' WHERE seq=2")
    result = log.verify()
    assert not result.ok and "record 3 does not follow record 2" in (result.problem or "")


def test_appends_continue_the_chain_after_reopen(log: AuditLog, tmp_path: Path) -> None:
    log.close()
    again = AuditLog(tmp_path / "audit")
    record = again.append("edgeward.started")
    assert record.seq == 6 and again.verify().ok
    again.close()
