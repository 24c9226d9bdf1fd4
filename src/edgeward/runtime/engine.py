"""The one interface every module engine implements, and the records it speaks in.

The runtime (registrations, identities, the management API, the watchdog) only talks to a `ModuleEngine`, so a
device with a container engine and a device without one run the same runtime code.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "ENGINE_LABEL",
    "EngineError",
    "EngineEvent",
    "LogChunk",
    "LogOptions",
    "ModuleEngine",
    "ModuleNotFound",
    "ModuleSpec",
    "ModuleState",
    "ModuleStatus",
    "PullPolicy",
    "bind_target",
    "inside",
]

# Every container Edgeward creates carries this label (value: the module name), so Edgeward never lists, stops or
# removes containers it did not create, and the integrity monitor can spot containers that only pretend to be ours.
ENGINE_LABEL = "net.edgeward.module"

# Where the per-module workload socket directory is mounted inside a container (IoT Edge's path).
CONTAINER_WORKLOAD_DIR = "/var/run/iotedge"
WORKLOAD_SOCKET_NAME = "workload.sock"

ModuleState = Literal["created", "running", "stopped", "failed", "dead", "unknown"]
PullPolicy = Literal["on-create", "never"]


class EngineError(Exception):
    """The engine refused or failed; the message is safe to show to the caller (no secrets, no tracebacks)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status  # the HTTP status the management API should answer with (400, 404, 409, 500)


class ModuleNotFound(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"module {name} does not exist", 404)


@dataclass(frozen=True)
class ModuleSpec:
    """What the runtime asks an engine to create.

    `image` is a container image reference for container engines, and the path of the executable for the
    process engine. `create_options` is passed through as the Docker Engine API's create body (IoT Edge's
    `createOptions`); the process engine reads `Cmd`, `Entrypoint`, `Env`, `WorkingDir`, `User` and
    `HostConfig.Binds` from it, plus its own `Sandbox` (bool).
    """

    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)  # IOTEDGE_* and the deployment's env; engine adds WORKLOADURI
    create_options: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    workload_dir: Path | None = None  # host directory holding this module's workload socket (one per module)
    restart_policy: Literal["never", "on-failure", "on-unhealthy", "always"] = "never"
    pull_policy: PullPolicy = "on-create"


@dataclass(frozen=True)
class ModuleStatus:
    name: str
    engine_id: str  # container id, or for host processes "proc-<name>-<n>"
    state: ModuleState
    image: str
    image_id: str  # the content id: "sha256:..." of the image, or of the executable for host processes
    pid: int | None = None  # host pid of the module's main process while running
    exit_code: int | None = None
    started_at: str | None = None  # RFC 3339
    finished_at: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    restart_count: int = 0


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail: int | None = None  # None: all lines
    since: int | None = None  # unix seconds
    until: int | None = None
    timestamps: bool = False


@dataclass(frozen=True)
class LogChunk:
    stream: Literal[1, 2]  # 1 stdout, 2 stderr (the Docker log multiplexing ids)
    data: bytes


@dataclass(frozen=True)
class EngineEvent:
    """A lifecycle change the engine reports (docker `events`, or the process supervisor)."""

    action: Literal["create", "start", "die", "stop", "destroy", "restart"]
    name: str | None  # module name when the object carries our label, else None
    engine_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    exit_code: int | None = None


class ModuleEngine(Protocol):
    """One engine of modules. Names are module names; only objects carrying ENGINE_LABEL are ever touched."""

    kind: str  # "docker" or "process"

    async def version(self) -> Mapping[str, str]:
        """The engine's name and version (for systeminfo and `edgeward check`); raises EngineError if unreachable."""
        ...

    async def pull(self, image: str, auth: Mapping[str, Any] | None = None) -> None:
        """Fetch an image (with the registry credentials ``auth``, IoT Edge's {username, password, serveraddress});
        EngineError with a clear message when no registry is reachable."""
        ...

    async def image_id(self, image: str) -> str | None:
        """The content id of a local image (or executable), None when it is not present."""
        ...

    async def check(self, spec: ModuleSpec) -> None:
        """EngineError for what :meth:`create` would refuse in ``spec`` itself, creating nothing: an update checks
        the new spec before it removes the module the spec would replace."""
        ...

    async def create(self, spec: ModuleSpec) -> ModuleStatus:
        """Create (not start). EngineError(409) if a module of that name exists."""
        ...

    async def start(self, name: str) -> ModuleStatus: ...

    async def stop(self, name: str, timeout: float = 10.0) -> ModuleStatus: ...

    async def restart(self, name: str) -> ModuleStatus: ...

    async def remove(self, name: str) -> None:
        """Stop if needed and remove; ModuleNotFound if there is no such module."""
        ...

    async def inspect(self, name: str) -> ModuleStatus:
        """ModuleNotFound if there is no such module."""
        ...

    async def list(self) -> list[ModuleStatus]:
        """Every module this engine holds for Edgeward (objects with ENGINE_LABEL)."""
        ...

    def logs(self, name: str, options: LogOptions) -> AsyncIterator[LogChunk]: ...

    async def stats(self, name: str) -> Mapping[str, Any]:
        """Resource use as the engine reports it (docker's one-shot stats JSON; process: cpu, rss)."""
        ...

    def events(self) -> AsyncIterator[EngineEvent]:
        """Lifecycle events until the engine goes away (then the iterator ends; the caller reconnects)."""
        ...

    async def engine_id_of_pid(self, pid: int) -> str | None:
        """Which module object (container id / process module id) a host pid belongs to, if any."""
        ...

    async def close(self) -> None: ...


def bind_target(bind: str) -> str:
    """The container path of a docker HostConfig.Binds entry ("source:target[:options]")."""
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def inside(target: str, directory: str) -> bool:
    """Whether a container path is `directory` or below it (compared normalised: "//x", "x/../y")."""
    if not target:
        return False
    path = posixpath.normpath("/" + target.lstrip("/"))
    return path == directory or path.startswith(directory + "/")
