"""Modules as containers, through the Docker Engine API (Docker/Moby, or Podman's Docker-compatible service).

Only containers carrying ENGINE_LABEL are ever listed, stopped or removed. Restart policies are left to the
runtime's watchdog and the edge agent (as IoT Edge does), so the engine never restarts a container behind the
runtime's back. Errors become EngineError with a status the management API can pass on and a message without
secrets (registry credentials are never logged or echoed).
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from ...attest.cgroups import read_container_id
from ...attest.namespaces import Namespaces, ReferenceProcess, namespaces_of
from ..engine import (
    CONTAINER_WORKLOAD_DIR,
    ENGINE_LABEL,
    WORKLOAD_SOCKET_NAME,
    EngineError,
    EngineEvent,
    LogChunk,
    LogOptions,
    ModuleNotFound,
    ModuleSpec,
    ModuleState,
    ModuleStatus,
    bind_target,
    inside,
)

__all__ = ["DockerEngine"]

_ACTIONS = {"create", "start", "die", "stop", "destroy", "restart"}


def _state(raw: Mapping[str, Any]) -> ModuleState:
    status = raw.get("Status", "")
    if status in ("running", "restarting", "paused"):
        return "running"
    if status == "created":
        return "created"
    if status == "exited":
        return "stopped" if raw.get("ExitCode", 0) == 0 else "failed"
    if status in ("dead", "removing"):
        return "dead"
    return "unknown"


def _time(value: str | None) -> str | None:
    if not value or value.startswith("0001-01-01"):
        return None
    return value


def _status(c: Mapping[str, Any]) -> ModuleStatus:
    state = c.get("State") or {}
    labels = (c.get("Config") or {}).get("Labels") or {}
    return ModuleStatus(
        name=str(c.get("Name", "")).lstrip("/"), engine_id=c["Id"], state=_state(state),
        image=(c.get("Config") or {}).get("Image", ""), image_id=c.get("Image", ""),
        pid=state.get("Pid") or None, exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
        started_at=_time(state.get("StartedAt")), finished_at=_time(state.get("FinishedAt")), labels=labels,
        restart_count=int(c.get("RestartCount", 0)))


def _error(e: DockerError, what: str) -> EngineError:
    message = (e.message or "").strip() if isinstance(e.message, str) else str(e.message)
    if e.status == 404:
        return EngineError(f"{what}: {message or 'not found'}", 404)
    if e.status == 409 or "already in use" in message:  # podman answers 500 for a taken name
        return EngineError(f"{what}: {message or 'conflict'}", 409)
    if e.status in (400, 422):
        return EngineError(f"{what}: the engine refused it: {message}", 400)
    return EngineError(f"{what}: the container engine failed ({e.status}): {message}", 500)


@dataclass(frozen=True, slots=True)
class _Init:
    """A container's init process as inspected, kept per container id until a caller finds that process gone (its
    pid exited or has another start time: the container stopped or restarted), so a running module's callers are
    attributed without asking the engine each time."""

    process: ReferenceProcess
    module: str | None  # the container's ENGINE_LABEL value; None for a container Edgeward did not create


class DockerEngine:
    kind = "docker"

    def __init__(self, url: str, *, api_timeout: float = 60.0) -> None:
        self.url = url
        self.api_timeout = api_timeout
        self._docker: aiodocker.Docker | None = None
        self._inits: dict[str, _Init] = {}  # container id -> its init, for attestation

    def _client(self) -> aiodocker.Docker:
        # One client, rebuilt after the engine went away (a restarted dockerd leaves stale connections).
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def _reset(self) -> None:
        if self._docker is not None:
            with contextlib.suppress(Exception):
                await self._docker.close()
            self._docker = None

    async def _call(self, what: str, coro_fn: Any) -> Any:
        for attempt in (1, 2):
            try:
                return await coro_fn(self._client())
            except DockerError as e:
                raise _error(e, what) from None
            except (aiohttp.ClientConnectionError, OSError) as e:
                await self._reset()
                if attempt == 2:
                    raise EngineError(f"{what}: the container engine at {self.url} is unreachable "
                                      f"({e.__class__.__name__})", 503) from None
        raise AssertionError("unreachable")

    # engine -----------------------------------------------------------------------------------------------------
    async def version(self) -> Mapping[str, str]:
        v = await self._call("version", lambda d: d.version())
        return {"name": "docker" if "Podman" not in json.dumps(v.get("Components", "")) else "podman",
                "version": str(v.get("Version", "")), "api": str(v.get("ApiVersion", ""))}

    async def pull(self, image: str, auth: Mapping[str, Any] | None = None) -> None:
        """Pull ``image``; ``auth`` (IoT Edge's ``{username, password, serveraddress}``) goes to the engine as its
        X-Registry-Auth header, as aziot-edged sends it (base64url of the JSON), and is never logged."""
        creds = {k: str(v) for k, v in auth.items() if k in ("username", "password", "serveraddress",
                                                               "email", "identitytoken", "registrytoken")} \
            if auth else None
        try:
            await self._call(f"pull {image}", lambda d: d.images.pull(image, auth=creds))
        except EngineError as e:
            raise EngineError(f"cannot pull {image}: {e.message.split(': ', 1)[-1]} (is a registry reachable, "
                              f"and are its credentials configured?)", 400 if e.status < 500 else 502) from None

    async def image_id(self, image: str) -> str | None:
        try:
            info = await self._call(f"image {image}", lambda d: d.images.inspect(image))
        except EngineError as e:
            if e.status == 404:
                return None
            raise
        return str(info["Id"])

    async def images_in_use(self) -> set[str]:
        """The image ids of every container on the engine (Edgeward's or not, running or not)."""
        found = await self._call("list containers", lambda d: d.containers.list(all=True))
        return {str(c._container.get("ImageID") or "") for c in found} - {""}

    async def remove_image(self, image_id: str) -> bool:
        """Remove an image by id (every tag of it); True when it is gone, False when the engine keeps it (a
        container uses it). Never forced past a container that uses it."""
        try:
            await self._call(f"remove image {image_id[:19]}",
                             lambda d: d.images.delete(image_id, force=False, noprune=False))
        except EngineError as e:
            if e.status == 404:
                return True
            if e.status == 409 and "multiple repositories" in e.message:
                # Several tags on one id: untag each (still refused while a container uses the image).
                info = await self._call("image", lambda d: d.images.inspect(image_id))
                for tag in info.get("RepoTags") or []:
                    with contextlib.suppress(EngineError):
                        await self._call(f"untag {tag}", lambda d, t=tag: d.images.delete(t, force=False))
                return await self.image_id(image_id) is None
            if e.status == 409:
                return False
            raise
        return True

    async def ensure_network(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        """Create the network modules join (``[moby_runtime] network``) when the engine has none of that name, as
        aziot-edged does at start: the engine's default driver (a bridge on dockerd), with ``options`` (EnableIPv6,
        IPAM) from the network table. An existing network is used as it is."""
        if name in ("none", "host", "bridge", "default") or name.startswith("container:"):
            return  # network modes built into the engine (podman lists no "none" network, and refuses to make one)
        found = await self._call("list networks", lambda d: d.networks.list(filters={"name": [name]}))
        if any(n.get("Name") == name for n in found):
            return
        body = {**(options or {}), "Name": name, "CheckDuplicate": True}
        await self._call(f"create network {name}", lambda d: d.networks.create(body))

    # modules ----------------------------------------------------------------------------------------------------
    def _body(self, spec: ModuleSpec) -> dict[str, Any]:
        body = dict(spec.create_options)
        body["Image"] = spec.image
        env = [e for e in body.get("Env") or [] if isinstance(e, str)]
        # The runtime's variables win over createOptions', so a deployment cannot fake IOTEDGE_*.
        env = [e for e in env if e.split("=", 1)[0] not in spec.env] + [f"{k}={v}" for k, v in spec.env.items()]
        # Where the module's workload socket is inside it: what the runtime tells it (IoT Edge's
        # connect.workload_uri), else IoT Edge's default; its own directory is mounted on that path's directory.
        told = spec.env.get("IOTEDGE_WORKLOADURI", "")
        socket_path = told.removeprefix("unix://") if told.startswith("unix:///") else \
            f"{CONTAINER_WORKLOAD_DIR}/{WORKLOAD_SOCKET_NAME}"
        workload_dir = posixpath.dirname(posixpath.normpath(socket_path))
        if spec.workload_dir is not None:
            env = [e for e in env if not e.startswith("IOTEDGE_WORKLOADURI=")]
            env.append(f"IOTEDGE_WORKLOADURI=unix://{socket_path}")
        body["Env"] = env
        body["Labels"] = {**(body.get("Labels") or {}), **spec.labels, ENGINE_LABEL: spec.name}
        host = dict(body.get("HostConfig") or {})
        mounts = [m for m in host.get("Mounts") or [] if isinstance(m, Mapping)
                  and not inside(str(m.get("Target") or ""), workload_dir)]
        if "Binds" in host:
            # The edge agent binds "<its workload path>:<its workload path>" into every module (no
            # IOTEDGE_WORKLOADLISTEN_MNTURI): onto the socket the runtime mounts there, runc cannot start the
            # container, and dockerd would make the missing source on the host. The runtime owns that directory.
            host["Binds"] = [b for b in host.get("Binds") or []
                             if not (isinstance(b, str) and inside(bind_target(b), workload_dir))]
        if spec.workload_dir is not None:
            # Read-only: root in the container is root on the host's files, and the directory is Edgeward's, in its
            # run directory (a RAM tmpfs). Writable, a module could fill that, or leave a file or a symlink where its
            # socket goes; a socket in a read-only bind still takes connections, and the path is IoT Edge's.
            mounts.append({"Type": "bind", "Source": str(spec.workload_dir), "Target": workload_dir,
                           "ReadOnly": True})
        host["Mounts"] = mounts
        host["RestartPolicy"] = {"Name": "no"}  # the watchdog and the edge agent decide restarts
        body["HostConfig"] = host
        return body

    async def check(self, spec: ModuleSpec) -> None:
        """Nothing to add: the runtime vets a container's create options itself (runtime/privileges.py), and what
        else dockerd refuses only dockerd can say."""

    async def create(self, spec: ModuleSpec) -> ModuleStatus:
        if await self.image_id(spec.image) is None:
            if spec.pull_policy == "never":
                raise EngineError(f"image {spec.image} is not on the device and imagePullPolicy is never", 400)
            await self.pull(spec.image)
        body = self._body(spec)
        await self._call(f"create {spec.name}", lambda d: d.containers.create(config=body, name=spec.name))
        return await self.inspect(spec.name)

    async def _raw(self, name: str) -> Mapping[str, Any]:
        try:
            c = await self._call(f"module {name}", lambda d: d.containers.get(name))
        except EngineError as e:
            if e.status == 404:
                raise ModuleNotFound(name) from None
            raise
        raw: Mapping[str, Any] = c._container
        if ((raw.get("Config") or {}).get("Labels") or {}).get(ENGINE_LABEL) != name:
            raise ModuleNotFound(name)  # a container of that name that Edgeward did not make is not a module
        return raw

    async def inspect(self, name: str) -> ModuleStatus:
        return _status(await self._raw(name))

    async def _container(self, name: str) -> Any:
        raw = await self._raw(name)
        return await self._call(name, lambda d: d.containers.get(raw["Id"]))

    async def start(self, name: str) -> ModuleStatus:
        c = await self._container(name)
        try:
            await c.start()
        except DockerError as e:
            if e.status != 304:  # already running
                raise _error(e, f"start {name}") from None
        return await self.inspect(name)

    async def stop(self, name: str, timeout: float = 10.0) -> ModuleStatus:
        c = await self._container(name)
        try:
            await c.stop(t=max(1, math.ceil(timeout)))
        except DockerError as e:
            if e.status != 304:  # already stopped
                raise _error(e, f"stop {name}") from None
        return await self.inspect(name)

    async def restart(self, name: str) -> ModuleStatus:
        c = await self._container(name)
        try:
            await c.restart(timeout=10)
        except DockerError as e:
            raise _error(e, f"restart {name}") from None
        return await self.inspect(name)

    async def remove(self, name: str) -> None:
        c = await self._container(name)
        try:
            await c.delete(force=True, v=True)
        except DockerError as e:
            if e.status != 404:
                raise _error(e, f"remove {name}") from None

    async def list(self) -> list[ModuleStatus]:
        found = await self._call("list", lambda d: d.containers.list(all=True, filters={"label": [ENGINE_LABEL]}))
        out = []
        for c in found:
            with contextlib.suppress(DockerError):
                await c.show()
                out.append(_status(c._container))
        return out

    async def logs(self, name: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        raw = await self._raw(name)
        params: dict[str, Any] = {"stdout": "true", "stderr": "true", "follow": str(options.follow).lower(),
                                  "timestamps": str(options.timestamps).lower(),
                                  "tail": "all" if options.tail is None else str(options.tail)}
        if options.since is not None:
            params["since"] = str(options.since)
        if options.until is not None:
            params["until"] = str(options.until)
        tty = bool((raw.get("Config") or {}).get("Tty"))
        try:
            async with self._client()._query(f"containers/{raw['Id']}/logs", params=params,
                                             timeout=aiohttp.ClientTimeout(total=None)) as resp:
                buffer = b""
                async for data in resp.content.iter_any():
                    if tty:  # no multiplexing when the container has a terminal
                        yield LogChunk(1, data)
                        continue
                    buffer += data
                    while len(buffer) >= 8:
                        stream, size = struct.unpack(">BxxxI", buffer[:8])
                        if len(buffer) < 8 + size:
                            break
                        yield LogChunk(2 if stream == 2 else 1, buffer[8:8 + size])
                        buffer = buffer[8 + size:]
        except DockerError as e:
            raise _error(e, f"logs of {name}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError):
            await self._reset()  # the engine went away mid-stream: the stream ends

    async def stats(self, name: str) -> Mapping[str, Any]:
        c = await self._container(name)
        try:
            got = await c.stats(stream=False)
        except DockerError as e:
            raise _error(e, f"stats of {name}") from None
        return dict(got[0]) if isinstance(got, list) and got else dict(got or {})

    async def events(self) -> AsyncIterator[EngineEvent]:
        """Container events until the engine goes away (the iterator then ends; the caller resubscribes)."""
        filters = json.dumps({"type": ["container"]})
        try:
            async with self._client()._query("events", params={"filters": filters},
                                             timeout=aiohttp.ClientTimeout(total=None)) as resp:
                async for line in resp.content:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    action = str(ev.get("Action") or ev.get("status") or "").split(":")[0]
                    action = {"remove": "destroy"}.get(action, action)  # podman says "remove"
                    if action not in _ACTIONS:
                        continue
                    attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                    code = attrs.get("exitCode")
                    yield EngineEvent(action=action, name=attrs.get(ENGINE_LABEL),  # type: ignore[arg-type]
                                      engine_id=str((ev.get("Actor") or {}).get("ID") or ev.get("id") or ""),
                                      labels=attrs, exit_code=int(code) if code is not None else None)
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError):
            await self._reset()
        except DockerError as e:
            raise _error(e, "events") from None

    async def engine_id_of_pid(self, pid: int) -> str | None:
        """The Edgeward container `pid` runs in, proven by namespaces rather than claimed by a cgroup path.

        The cgroup only names a candidate: whoever can write a cgroupfs can put a process in any cgroup. The
        caller belongs to that container only when its pid and mount namespaces are the container's init
        process's; otherwise the answer is EngineError(403) naming the mismatch, never "no container" (which the
        attestation pipeline would weigh as a possible host process). None: the cgroup names no container, or one
        that does not exist or is not Edgeward's; the pipeline then admits only a process in the host's
        namespaces.
        """
        container_id = read_container_id(pid)
        if container_id is None:
            return None
        # The caller's first, the init's after (confirmed still alive then): both were live at the first read, so
        # equal numbers mean the same namespaces, not a recycled number.
        mine = namespaces_of(pid)
        found = await self._reference_of(container_id)
        if found is None:
            return None
        module, theirs = found
        if theirs is None:
            raise EngineError(f"process {pid}'s cgroup names container {container_id[:12]} (module {module}), "
                              f"which is not running", 403)
        if mine is None:
            raise EngineError(f"the namespaces of process {pid} cannot be read, so it cannot be placed in container "
                              f"{container_id[:12]} (module {module})", 403)
        if mine != theirs:
            raise EngineError(f"process {pid}'s cgroup names container {container_id[:12]} (module "
                              f"{module}), but its namespaces ({mine.describe()}) are not that container's "
                              f"({theirs.describe()})", 403)
        return container_id

    async def _reference_of(self, container_id: str) -> tuple[str, Namespaces | None] | None:
        """The Edgeward module a container is and its init's namespaces now (None when it is not running); None
        when there is no such container or Edgeward did not create it. A cached init that exited since (the
        container restarted) is looked up once more."""
        for fresh in (False, True):
            init = await self._init_of(container_id, fresh)
            if init is None or init.module is None:
                return None
            theirs = init.process.namespaces()
            if theirs is not None or fresh:
                return init.module, theirs
        raise AssertionError("unreachable")

    async def _init_of(self, container_id: str, fresh: bool) -> _Init | None:
        """The container's init as last inspected (unless `fresh`: the caller found that process gone — a restarted
        or removed container's init exits, a recycled pid has another start time), else as inspected now. None: no
        such container. A container that is not running has an init with pid 0."""
        cached = self._inits.get(container_id)
        if cached is not None and not fresh:
            return cached
        try:
            c = await self._call("attestation", lambda d: d.containers.get(container_id))
        except EngineError as e:
            if e.status == 404:
                return None
            raise
        raw: Mapping[str, Any] = c._container
        module = ((raw.get("Config") or {}).get("Labels") or {}).get(ENGINE_LABEL)
        process = ReferenceProcess.of(int((raw.get("State") or {}).get("Pid") or 0))
        # The pid must still be the container's own (not recycled by another process since the inspect).
        if process is None or read_container_id(process.pid) != container_id:
            return _Init(ReferenceProcess(0, 0), str(module) if module is not None else None)
        for stale in [k for k, v in self._inits.items() if not v.process.alive()]:
            del self._inits[stale]
        init = _Init(process, str(module) if module is not None else None)
        self._inits[container_id] = init
        return init

    async def close(self) -> None:
        await self._reset()

