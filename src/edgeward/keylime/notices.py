"""What happens to one revocation notice: counted, recorded, or acted on, and why (the checklist in
:mod:`.revocation`'s docstring, one named step each).

Counted (one summary per window, :mod:`.notice_tally`): every notice the operator's configuration does not vouch
for, and every notice about another agent. Anyone holding a client certificate from the verifier's CA can post those
as fast as they like, so none of them costs an audit record of its own. Recorded one by one: the vouched-for notices
about this agent, which only the verifier's RevocationNotifier key can make: ``keylime.revocation`` (a fresh
revocation, acted on when ``revocation_action = "stop_modules"``), ``keylime.revocation_replayed`` (seen before),
``keylime.revocation_stale`` (dated before the floor) and ``keylime.notice`` (another type, such as ``comm_error``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsutil import atomic_write
from .revocation import EVENT_TIME_SLACK, Notice, check_notice, event_time, load_trust, notice_floor

if TYPE_CHECKING:
    from ..attest.audit import AuditLog
    from .notice_tally import UnverifiedTally
    from .revoked import RevocationGate
    from .settings import KeylimeSettings

__all__ = ["SEEN_EVENTS", "NoticeHandler"]

log = logging.getLogger(__name__)
SEEN_EVENTS = 1024  # vouched-for notices remembered against replays


class NoticeHandler:
    def __init__(self, settings: KeylimeSettings, home: Path, audit: AuditLog, tally: UnverifiedTally, *,
                 gate: RevocationGate, on_revoked: Callable[[], Awaitable[None]] | None) -> None:
        self.settings, self.home, self.audit, self.tally = settings, home, audit, tally
        self.gate, self.on_revoked = gate, on_revoked
        self._seen_here: set[str] = set()  # what this process saw, whether or not it reached the file

    async def handle(self, body: Any, agent_uuid: str) -> None:
        """Raises ValueError only for a body that is no notice at all."""
        trust = load_trust(self.settings.revocation_cert, self.home / "revocation-cert.pem")
        notice = check_notice(body, trust)
        if not notice.trusted:
            self.tally.add(body, notice.audit_detail())
            return
        if not agent_uuid or notice.fields.get("agent_id") != agent_uuid:
            self.tally.add(body, {**notice.audit_detail(), "check": f"{notice.why}; about another agent"})
            return
        kind, why_not = self._judge(notice, hashlib.sha256(body["msg"].encode()).hexdigest())
        detail = notice.audit_detail() | ({"not_acted_on": why_not} if why_not else {})
        self._record(kind, detail)
        log.warning("keylime: verified notice (%s) from the verifier: %s %s%s", notice.why, notice.fields.get("type"),
                    notice.fields.get("event_id"), f"; not acted on: {why_not}" if why_not else "")
        if why_not is None and self.settings.revocation_action == "stop_modules":
            await self._act(hashlib.sha256(body["msg"].encode()).hexdigest(), notice)

    def _judge(self, notice: Notice, digest: str) -> tuple[str, str | None]:
        """(the audit kind, why it is not acted on or None)."""
        kind = notice.fields.get("type")
        if kind != "revocation":
            return "keylime.notice", f"its type is {kind!r}, not 'revocation'"
        when = event_time(notice.fields)
        floor = notice_floor(self.home)
        if when is None:
            return "keylime.revocation_stale", "its event_time is not a time"
        if when < floor - EVENT_TIME_SLACK:
            return "keylime.revocation_stale", "it is dated before the last bootstrap or clearing of a revocation"
        if not self._first_sighting(digest):
            return "keylime.revocation_replayed", "it was received before"
        return "keylime.revocation", None

    async def _act(self, digest: str, notice: Notice) -> None:
        try:  # first: nothing starts again from here on
            self.gate.revoke(digest, notice.fields, self.audit)
        except Exception:  # a full disk must not also keep the modules running
            log.exception("keylime: could not persist the revocation; stopping the modules all the same")
        if self.on_revoked is not None:
            await self.on_revoked()
        self._record("keylime.revocation_acted", {"action": "stop_modules"})

    def _record(self, kind: str, detail: dict[str, Any]) -> None:
        """A record the log cannot take (a full disk) is logged instead: the verifier's one notice must still be
        acted on, and the agent keeps answering (its quotes then show the measurement list from memory)."""
        try:
            self.audit.append(kind, None, detail)
        except Exception:
            log.exception("keylime: could not record %s in the audit log; %s", kind, detail)

    def _first_sighting(self, digest: str) -> bool:
        """Whether this signed notice is new (``digest``: of its signed text; Keylime's own event_id names the kind
        of failure, not the event); remembered across restarts, the last ones only."""
        path = self.home / "revocations-seen.json"
        try:
            seen: list[str] = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            seen = []
        if digest in seen or digest in self._seen_here:
            return False
        if len(self._seen_here) >= SEEN_EVENTS:
            self._seen_here.clear()  # the file keeps the last ones; this set only covers what the file could not
        self._seen_here.add(digest)
        try:
            atomic_write(path, json.dumps([*seen, digest][-SEEN_EVENTS:]).encode())
        except OSError:  # a full disk: a replay is then refused by memory until the next restart
            log.exception("keylime: could not remember the notice on disk; it is remembered until the next restart")
        return True
