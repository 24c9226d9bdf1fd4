"""The audit log's chain and MACs catch any edit, deletion, reordering or truncation done behind its back, with
the attacker holding everything but the audit key. (Rollback and wipe against a TPM counter, and the keys and TPM
services over their sockets: tests/integration/test_audit_anchor.py.)"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeward.attest.audit import AuditLog, record_hash
from edgeward.attest.audit_chain import parse_head, render_head, sign_head
from edgeward.attest.audit_key import AuditKey

KEY = AuditKey(bytes(range(32)))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(tmp_path / "audit", KEY)
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


def _rechain(home: Path) -> None:
    """Recompute every hash with the log's own record_hash and write a head naming the new last record, as an
    attacker who knows the code but not the key would."""
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    prev, seq = "0" * 64, 0
    for seq, ts, kind, module, detail in db.execute(
            "SELECT seq, ts, kind, module, detail FROM audit ORDER BY seq").fetchall():
        digest = record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=json.loads(detail))
        db.execute("UPDATE audit SET prev_hash=?, hash=? WHERE seq=?", (prev, digest, seq))
        prev = digest
    db.close()
    head = parse_head((home / "audit.head").read_text())
    assert not isinstance(head, str)
    (home / "audit.head").write_text(json.dumps({"seq": seq, "hash": prev, "counter": None, "mac": head.mac}))


def test_intact_log_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.records == 5 and result.head == log.head()[1]
    assert all(r.mac for r in log.records())


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


@pytest.mark.parametrize(("sql", "problem"), [
    (["UPDATE audit SET kind='benign' WHERE seq=3"], "record 3 was rewritten: its MAC does not match"),
    (["DELETE FROM audit WHERE seq=2", "UPDATE audit SET seq=seq-1 WHERE seq>2"], "record 2 was rewritten"),
    (["DELETE FROM audit WHERE seq>3"], "the head file was forged or altered"),
    (["UPDATE audit SET mac=NULL, kind='benign' WHERE seq=3"], "record 4 was rewritten"),
    (["UPDATE audit SET mac=NULL", "UPDATE audit SET kind='benign' WHERE seq=3"], "the head file was forged"),
])
def test_a_recomputed_chain_does_not_pass_without_the_key(log: AuditLog, tmp_path: Path, sql: list[str],
                                                          problem: str) -> None:
    _tamper(tmp_path / "audit", *sql)
    _rechain(tmp_path / "audit")
    result = log.verify()
    assert not result.ok and problem in (result.problem or ""), result


def test_a_record_mac_does_not_serve_as_a_head(log: AuditLog, tmp_path: Path) -> None:
    """Cutting the tail and dressing the last kept record's own MAC up as a head: MACs are per domain."""
    home = tmp_path / "audit"
    kept = log.records()[2]
    _tamper(home, "DELETE FROM audit WHERE seq>3")
    (home / "audit.head").write_text(json.dumps({"seq": 3, "hash": kept.hash, "counter": None, "mac": kept.mac}))
    result = log.verify()
    assert not result.ok and "forged or altered" in (result.problem or "")


