"""A verified revocation that stands until an operator clears it: while it does, no module is created or started.

Stopping the modules when the notice arrives is not enough: a deployment re-creates them, the watchdog restarts
the edge agent, an Edgeward restart starts them again. So the notice leaves a state in the agent's state dir,
written durably (``revoked.json``: the notice's digest, when, what it said) and an audit record
(``keylime.revoked``), and the runtime consults this gate (:class:`edgeward.runtime.start_gate.StartGate`) before
every start.

Clearing: ``edgeward attest keylime-clear-revocation`` writes ``revocation-clear.json`` naming the digest it clears
(a later revocation is never cleared by an earlier request). The audit log has one writer, the daemon, so the CLI
does not append to it: the daemon records ``keylime.revocation_cleared`` (with who asked, and when) the next time
the gate is consulted, before it lets that start pass. If the record cannot be written, the device stays revoked.
The clearing also raises the notice floor (:func:`.revocation.raise_notice_floor`): a genuine notice dated before
it, replayed later, is recorded and not obeyed again.

Offline tampering: deleting ``revoked.json`` does not clear anything. On its first consultation the gate reads the
audit log (MAC'd, chained, counter-anchored) for the latest ``keylime.revoked`` without a matching
``keylime.revocation_cleared``, and a revocation found there stands (and the file is written again).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsreserve import Reserve
from ..fsutil import atomic_write, private_dir, remove_durably
from .revocation import raise_notice_floor
from .statefiles import read_object, requester

if TYPE_CHECKING:
    from ..attest.audit import AuditLog

__all__ = ["CLEAR_COMMAND", "RevocationGate"]

log = logging.getLogger(__name__)
CLEAR_COMMAND = "edgeward attest keylime-clear-revocation"
_STATE, _CLEAR, _RESERVE = "revoked.json", "revocation-clear.json", "revoked.reserve"
RESERVE_BYTES = 64 * 1024  # a revoked.json is a few hundred bytes; a file system's block, and its rename, fit
REVOKED, CLEARED = "keylime.revoked", "keylime.revocation_cleared"


class RevocationGate:
    """The revoked state in ``home`` (the agent's state dir). Used by the daemon (revoke, refusal) and by the CLI
    (current, request_clear)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._audit_checked = False
        # A revocation this process received and could not yet write down (a full disk): it holds from memory and
        # is written at the next consultation that can.
        self._unwritten: dict[str, Any] | None = None
        self._reserve = Reserve(home / _RESERVE, RESERVE_BYTES)

    def prepare(self) -> None:
        """The daemon, at start: keep room for a revocation that arrives when the state file system is full (a
        restart must find it on disk: the verifier sends its notice once)."""
        private_dir(self.home)
        self._reserve.keep()

    # the daemon -------------------------------------------------------------------------------------------------
    def revoke(self, digest: str, fields: dict[str, Any], audit: AuditLog) -> None:
        """Persist the revocation (file first, then the audit record): from here on nothing starts."""
        state = {"digest": digest, "time": time.time(), "agent_id": fields.get("agent_id"),
                 "event_id": fields.get("event_id"), "event_time": fields.get("event_time")}
        self._unwritten = state  # first: from here on nothing starts, whatever can be written
        log.error("keylime: the verifier revoked this device (notice %s...): no module will be created or started "
                  "until an operator runs `%s`", digest[:16], CLEAR_COMMAND)
        self._write_down(audit)

    def _write_down(self, audit: AuditLog | None) -> None:
        """File first, then the audit record; each only once. Raises what the disk says."""
        state = self._unwritten
        if state is None:
            return
        if read_object(self.home / _STATE) != state:
            private_dir(self.home)
            self._reserve.write(self.home / _STATE, json.dumps(state).encode())
        if audit is None:
            return
        audit.append(REVOKED, None, state)
        self._unwritten = None
        self._reserve.keep()

    def write_down(self, audit: AuditLog | None) -> None:
        """What is still only in memory, written now if it can be (the daemon's stop); never raises."""
        if self._unwritten is None:
            return
        try:
            self._write_down(audit)
        except Exception:
            log.exception("keylime: the revocation could not be written down at stop; the audit log's record or "
                          "the state file is missing")

    def refusal(self, audit: AuditLog | None) -> str | None:
        if self._unwritten is not None:
            try:
                self._write_down(audit)
            except Exception as e:  # still full: the revocation holds from memory
                log.warning("keylime: the revocation is not written down yet (%s); it holds until it is", e)
                return _message(self._unwritten, "held in memory until it can be written down")
            if self._unwritten is not None:  # no audit log to record it in (the CLI's view)
                return _message(self._unwritten, None)
        try:
            state = self._state(audit)
        except (OSError, ValueError) as e:  # fail closed: a state that cannot be read is no permission to start
            return f"the device's Keylime revocation state cannot be read ({e}); {CLEAR_COMMAND} rewrites it"
        if state is None:
            return None
        clear = read_object(self.home / _CLEAR)
        if clear is not None and clear.get("digest") == state.get("digest"):
            if audit is None:
                return _message(state, "the clearing is recorded by the running Edgeward before a module starts")
            audit.append(CLEARED, None, {"digest": state.get("digest"), "requested_at": clear.get("time"),
                                         "by_uid": clear.get("uid"), "by_user": clear.get("user")})
            # a notice dated before the clearing is history, however genuine: replayed, it is not obeyed again
            raise_notice_floor(self.home, float(clear.get("time") or time.time()), "revocation cleared")
            remove_durably(self.home / _STATE)
            remove_durably(self.home / _CLEAR)
            log.warning("keylime: the revocation %s... was cleared by %s; modules may start again",
                        str(state.get("digest"))[:16], clear.get("user"))
            return None
        return _message(state, None)

    def _state(self, audit: AuditLog | None) -> dict[str, Any] | None:
        state = read_object(self.home / _STATE)
        if not self._audit_checked and audit is not None:
            from_log = _standing_in_log(audit)
            self._audit_checked = True
            if from_log is not None and (state is None or state.get("digest") != from_log.get("digest")):
                log.error("keylime: the audit log holds a revocation (%s...) the state dir does not; it stands",
                          str(from_log.get("digest"))[:16])
                private_dir(self.home)
                self._reserve.write(self.home / _STATE, json.dumps(from_log).encode())
                state = from_log
        return state

    # the CLI ------------------------------------------------------------------------------------------------------
    def current(self) -> dict[str, Any] | None:
        return read_object(self.home / _STATE)

    def request_clear(self) -> dict[str, Any] | None:
        """Ask the daemon to clear the standing revocation; None if there is none."""
        state = self.current()
        if state is None:
            return None
        request = {"digest": state.get("digest"), **requester()}
        atomic_write(self.home / _CLEAR, json.dumps(request).encode())
        return state


def _standing_in_log(audit: AuditLog) -> dict[str, Any] | None:
    standing: dict[str, Any] | None = None
    for record in audit.records(since=0):
        if record.kind == REVOKED:
            standing = dict(record.detail)
        elif record.kind == CLEARED and standing is not None and record.detail.get("digest") == standing.get("digest"):
            standing = None
    return standing


def _message(state: dict[str, Any], note: str | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(state.get("time") or 0)))
    text = (f"the device was revoked by its Keylime verifier at {when} (notice sha256 "
            f"{str(state.get('digest'))[:16]}..., {state.get('event_id')}): no module may be created or started "
            f"until an operator who has dealt with the cause runs `{CLEAR_COMMAND}`")
    return f"{text} ({note})" if note else text
