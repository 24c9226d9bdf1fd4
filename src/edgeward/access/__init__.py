"""Who may reach which socket and call which route: one table, one guard for every service.

`table` holds the policy as data (and renders the README's table from it), `kinds` the caller kinds it speaks of,
`classify` tells a connection's kinds from kernel facts (SO_PEERCRED, namespaces, attestation), `guard` enforces
the table in every service's aiohttp app, and `refusals` leaves a rate-limited trace of every refusal.
"""

from .guard import AccessGuard, install_guard
from .kinds import CallerKind, Classified
from .refusals import RefusalRecorder, refusals
from .table import SOCKETS, RouteRule, SocketPolicy, render_markdown

__all__ = [
    "SOCKETS",
    "AccessGuard",
    "CallerKind",
    "Classified",
    "RefusalRecorder",
    "RouteRule",
    "SocketPolicy",
    "install_guard",
    "refusals",
    "render_markdown",
]