def test_an_old_format_head_is_refused_once_the_log_was_anchored(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", KEY, anchored=True)
    audit.append("a")
    seq, digest = audit.head()
    (tmp_path / "audit" / "audit.head").write_text(f"{seq} {digest}\n")
    result = audit.verify()
    assert not result.ok and "authenticated head is gone" in (result.problem or "")
    audit.close()


def test_a_log_written_before_the_key_is_adopted_and_then_protected(tmp_path: Path) -> None:
    """An upgrade: records and an old-format head, no MACs. The first start anchors them under a MAC'd head."""
    home = tmp_path / "audit"
    old = AuditLog(home, KEY)
    old.append("legacy")
    old.close()
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET mac=NULL")
    seq, digest = db.execute("SELECT seq, hash FROM audit").fetchone()
    db.close()
    (home / "audit.head").write_text(f"{seq} {digest}\n")
    upgraded = AuditLog(home, KEY)
    assert upgraded.verify().unanchored
    upgraded.start()
    upgraded.append("after")
    assert upgraded.verify().ok and upgraded.marks == (True, False)
    upgraded.close()


def test_a_crash_between_commit_and_head_update_is_no_false_alarm(log: AuditLog, tmp_path: Path) -> None:
    home = tmp_path / "audit"
    before = (home / "audit.head").read_bytes()
    log.append("committed.then.crash")
    (home / "audit.head").write_bytes(before)  # the head write never happened
    result = log.verify()
    assert result.ok and "not yet updated" in (result.note or "")


def test_the_crash_tolerance_does_not_admit_a_record_added_behind_edgewards_back(log: AuditLog,
                                                                                 tmp_path: Path) -> None:
    home = tmp_path / "audit"
    last = log.records()[-1]
    digest = record_hash(last.hash, 6, ts=1.0, kind="forged", module=None, detail={})
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    db.execute("INSERT INTO audit VALUES (6, 1.0, 'forged', NULL, '{}', ?, ?, NULL, ?)", (last.hash, digest, last.mac))
    db.close()
    result = log.verify()
    assert not result.ok and "record 6 was rewritten" in (result.problem or "")


def test_heads_render_and_parse_back() -> None:
    head = sign_head(KEY, 3, "ab" * 32, 7)
    assert parse_head(render_head(head).decode()) == head
    assert isinstance(parse_head("{not json"), str)
    assert repr(KEY) == "AuditKey(<redacted>)"


def test_appends_continue_the_chain_after_reopen(log: AuditLog, tmp_path: Path) -> None:
    log.close()
    again = AuditLog(tmp_path / "audit", KEY, anchored=True)
    record = again.append("edgeward.started")
    assert record.seq == 6 and again.verify().ok
    again.close()


def test_a_log_that_does_not_check_out_is_not_extended_under_a_head(log: AuditLog, tmp_path: Path) -> None:
    home = tmp_path / "audit"
    log.close()
    _tamper(home, "DELETE FROM audit WHERE seq=5")
    reopened = AuditLog(home, KEY, anchored=True)
    reopened.start()
    assert reopened.problem is not None and "cut off" in reopened.problem
    head_before = (home / "audit.head").read_bytes()
    reopened.append("edgeward.started")
    assert (home / "audit.head").read_bytes() == head_before and not reopened.verify().ok
    reopened.close()


def test_a_log_in_the_old_schema_keeps_its_records_and_is_anchored_on_upgrade(tmp_path: Path) -> None:
    """What the previous version left: seven columns, no MACs, a `<seq> <hash>` head file."""
    home = tmp_path / "audit"
    home.mkdir(mode=0o700)
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    db.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, module TEXT, "
               "detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
    prev = "0" * 64
    for seq in (1, 2):
        digest = record_hash(prev, seq, ts=float(seq), kind="old", module=None, detail={})
        db.execute("INSERT INTO audit VALUES (?, ?, 'old', NULL, '{}', ?, ?)", (seq, float(seq), prev, digest))
        prev = digest
    db.close()
    (home / "audit.head").write_text(f"2 {prev}\n")
    audit = AuditLog(home, KEY)
    audit.start()
    record = audit.append("edgeward.started")
    assert record.seq == 3 and record.prev_hash == prev and audit.verify().ok
    assert [r.kind for r in audit.records()] == ["old", "old", "edgeward.started"]
    audit.close()


def test_the_counter_index_is_a_setting_of_the_tpm_service(tmp_path: Path) -> None:
    from edgeward.config.problems import ConfigError
    from edgeward.tpm.settings import DEFAULT_AUDIT_COUNTER_INDEX, parse_tpmd_settings

    assert parse_tpmd_settings({}, tmp_path).audit_counter_index == DEFAULT_AUDIT_COUNTER_INDEX
    assert parse_tpmd_settings({"audit_counter_index": 0x01_00_00_42}, tmp_path).audit_counter_index == 0x01000042
    with pytest.raises(ConfigError, match="audit_counter_index"):
        parse_tpmd_settings({"audit_counter_index": 0x81_00_00_01}, tmp_path)


def _sqlite_memory_used() -> Callable[[], int] | None:
    """SQLite's own count of the memory it holds, from the library the sqlite3 module uses (None if that library
    is not the shared one ctypes can load: then there is nothing to read it from)."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None
    return lambda: int(lib.sqlite3_memory_used())


def test_appending_does_not_grow_memory(tmp_path: Path) -> None:
    """Each module lifecycle appends records, so the log only grows: its page cache must not grow with it (with
    SQLite's default cache, the daemon's memory grew with every module created and removed, up to 2 MB)."""
    memory_used = _sqlite_memory_used()
    if memory_used is None:
        pytest.skip("the sqlite3 module does not use a shared libsqlite3 this test can read")
    detail = {"detail": "x" * 2000}
    rows = 600  # ~1.3 MB of records

    plain = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)  # the same writes, default cache
    plain.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, detail TEXT)")
    before = memory_used()
    for seq in range(rows):
        plain.execute("INSERT INTO t VALUES (?, ?)", (seq, json.dumps(detail)))
    plain_growth = memory_used() - before
    plain.close()
    assert plain_growth > 1_000_000  # what the measure sees when the cache keeps every page

    audit = AuditLog(tmp_path / "audit", KEY)
    audit.append("first")
    before = memory_used()
    for i in range(rows):
        audit.append("runtime.module_created", f"m{i}", detail)
    growth = memory_used() - before
    assert audit.verify().ok
    audit.close()
    assert growth < 200_000, growth
