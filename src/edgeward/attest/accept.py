"""Which module a connection's peer is, decided when the connection is accepted, for the workload sockets'
connection caps: a connection counts under the module it is attested as, so nobody else who can reach a module's
socket (0666, since containers of any uid must) can use up the module's connections.

The workload API's attestation (:mod:`.pipeline`) asks the module engine, which may take a round trip (a container
engine's inspect); a connection is admitted or refused before a byte of it is read, synchronously. So the same facts
are read here from what the kernel shows and one reference process per running module, learned from the engine in
the background:

- a host-process module: the caller's ppid chain leads to the module's main process (pid and start time), as the
  process engine attributes callers, whatever uids the module's processes took;
- a container: the caller's pid and mount namespaces are those of the init of the container its cgroup names, as
  the Docker engine attributes callers (a cgroup path alone can be claimed; the namespaces cannot).

Cost, per connection: at most ``MAX_DEPTH`` /proc reads along the ppid chain (one, for another connection of a
process already placed), or one cgroup read, four namespace links and one stat. The references are learned at most
once per ``REFRESH_INTERVAL`` (the registry and the engine's list), in one background task, whatever the callers
do. Fail closed: a caller that cannot be placed now (no reference yet, a chain deeper than ``MAX_DEPTH``, anything
unreadable) is no module. This decides only where a connection is counted: the workload API still attests every
request and decides what the caller may do.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..http.callers import Peer
from ..runtime.engine import EngineError, ModuleEngine
from ..runtime.engines.procfs import ancestors
from ..runtime.registry import Registry
from .cgroups import read_container_id
from .namespaces import ReferenceProcess, namespaces_of

__all__ = ["AcceptAttestor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Reference:
    """A running module's main process (host process) or container init, as the engine placed it."""

    module: str
    engine_id: str
    process: ReferenceProcess


class AcceptAttestor:
    """``module_of(peer)``: the module a connection's peer is, if it may act as that module on the socket it
    arrived on (its own module's socket, or the shared workload socket, where any module calls); else None."""

    MAX_DEPTH = 32  # a module's callers sit a few levels below its main process; a deeper chain is a stranger's
    REFRESH_INTERVAL = 1.0  # seconds between two learnings of the references, at most
    MAX_PLACED = 4096  # processes whose place is remembered until the references change

    def __init__(self, engine: ModuleEngine, registry: Registry,
                 socket_module: Callable[[str | None], str | None]) -> None:
        self.engine = engine
        self.registry = registry
        self._socket_module = socket_module  # the module whose own socket a connection arrived on (None: shared)
        self._by_start: dict[tuple[int, int], _Reference] = {}
        self._by_container: dict[str, _Reference] = {}
        self._version = -1  # the registry's version the references were last learned (or tried) at
        # (pid, start time) -> its module or None, while the references stay the same: a process's ppid chain only
        # gets shorter (reparented when a parent exits), never gains a module's main process.
        self._placed: dict[tuple[int, int], str | None] = {}
        self._wanted = False
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._last = -math.inf
        self._last_warning = -math.inf

    def module_of(self, peer: Peer) -> str | None:
        pid = peer.caller.pid
        if pid <= 0:
            return None
        if self.registry.version != self._version:
            # Modules changed (started, stopped, removed: the management API's and the watchdog's doing, never a
            # caller's): learn their references again at once, so a module just started is placed on its first
            # connections.
            self._want(urgent=True)
        try:
            found = self._container_module(pid) if self.engine.kind == "docker" else self._process_module(pid)
        except Exception:  # anything unreadable places nobody
            log.debug("cannot place pid %d at accept", pid, exc_info=True)
            return None
        own = self._socket_module(peer.sockname if isinstance(peer.sockname, str) else None)
        return found if found is not None and own in (None, found) else None

    def _process_module(self, pid: int) -> str | None:
        chain = iter(ancestors(pid))
        caller = next(chain, None)
        if caller is None:
            return None  # gone already
        key = (caller.pid, caller.start_time)
        if key in self._placed:
            return self._placed[key]
        found: str | None = None
        for depth, st in enumerate(itertools.chain((caller,), chain)):
            if depth >= self.MAX_DEPTH:
                break
            ref = self._by_start.get((st.pid, st.start_time))
            if ref is not None:
                found = ref.module
                break
        if len(self._placed) >= self.MAX_PLACED:
            self._placed.clear()
        self._placed[key] = found
        if found is None:
            self._want()  # a stranger, or a module started (or restarted) since the references were learned
        return found

    def _container_module(self, pid: int) -> str | None:
        container_id = read_container_id(pid)
        if container_id is None:
            return None  # in no container: no container module
        ref = self._by_container.get(container_id)
        if ref is None:
            self._want()
            return None
        # The caller's first, the init's after (confirmed still alive then): both were live at the first read, so
        # equal numbers mean the same namespaces, not a recycled number.
        mine = namespaces_of(pid)
        theirs = ref.process.namespaces()
        if theirs is None:  # the container stopped or restarted since
            self._want()
            return None
        return ref.module if mine is not None and mine == theirs else None

    def _want(self, *, urgent: bool = False) -> None:
        self._wanted = True
        self._urgent = self._urgent or urgent
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._refresh(), name="edgeward.accept-attestation")

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wanted:
            urgent, self._wanted, self._urgent = self._urgent, False, False
            wait = self._last + self.REFRESH_INTERVAL - loop.time()
            if wait > 0 and not urgent:
                await asyncio.sleep(wait)
            self._last = loop.time()
            try:
                async with asyncio.timeout(30):
                    await self._learn()
            except Exception as e:  # the engine is away: callers stay unplaced (strangers) until it is back
                if self._last - self._last_warning >= 60.0:  # one line a minute, however often callers ask
                    self._last_warning = self._last
                    log.warning("cannot learn the running modules' processes for the connection caps: %s", e)

    async def _learn(self) -> None:
        self._version = self.registry.version  # tried once for this version, even if the engine fails: no retry storm
        registered = {reg.engine_id: reg.name for reg in self.registry.all()}
        refs: list[_Reference] = []
        for status in await self.engine.list():
            name = registered.get(status.engine_id)
            if name is None or status.state != "running" or not status.pid:
                continue
            process = ReferenceProcess.of(status.pid)
            if process is None:
                continue
            try:
                placed = await self.engine.engine_id_of_pid(status.pid)
            except EngineError:
                continue
            # The engine placed that pid in the module after it was referenced, and it is the same process still.
            if placed == status.engine_id and process.alive():
                refs.append(_Reference(name, status.engine_id, process))
        self._by_start = {(ref.process.pid, ref.process.started): ref for ref in refs}
        self._by_container = {ref.engine_id: ref for ref in refs}
        self._placed = {}
