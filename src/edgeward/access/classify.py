"""Telling which kinds a caller holds, from what the kernel says about it, never from what it says.

Two classifiers, one per shape of socket: host services (keys, certs, identity, TPM) know their callers by uid, but
only once the caller is proven to run in the host's namespaces and, where the module runtime is in this process,
to be no module; the module runtime's sockets know their callers by attestation (`attest.pipeline`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from ..attest.cgroups import read_container_id
from ..attest.namespaces import is_host_process
from ..attest.pin import PinnedProcess, ProcessGone, ProcessPins
from ..http.errors import HttpError
from ..http.peercred import Caller, ConnectorGone, accepted_ticks, caller_of, connector_pidfd, on_connection_closed
from .kinds import CallerKind, Classified
from .table import SocketPolicy

__all__ = ["AttestedClassifier", "Attestor", "Classifier", "HostClassifier", "ModuleOf", "service_uids"]

# In the all-in-one daemon, the module runtime answers "is this pid one of my modules?" (host-process modules share
# the host's namespaces, so namespaces alone cannot tell).
ModuleOf = Callable[[int], Awaitable[str | None]]


class Classifier(Protocol):
    async def classify(self, request: web.Request) -> Classified: ...


def service_uids(users: Iterable[str]) -> frozenset[int]:
    """The daemon's own uid and the uids of the named service users that exist on this system."""
    uids = {os.getuid()}
    for name in users:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(name).pw_uid)
    return frozenset(uids)


def _where_not_host(pid: int) -> str:
    """Where a caller that is not on the host is: its container, else only that it is elsewhere (a fixed string,
    so a process that unshares again and again cannot mint a new refusal-record key each time)."""
    container = read_container_id(pid)
    if container is not None:
        return f"container {container[:12]}"
    return "namespaces that are not the host's"


class HostClassifier:
    """Callers of a host service: kinds by uid, for host processes only.

    Classified once per connection (its peer never changes) with the process pinned, then only re-checked for
    liveness, so a pid recycled into a container cannot inherit a host caller's classification.
    """

    def __init__(self, policy: SocketPolicy, principal_uids: Iterable[int] = (),
                 module_of: ModuleOf | None = None) -> None:
        self.policy = policy
        self.principal_uids = frozenset(principal_uids)
        self.service = service_uids(policy.service_users)
        self.module_of = module_of
        self.pins = ProcessPins()
        self._per_connection: weakref.WeakKeyDictionary[Any, tuple[Classified, PinnedProcess | None]] = (
            weakref.WeakKeyDictionary())

    async def classify(self, request: web.Request) -> Classified:
        transport = request.transport
        known = self._per_connection.get(transport) if transport is not None else None
        if known is None:
            known = await self._classify(caller_of(request), accepted_ticks(request), request)
            if transport is not None:
                if transport not in self._per_connection:
                    on_connection_closed(transport, self._forget)
                self._per_connection[transport] = known
        who, pinned = known
        if pinned is not None and not pinned.alive():
            raise HttpError(f"process {who.caller.pid} exited or its pid was reused; connect again",
                            self.policy.refusal_status)
        return who

    def _forget(self, transport: Any) -> None:
        """The connection closed: its classification goes, and with the last of a process's, its pin."""
        self._per_connection.pop(transport, None)

    async def _classify(self, caller: Caller, accepted: int | None,
                        request: web.Request) -> tuple[Classified, PinnedProcess | None]:
        if caller.pid <= 0 or caller.uid < 0:  # not a Unix socket peer: nothing vouches for it
            return Classified(caller, frozenset(), "no peer credentials"), None
        try:
            pinned = self.pins.pin(caller.pid, not_after=accepted, uid=caller.uid, connector=connector_pidfd(request))
        except (ProcessGone, ConnectorGone) as e:
            raise HttpError(f"the process that connected cannot be identified: {e}",
                            self.policy.refusal_status) from None
        if not is_host_process(caller.pid):
            return Classified(caller, frozenset(), _where_not_host(caller.pid)), pinned
        if self.module_of is not None:
            module = await self.module_of(caller.pid)
            if module is not None:
                return Classified(caller, frozenset(), f"module {module}", module), pinned
        kinds = {CallerKind.HOST_USER}
        if caller.uid == 0:
            kinds.add(CallerKind.HOST_ROOT)
        if caller.uid in self.service:
            kinds.add(CallerKind.SERVICE)
        if caller.uid in self.principal_uids:
            kinds.add(CallerKind.PRINCIPAL)
        return Classified(caller, frozenset(kinds), "host"), pinned


class Attestor(Protocol):
    async def attest(self, request: web.Request, *, still_alive: bool = True) -> Any: ...


class AttestedClassifier:
    """Callers of the module runtime's sockets: attested modules (the edge agent among them), or host root and the
    runtime's own user, proven to be on the host. Attestation refusals propagate as they are (they name the step)."""

    def __init__(self, attestor: Attestor) -> None:
        self.attestor = attestor
        self.service = service_uids(())

    async def classify(self, request: web.Request) -> Classified:
        # Liveness is checked by the handler's own attestation, closest to the answer; routes without one (the
        # public trust bundles) answer nothing a recycled pid could misuse.
        got = await self.attestor.attest(request, still_alive=False)
        caller: Caller = got.caller
        reg = got.registration
        if reg is not None:
            kinds = {CallerKind.MODULE} | ({CallerKind.AGENT} if reg.system else set())
            return Classified(caller, frozenset(kinds), f"module {reg.name}", reg.name)
        if not is_host_process(caller.pid):
            return Classified(caller, frozenset(), _where_not_host(caller.pid))
        kinds = set()
        if caller.uid == 0:
            kinds.add(CallerKind.HOST_ROOT)
        if caller.uid in self.service:
            kinds.add(CallerKind.SERVICE)
        return Classified(caller, frozenset(kinds), "host")
