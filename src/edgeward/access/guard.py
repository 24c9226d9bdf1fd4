"""The guard: one aiohttp middleware that enforces the access table for whichever service it is installed in,
and leaves a trace (`refusals`) of every refusal — its own, the attestation pipeline's, and the 401/403s of the
services' object-level checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from ..http.errors import HttpError
from ..http.peercred import caller_of
from ..http.requestlog import CALLER, SERVICE
from ..http.server import Handler
from .classify import Classifier
from .kinds import CallerKind, Classified
from .refusals import RefusalRecorder, refusals
from .table import SocketPolicy

__all__ = ["CLASSIFIED", "AccessGuard", "PolicyRefused", "install_guard"]

CLASSIFIED = web.RequestKey("edgeward.access.classified", Classified)


@dataclass
class AccessGuard:
    policy: SocketPolicy
    classifier: Classifier
    recorder: RefusalRecorder = field(default_factory=lambda: refusals)

    def allowed_words(self, kinds: frozenset[CallerKind]) -> str:
        return ", ".join(k.value for k in CallerKind if k in kinds)


_GUARD = web.AppKey("edgeward.access.guard", AccessGuard)


@web.middleware
async def _guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[_GUARD]
    resource = request.match_info.route.resource
    if resource is None:  # no such route or method: the router answers 404/405, nothing is served
        return await handler(request)
    route = f"{request.method} {resource.canonical}"
    allowed, row = guard.policy.kinds_for(request.method, resource.canonical)
    who: Classified | None = None
    try:
        who = await guard.classifier.classify(request)
        request[CALLER] = who.describe
        if not who.kinds & allowed:
            plainly = (f"module {who.module} is not the edge agent; " if who.module is not None
                       and CallerKind.AGENT in allowed else "")
            raise PolicyRefused(_step(who, allowed), f"{plainly}the caller is {who.describe()}; row '{row}' allows "
                                                     f"{guard.allowed_words(allowed)}", guard.policy.refusal_status)
        request[CLASSIFIED] = who
        return await handler(request)
    except HttpError as e:
        if e.status in (401, 403):
            caller = who.caller if who is not None else caller_of(request)
            if who is None:
                request[CALLER] = _unattributed(caller.pid, caller.uid)
            guard.recorder.record(
                service=guard.policy.name, pid=caller.pid, uid=caller.uid,
                where=who.where if who is not None else "unattributed", module=who.module if who else None,
                step=getattr(e, "step", None) or "authorization", route=route, status=e.status, message=e.message)
        raise


class PolicyRefused(HttpError):
    """A refusal by the access table, named like an attestation step so an operator knows what to look at."""

    def __init__(self, step: str, why: str, status: int) -> None:
        super().__init__(f"refused at {step} by the access policy: {why}", status)
        self.step = step


def _unattributed(pid: int, uid: int) -> Callable[[], str]:
    return lambda: f"pid {pid} uid {uid} (unattributed)"


def _step(who: Classified, allowed: frozenset[CallerKind]) -> str:
    if who.module is not None:
        return "registration_for"  # a module, but not one this row admits (e.g. not the edge agent)
    if allowed & {CallerKind.MODULE, CallerKind.AGENT}:
        return "container_of"  # the row wants a module and the caller is none
    return "policy"


def install_guard(app: web.Application, guard: AccessGuard) -> web.Application:
    """Put the guard innermost, after the error shape and the concurrency limit, so it sees every handler's
    refusal and its own refusals cross the wire in the shared error shape. Call before the app is started."""
    app[_GUARD] = guard
    app[SERVICE] = guard.policy.name
    app.middlewares.append(_guard_middleware)
    return app
