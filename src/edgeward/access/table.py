"""The access table: for every socket, its mode and owner, who may connect, and who may call which route.

This is the one place that says it. The guard (`guard.py`) enforces it for every service, the README's table is
rendered from it (`render_markdown`, checked by a test), and a test checks that every route a service declares is
covered, so a new route cannot slip in unguarded. Object-level checks stay in the services (which key ids a
principal's globs allow, which module a workload caller is): the table decides who may call a route at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kinds import CallerKind

__all__ = ["SOCKETS", "RouteRule", "SocketPolicy", "render_markdown"]

H, S, P, M, A = CallerKind.HOST_ROOT, CallerKind.SERVICE, CallerKind.PRINCIPAL, CallerKind.MODULE, CallerKind.AGENT
U = CallerKind.HOST_USER


@dataclass(frozen=True)
class RouteRule:
    method: str
    path: str  # the route as the service declares it, e.g. "/keypair/{keyId}"
    kinds: frozenset[CallerKind]
    why: str = ""


@dataclass(frozen=True)
class SocketPolicy:
    name: str
    path: str  # under the run directory
    mode: int
    owner: str
    connect: str  # who can open the socket at all, in words
    default: frozenset[CallerKind]  # every route without a rule of its own
    service_users: tuple[str, ...] = ()  # Unix users (aziot's names) that are SERVICE callers here
    rules: tuple[RouteRule, ...] = ()
    note: str = ""
    refusal_status: int = 401  # what this service's own authorization refusals answer (aziot: 401); attested: 403

    def kinds_for(self, method: str, path: str) -> tuple[frozenset[CallerKind], str]:
        """The kinds allowed on a route, and the row that says so (named in refusals)."""
        for rule in self.rules:
            if rule.method == method and rule.path == path:
                return rule.kinds, f"{self.name} {method} {path}"
        return self.default, f"{self.name} (every route)"

    def allowed_anywhere(self) -> frozenset[CallerKind]:
        out = set(self.default)
        for rule in self.rules:
            out |= rule.kinds
        return frozenset(out)


_HOST_CALLERS = frozenset({H, S, P})

SOCKETS: dict[str, SocketPolicy] = {p.name: p for p in (
    SocketPolicy(
        "keyd", "keyd.sock", 0o660, "the keys service's user",
        "its group; world-connectable (0666) in `edgeward run` only when [[principal]] entries name other uids",
        _HOST_CALLERS, service_users=("aziotcs", "aziotid", "iotedge"),
        note="host principals: `[[principal]]` entries with `keys` globs (which key ids they may create, load or "
             "move) and identity principals (they sign with the key handles identityd gives them)"),
    SocketPolicy(
        "certd", "certd.sock", 0o660, "the certificates service's user",
        "its group; world-connectable (0666) in `edgeward run` only when [[principal]] entries name other uids",
        _HOST_CALLERS, service_users=("aziotid", "iotedge"),
        note="which cert ids a principal may write: its `certs` globs; what a cert may carry: its issuance policy"),
    SocketPolicy(
        "identityd", "identityd.sock", 0o660, "the identity service's user",
        "its group; world-connectable (0666) in `edgeward run` only when [[principal]] entries name other uids",
        _HOST_CALLERS, service_users=("iotedge",),
        rules=(RouteRule("GET", "/trust-bundle", frozenset({H, S, P, U}),
                         "public CA certificates, for every host user who can connect (aziot's unknown caller)"),),
        note="a principal with `idtype` sees only its own identity"),
    SocketPolicy(
        "tpmd", "tpmd.sock", 0o660, "the TPM service's user",
        "its group (the identity service's user), as aziot-tpmd's socket",
        frozenset({H, S}), service_users=("aziotid",),
        note="the DPS authentication key signs for the identity service only"),
    SocketPolicy(
        "mgmt", "mgmt/mgmt.sock", 0o666, "the module runtime's user",
        "anyone (the edge agent runs as any uid inside its container); the guard admits only the callers below",
        frozenset({H, S, A}), refusal_status=403,
        note="the edge agent is the module the runtime created from [agent]; any other module is refused"),
    SocketPolicy(
        "workload", "workload/<module>/workload.sock", 0o666, "the module runtime's user",
        "anyone who sees it: each module's directory is bind-mounted into that module only",
        frozenset({M}), refusal_status=403,
        rules=(
            RouteRule("GET", "/trust-bundle", frozenset({M, H, S}), "public CA certificates"),
            RouteRule("GET", "/manifest-trust-bundle", frozenset({M, H, S}), "public CA certificates"),
            RouteRule("GET", "/modules", frozenset({M, H, S}), "names and status only"),
        ),
        note="a module calls routes naming itself (and its current generation) only, on its own socket"),
)}


def _kinds(kinds: frozenset[CallerKind], users: tuple[str, ...]) -> str:
    words = []
    for kind in CallerKind:
        if kind in kinds:
            words.append(f"{kind.value} (the daemon's own uid{''.join(', ' + u for u in users)})"
                         if kind is S else kind.value)
    return ", ".join(words)


def render_markdown() -> str:
    """The README's socket table, rendered from the policy so the documentation cannot drift from what is
    enforced (a test compares the two)."""
    lines = ["| socket | mode, owner | who can connect | route | allowed callers |", "|---|---|---|---|---|"]
    for p in SOCKETS.values():
        users = p.service_users
        lines.append(f"| `{p.path}` | {p.mode:04o}, {p.owner} | {p.connect} | every route | "
                     f"{_kinds(p.default, users)}; {p.note} |")
        for r in p.rules:
            lines.append(f"| | | | `{r.method} {r.path}` | {_kinds(r.kinds, users)}: {r.why} |")
    return "\n".join(lines) + "\n"
