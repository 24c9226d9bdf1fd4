"""What `edgeward status` says of the integrity monitor's failures to measure: those the audit log shows no
recovery from (a module unmeasured under a descriptor flood, break-this review A2, is no finding but must not look
measured either)."""

from __future__ import annotations

from pathlib import Path

from edgeward.attest.audit import AuditLog
from edgeward.attest.audit_key import AuditKey
from edgeward.attest.monitor import unresolved_monitor_errors


def test_status_shows_the_monitor_errors_not_recovered_from_since_the_daemon_started(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", AuditKey(bytes(range(32))))
    try:
        log.append("integrity.monitor_error", "old", {"error": "before a restart"})
        log.append("edgeward.started", None, {})
        log.append("integrity.monitor_error", "sensor", {"error": "EMFILE", "attempts": 1})
        log.append("integrity.monitor_error", None, {"error": "pass failed"})
        log.append("integrity.monitor_error", "camera", {"error": "EIO", "attempts": 1})
        log.append("integrity.monitor_error", "camera", {"error": "EIO", "attempts": 9, "persistent": True})
        log.append("integrity.monitor_recovered", "sensor", {"attempts": 3})
        unresolved = unresolved_monitor_errors(log.records())
    finally:
        log.close()
    assert unresolved == {None: {"error": "pass failed"}, "camera": {"error": "EIO", "attempts": 9, "persistent": True}}
