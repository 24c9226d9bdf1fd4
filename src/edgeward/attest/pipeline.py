"""Caller attestation: which registered module (if any) is at the other end of a workload or management
connection. Five named steps; a refusal names the step that refused, so an operator knows what to look at.

peer_credentials -> container_of -> registration_for -> measure -> still_alive
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..http.errors import Forbidden
from ..http.peercred import Caller, ConnectorGone, accepted_ticks, caller_of, connector_pidfd, on_connection_closed
from ..runtime.engine import EngineError, ModuleEngine
from ..runtime.registry import Registration, Registry
from .measure import measure
from .namespaces import is_host_process, namespaces_of
from .pin import PinnedProcess, ProcessGone, ProcessPins

__all__ = ["AttestationRefused", "Attested", "Attestor"]

log = logging.getLogger(__name__)


class AttestationRefused(Forbidden):
    def __init__(self, step: str, why: str) -> None:
        super().__init__(f"attestation refused at {step}: {why}")
        self.step = step


@dataclass
class Attested:
    caller: Caller
    pinned: PinnedProcess
    # None: a host process that is no module (root CLI, host agents), in the host's namespaces (`_run` refuses any
    # other caller the engine places in no module)
    registration: Registration | None
    engine_id: str | None = None
    version: int = 0  # the registry's version when attested


class Attestor:
    """Runs the pipeline once per connection (the peer of a Unix connection never changes) and re-checks only
    `still_alive` per request. Nothing is cached across connections, so nothing is cached across pids."""

    def __init__(self, engine: ModuleEngine, registry: Registry, *, refuse: frozenset[str] | None = None) -> None:
        self.engine = engine
        self.registry = registry
        self._per_connection: weakref.WeakKeyDictionary[Any, Attested] = weakref.WeakKeyDictionary()
        self.pins = ProcessPins()
        # Modules whose calls the integrity policy says to refuse ("refuse" policy); checked in `measure`.
        self.refused: set[str] = set(refuse or ())

    async def attest(self, request: web.Request, *, still_alive: bool = True) -> Attested:
        """Attest the caller; `still_alive=False` only where a later call for the same request (the handler's,
        closer to the answer) makes the liveness check, as the access guard's classification does."""
        transport = request.transport
        cached = self._per_connection.get(transport) if transport is not None else None
        if cached is not None and cached.registration is not None and cached.version != self.registry.version:
            # Modules changed since this connection was attested (stopped, removed, replaced): attest it again, so
            # a process its module left behind does not keep the module's identity.
            cached = None
        if cached is None:
            try:
                connector = connector_pidfd(request)
            except ConnectorGone as e:
                raise AttestationRefused("peer_credentials", str(e)) from None
            cached = await self._run(caller_of(request), accepted_ticks(request), connector)
            if transport is not None:
                if transport not in self._per_connection:
                    on_connection_closed(transport, self._forget)
                self._per_connection[transport] = cached
        elif cached.registration is not None and cached.registration.name in self.refused:
            raise AttestationRefused("measure", f"module {cached.registration.name} is quarantined by the "
                                                f"integrity policy")
        if still_alive and not cached.pinned.alive():
            raise AttestationRefused("still_alive", f"process {cached.caller.pid} exited or its pid was reused")
        return cached

    def _forget(self, transport: Any) -> None:
        """The connection closed: its attestation goes, and with the last of a process's, its pin."""
        self._per_connection.pop(transport, None)

    async def _run(self, caller: Caller, accepted: int | None = None, connector: int | None = None) -> Attested:
        """`connector`: a pidfd of the process that opened the connection, which the pin takes over."""
        version = self.registry.version
        try:
            pinned = self.pins.pin(caller.pid, not_after=accepted, uid=caller.uid, connector=connector)
        except ProcessGone as e:
            raise AttestationRefused("peer_credentials", str(e)) from None
        try:
            engine_id = await self.engine.engine_id_of_pid(caller.pid)
        except EngineError as e:
            # 403: the engine proved the caller is not where its cgroup says; anything else: it could not tell.
            why = e.message if e.status == 403 else f"the module engine cannot say: {e.message}"
            raise AttestationRefused("container_of", why) from None
        if engine_id is None:
            # In no module. That makes it a host process only if it provably lives in the host's namespaces: a
            # contained process that left its container's cgroup (or sits in a container that is not a module)
            # is refused, never promoted to "root outside any module".
            if not is_host_process(caller.pid):
                seen = namespaces_of(caller.pid)
                raise AttestationRefused("container_of", f"process {caller.pid} is in no module, and its "
                                         f"namespaces ({seen.describe() if seen else 'unreadable'}) are not "
                                         f"the host's")
            return Attested(caller, pinned, None, version=version)
        reg = self.registry.by_engine_id(engine_id)
        if reg is None:
            raise AttestationRefused("registration_for", f"process {caller.pid} runs in {self.engine.kind} object "
                                                         f"{engine_id[:12]}, which Edgeward did not create")
        try:
            result = await measure(self.engine, reg)
        except EngineError as e:
            raise AttestationRefused("measure", f"the module engine cannot say: {e.message}") from None
        if not result.ok:
            raise AttestationRefused("measure", result.finding or "measurement differs from the registration")
        if reg.name in self.refused:
            raise AttestationRefused("measure", f"module {reg.name} is quarantined by the integrity policy")
        return Attested(caller, pinned, reg, engine_id, version)

    async def module(self, request: web.Request, name: str, generation_id: str | None = None) -> Registration:
        """The caller must be the registered module `name` (and of that generation, when the route names one)."""
        got = await self.attest(request)
        reg = got.registration
        if reg is None:
            raise AttestationRefused("container_of", f"process {got.caller.pid} (uid {got.caller.uid}) is not "
                                                     f"a module")
        if reg.name != name:
            raise AttestationRefused("registration_for", f"the caller is module {reg.name}, not {name}")
        if generation_id is not None and generation_id != reg.generation_id:
            raise AttestationRefused("registration_for", f"generation {generation_id} is not module {name}'s "
                                                         f"current generation")
        return reg
