"""The kinds of caller the access table speaks of, and what classifying one connection found."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..http.peercred import Caller

__all__ = ["CallerKind", "Classified"]


class CallerKind(enum.Enum):
    HOST_ROOT = "host root"  # uid 0 in the host's pid and mount namespaces, and no module
    SERVICE = "service user"  # the daemon's own uid, or a service user the socket's row names, on the host
    PRINCIPAL = "host principal"  # a host uid named by a [[principal]] of this service
    HOST_USER = "host user"  # any uid in the host's namespaces that is no module (aziot's "unknown" caller)
    MODULE = "module"  # an attested module (on the workload API: for itself only)
    AGENT = "edge agent"  # the attested edge agent module


@dataclass(frozen=True)
class Classified:
    """The kinds a caller holds (possibly none), and why, for refusal messages and the audit record."""

    caller: Caller
    kinds: frozenset[CallerKind]
    where: str  # "host", "module <name>", "container <id>", "namespaces pid:[..] mnt:[..]"
    module: str | None = None

    def describe(self) -> str:
        held = ", ".join(sorted(k.value for k in self.kinds)) or "no kind the table knows"
        return f"pid {self.caller.pid} uid {self.caller.uid} ({self.where}; {held})"
