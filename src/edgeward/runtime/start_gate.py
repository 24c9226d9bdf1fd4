"""What may keep every module from being created or started, whatever asks: the runtime consults a gate before each
create, start and restart (and stops a module the engine started behind its back), and the gate says why not.

One implementation today: a device revoked by its Keylime verifier (:mod:`edgeward.keylime.revoked`). The runtime
knows nothing of Keylime; it asks, records the refusal and answers 403 with the gate's words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..attest.audit import AuditLog

__all__ = ["StartGate"]


class StartGate(Protocol):
    def refusal(self, audit: AuditLog | None) -> str | None:
        """None: modules may be created and started. Otherwise why not, with how to clear it (shown to the caller).
        ``audit``: the runtime's log, where the gate records a change of its answer before it lets a start pass."""
        ...
