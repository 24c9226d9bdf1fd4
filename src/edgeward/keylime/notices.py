"""What happens to one revocation notice: counted, recorded, or acted on, and why (the checklist in
:mod:`.revocation`'s docstring, one named step each).

Counted (one summary per window, :mod:`.notice_tally`): every notice the operator's configuration does not vouch
for, and every notice about another agent. Anyone holding a client certificate from the verifier's CA can post those
as fast as they like, so none of them costs an audit record of its own. Recorded one by one: the vouched-for notices
about this agent, which only the verifier's RevocationNotifier key can make: ``keylime.revocation`` (a fresh
revocation, acted on when ``revocation_action = "stop_modules"``), ``keylime.revocation_replayed`` (seen before),
``keylime.revocation_stale`` (dated before the floor) and ``keylime.notice`` (another type, such as ``comm_error``).

Remembered against replays: the vouched-for notices, and also the revocations about this agent whose signature
verified with a certificate the agent holds but the configuration does not vouch for (the payload's, before
``revocation_cert`` is set): otherwise the verifier's one genuine notice, tallied while nothing vouched for it, is
obeyed when someone replays it after the operator configures ``revocation_cert`` (the second review's N2). Those go
to a list of their own (:data:`SEEN_UNTRUSTED`), so whoever holds that certificate's key cannot push the vouched-for
ones out; a notice that does not verify is never remembered (anyone could fill the list with those).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsutil import atomic_write
from .revocation import CLOCK_TOLERANCE, Notice, check_notice, event_time, load_trust, notice_floor

if TYPE_CHECKING:
    from ..attest.audit import AuditLog
    from .notice_tally import UnverifiedTally
    from .revoked import RevocationGate
    from .settings import KeylimeSettings

__all__ = ["SEEN_EVENTS", "SEEN_UNTRUSTED", "NoticeHandler"]

log = logging.getLogger(__name__)
SEEN_EVENTS = 1024  # vouched-for notices remembered against replays
SEEN_UNTRUSTED = 256  # authenticated revocations of this agent nothing vouched for, remembered likewise
_SEEN, _SEEN_UNTRUSTED = "revocations-seen.json", "revocations-seen-untrusted.json"


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
            if notice.authenticated and agent_uuid and notice.fields.get("agent_id") == agent_uuid \
                    and notice.fields.get("type") == "revocation":
                self._first_sighting(_digest(body), _SEEN_UNTRUSTED, SEEN_UNTRUSTED)
            self.tally.add(body, notice.audit_detail())
            return
        if not agent_uuid or notice.fields.get("agent_id") != agent_uuid:
            self.tally.add(body, {**notice.audit_detail(), "check": f"{notice.why}; about another agent"})
            return
        kind, why_not = self._judge(notice, _digest(body))
        detail = notice.audit_detail() | ({"not_acted_on": why_not} if why_not else {})
        self._record(kind, detail)
        log.warning("keylime: verified notice (%s) from the verifier: %s %s%s", notice.why, notice.fields.get("type"),
                    notice.fields.get("event_id"), f"; not acted on: {why_not}" if why_not else "")
        if why_not is None and self.settings.revocation_action == "stop_modules":
            await self._act(_digest(body), notice)

    def _judge(self, notice: Notice, digest: str) -> tuple[str, str | None]:
        """(the audit kind, why it is not acted on or None)."""
        kind = notice.fields.get("type")
        if kind != "revocation":
            return "keylime.notice", f"its type is {kind!r}, not 'revocation'"
        offset = self.settings.verifier_utc_offset
        when = event_time(notice.fields, offset)
        now = time.time()
        floor = notice_floor(self.home)
        if floor > now + CLOCK_TOLERANCE:
            # set while this device's clock ran ahead (a bad RTC, a spoofed time source): a floor in the future
            # would make every genuine notice stale, so it counts up to now only
            log.warning("keylime: the notice floor is %.0f min ahead of this device's clock (was the clock ahead at "
                        "the last enrolment or clearing?); judging notices against the present instead",
                        (floor - now) / 60)
            floor = now
        if when is None:
            return "keylime.revocation_stale", "its event_time is not a time"
        if when > now + CLOCK_TOLERANCE:
            log.warning("keylime: a verified notice is dated %.0f min after this device's clock: the verifier's "
                        "clock or [edgeward.keylime] verifier_utc_offset is wrong, and notices older than they look "
                        "pass the replay floor", (when - now) / 60)
        if when < floor - CLOCK_TOLERANCE:
            return "keylime.revocation_stale", (
                f"it is dated before the last bootstrap or clearing of a revocation (by {(floor - when) / 60:.0f} "
                f"min, reading its time as the verifier's at UTC{'-' if offset < 0 else '+'}{abs(offset) // 60:02d}:"
                f"{abs(offset) % 60:02d} "
                "([edgeward.keylime] verifier_utc_offset: set it if the verifier's local time is not that))")
        if self._seen(digest, _SEEN_UNTRUSTED) or not self._first_sighting(digest, _SEEN, SEEN_EVENTS):
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

    def _seen(self, digest: str, name: str) -> bool:
        try:
            seen = json.loads((self.home / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        return isinstance(seen, list) and digest in seen

    def _first_sighting(self, digest: str, name: str, keep: int) -> bool:
        """Whether this signed notice is new (``digest``: of its signed text; Keylime's own event_id names the kind
        of failure, not the event); remembered across restarts in ``name``, the last ``keep`` only."""
        path = self.home / name
        try:
            seen: list[str] = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            seen = []
        if digest in seen or digest in self._seen_here:
            return False
        if len(self._seen_here) >= SEEN_EVENTS:
            self._seen_here.clear()  # the files keep the last ones; this set only covers what they could not
        self._seen_here.add(digest)
        try:
            atomic_write(path, json.dumps([*seen, digest][-keep:]).encode())
        except OSError:  # a full disk: a replay is then refused by memory until the next restart
            log.exception("keylime: could not remember the notice on disk; it is remembered until the next restart")
        return True


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(body["msg"].encode()).hexdigest()
