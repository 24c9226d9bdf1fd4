"""N4b/N4c of the third review: a revocation received while the state file system was full lived only in the
process's memory; a restart (while full, or after the space came back with no start attempt in between) forgot it,
and the verifier, which sends its notice once, never revoked the device again. Now a reserve file beside the state
makes room for it, and what is still unwritten is written at stop."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeward.attest.audit import AuditLog
from edgeward.attest.audit_key import AuditKey
from edgeward.keylime.revoked import RevocationGate

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
FIELDS = {"agent_id": "a", "event_id": "ima.validation.ima-ng.not_in_allowlist"}


@contextlib.contextmanager
def _full_tmpfs(home: Path) -> Any:
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(home)], check=False)


def _fill(home: Path) -> None:
    with (home / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(4096))


def test_a_revocation_on_a_full_file_system_is_on_disk_for_the_next_start(tmp_path: Path) -> None:
    home = tmp_path / "keylime"
    with _full_tmpfs(home):
        audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
        gate = RevocationGate(home)
        gate.prepare()
        _fill(home)
        gate.revoke("ab" * 32, FIELDS, audit)
        restarted = RevocationGate(home)  # what the next start sees, with the disk still full
        assert restarted.refusal(None) is not None and restarted.current() is not None
        assert [r.kind for r in audit.records(since=0)] == ["keylime.revoked"]


def test_a_revocation_the_audit_log_could_not_take_is_recorded_at_stop(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "keylime"
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    gate = RevocationGate(home)
    gate.prepare()

    def db_full(*_a: Any, **_k: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as full:
        full.setattr(audit, "append", db_full)
        with pytest.raises(sqlite3.OperationalError):
            gate.revoke("cd" * 32, FIELDS, audit)
        assert gate.current() is not None  # the file, at least
        gate.write_down(audit)  # at stop, still full: it says so in the log, and does not raise
    gate.write_down(audit)  # at stop, with room
    assert [r.kind for r in audit.records(since=0)] == ["keylime.revoked"]
    assert RevocationGate(home).refusal(audit) is not None


def test_a_module_filling_the_disk_cannot_take_the_reserves_room_before_the_revocation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """N4d of the fourth review: the reserve was unlinked and only then the state written; a module writing in a
    loop took the freed room in between, in 2 of 5 runs, and after a reboot the swapped module started again. Here
    the racing writer runs exactly in that gap: whatever room appears before the second write is taken."""
    from edgeward import fsreserve

    home = tmp_path / "keylime"
    with _full_tmpfs(home):
        audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
        gate = RevocationGate(home)
        gate.prepare()
        _fill(home)
        real = fsreserve.atomic_write
        calls = 0

        def racing(path: Path, data: bytes, *a: Any, **k: Any) -> None:
            nonlocal calls
            calls += 1
            if calls > 1:
                with (home / f"racer{calls}").open("wb", buffering=0) as f, contextlib.suppress(OSError):
                    while True:
                        f.write(bytes(512))
            real(path, data, *a, **k)

        monkeypatch.setattr(fsreserve, "atomic_write", racing)
        gate.revoke("ef" * 32, FIELDS, audit)
        assert RevocationGate(home).current() is not None
