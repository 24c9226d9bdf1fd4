"""Which module a connection's peer is, decided when the connection is accepted, for the workload sockets'
connection caps: a connection counts under the module it is attested as, so nobody else who can reach a module's
socket (0666, since containers of any uid must) can use up the module's connections.

The workload API's attestation (:mod:`.pipeline`) may wait for the module engine (a container engine's inspect); a
connection is admitted or refused before a byte of it is read, without waiting. So the same facts are read here:

- a host-process module: the process engine's own ``place_now``, as its attestation attributes callers: the
  caller's cgroup where modules run in cgroups, else its ppid chain up to a running module's main process (at most
  ``ATTRIBUTION_DEPTH`` levels), whatever uids the module's processes took;
- a container: the caller's pid and mount namespaces are those of the init of the container its cgroup names, as
  the Docker engine attributes callers (a cgroup path alone can be claimed; the namespaces cannot). The inits are
  learned from the engine in the background: at once when the registry changes (a module started, stopped,
  removed), else at most once per ``REFRESH_INTERVAL`` however often callers ask.

Cost, per connection: two /proc reads with module cgroups, else at most ``MAX_DEPTH`` along the ppid chain (none
within ``RECENT`` seconds of the pid's last connection, as in a burst); or, for a container, one cgroup read, four
namespace links and one stat. Fail closed: a caller that cannot be
placed now (a container not learned yet, a chain deeper than ``MAX_DEPTH``, anything unreadable) is no module. This
decides only where a connection is counted: the workload API still attests every request and decides what the
caller may do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..http.callers import Peer
from ..runtime.engine import EngineError, ModuleEngine
from ..runtime.engines.procfs import ATTRIBUTION_DEPTH
from ..runtime.registry import Registry
from .cgroups import read_container_id
from .namespaces import ReferenceProcess, namespaces_of

__all__ = ["AcceptAttestor"]

log = logging.getLogger(__name__)

_PlaceNow = Callable[[int], str | None]


@dataclass(frozen=True, slots=True)
class _Init:
    """A running container module's init, as the engine placed it."""

    module: str
    process: ReferenceProcess


class AcceptAttestor:
    """``module_of(peer)``: the module a connection's peer is, if it may act as that module on the socket it
    arrived on (its own module's socket, or the shared workload socket, where any module calls); else None."""

    MAX_DEPTH = ATTRIBUTION_DEPTH  # without module cgroups: a deeper chain is a stranger's (the engine's walk)
    REFRESH_INTERVAL = 1.0  # seconds between two learnings of the containers' inits that callers ask for, at least
    MAX_PLACED = 4096  # processes whose place is remembered while the registry stays the same
    # A pid placed this recently is taken as the same process without reading its start time: a pid is not used
    # again so soon (the kernel hands out every other free pid first; cycling through them takes far longer).
    RECENT = 0.1

    def __init__(self, engine: ModuleEngine, registry: Registry,
                 socket_module: Callable[[str | None], str | None]) -> None:
        self.engine = engine
        self.registry = registry
        self._socket_module = socket_module  # the module whose own socket a connection arrived on (None: shared)
        self._place_now: _PlaceNow | None = getattr(engine, "place_now", None)
        self._names: dict[str, str] = {}  # engine id -> module name, as registered
        self._names_version = -1
        self._recent: dict[int, tuple[float, str | None]] = {}  # pid -> (when placed, its module or None)
        self._recent_version = -1
        self._inits: dict[str, _Init] = {}  # container id -> its init, learned
        self._learned_version = -1  # the registry's version the inits were last learned (or tried) at
        self._wanted = False
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._last = -math.inf
        self._last_warning = -math.inf

    def module_of(self, peer: Peer) -> str | None:
        pid = peer.caller.pid
        if pid <= 0:
            return None
        now = time.monotonic()
        recent = self._recent.get(pid)
        if recent is not None and now - recent[0] < self.RECENT and self.registry.version == self._recent_version:
            found = recent[1]
        else:
            try:
                found = self._container_module(pid) if self.engine.kind == "docker" else self._process_module(pid)
            except Exception:  # anything unreadable places nobody
                log.debug("cannot place pid %d at accept", pid, exc_info=True)
                return None
            if self.registry.version != self._recent_version or len(self._recent) >= self.MAX_PLACED:
                self._recent = {}
                self._recent_version = self.registry.version
            self._recent[pid] = (now, found)
        own = self._socket_module(peer.sockname if isinstance(peer.sockname, str) else None)
        return found if found is not None and own in (None, found) else None

    def _registered(self) -> dict[str, str]:
        version = self.registry.version
        if version != self._names_version:  # a management action or the watchdog changed it: never a caller
            self._names = {reg.engine_id: reg.name for reg in self.registry.all()}
            self._names_version = version
        return self._names

    def _process_module(self, pid: int) -> str | None:
        names = self._registered()
        if self._place_now is None:
            return None  # an engine that cannot tell without waiting
        engine_id = self._place_now(pid)
        return names.get(engine_id) if engine_id is not None else None

    def _container_module(self, pid: int) -> str | None:
        if self.registry.version != self._learned_version:
            # Modules changed: learn their inits again at once, so a container just started is placed on its
            # first connections (they may come before the learning ends: those count as strangers).
            self._want(urgent=True)
        container_id = read_container_id(pid)
        if container_id is None:
            return None  # in no container: no container module
        init = self._inits.get(container_id)
        if init is None:
            self._want()
            return None
        # The caller's first, the init's after (confirmed still alive then): both were live at the first read, so
        # equal numbers mean the same namespaces, not a recycled number.
        mine = namespaces_of(pid)
        theirs = init.process.namespaces()
        if theirs is None:  # the container stopped or restarted since
            self._want()
            return None
        return init.module if mine is not None and mine == theirs else None

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
            except Exception as e:  # the engine is away: containers stay unplaced (strangers) until it is back
                if self._last - self._last_warning >= 60.0:  # one line a minute, however often callers ask
                    self._last_warning = self._last
                    log.warning("cannot learn the running containers' inits for the connection caps: %s", e)

    async def _learn(self) -> None:
        self._learned_version = self.registry.version  # tried once per version, even if the engine fails
        registered = {reg.engine_id: reg.name for reg in self.registry.all()}
        inits: dict[str, _Init] = {}
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
            # The engine placed that pid in the container after it was referenced, and it is the same process still.
            if placed == status.engine_id and process.alive():
                inits[status.engine_id] = _Init(name, process)
        self._inits = inits
