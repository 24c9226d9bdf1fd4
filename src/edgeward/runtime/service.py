"""The module runtime: creates modules with their identity, environment and workload socket, records each in the
registry, and keeps the edge agent running (the watchdog)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..attest.audit import AuditLog
from ..http.errors import BadRequest, Conflict, Forbidden, HttpError, NotFound
from ..keyedlocks import KeyedLocks
from ..tasks import cancel_all
from .engine import (
    EngineError,
    LogChunk,
    LogOptions,
    ModuleEngine,
    ModuleNotFound,
    ModuleSpec,
    ModuleStatus,
    bind_target,
    inside,
)
from .identities import ModuleIdentities
from .image_gc import ImageUse
from .model import ModuleConfig, hub_identity_name, valid_module_name
from .privileges import (
    ALLOW_HINT,
    ElevatedOptionRefused,
    HostBind,
    Vetted,
    host_binds,
    policy_for,
    vet_create_options,
)
from .registry import Registration, Registry
from .settings import RuntimeSettings
from .sockets import WorkloadSockets
from .start_gate import StartGate
from .upstream import upstream_env

__all__ = ["WORKLOAD_API_VERSION", "ModuleRuntime", "ModuleView"]

log = logging.getLogger(__name__)

# What IOTEDGE_APIVERSION tells modules to speak to the workload API (aziot-edged 1.4/1.5 gives 2022-08-03).
WORKLOAD_API_VERSION = "2022-08-03"
# How long the edge agent that asked to be replaced has to read its answer and close its connection before it is
# stopped (then it gets the engine's stop timeout to exit, as aziot-edged's stop gives it).
ANSWER_GRACE = 5.0


@dataclass(frozen=True)
class ModuleView:
    """A module as the management API reports it: what was registered plus what the engine says now."""

    registration: Registration
    status: ModuleStatus | None  # None: the engine no longer has it
    socket_problem: str | None = None  # why its workload socket could not be opened (runtime/sockets.py)
    update_problem: str | None = None  # why the last update it asked for, done after the answer, failed


def engine_error(e: EngineError) -> HttpError:
    return HttpError(e.message, e.status)


def _stored_options(reg: Registration) -> Mapping[str, Any] | None:
    """The createOptions a registration was created with (the vetted ones), None if they cannot be read."""
    config = reg.config.get("config")
    settings = config.get("settings") if isinstance(config, Mapping) else None
    options = settings.get("createOptions", {}) if isinstance(settings, Mapping) else None
    return options if isinstance(options, Mapping) else None


class ModuleRuntime:
    def __init__(self, settings: RuntimeSettings, engine: ModuleEngine, registry: Registry,
                 identities: ModuleIdentities, sockets: WorkloadSockets, *, audit: AuditLog | None = None,
                 start_gate: StartGate | None = None) -> None:
        self.settings = settings
        self.start_gate = start_gate
        self.audit = audit
        self.engine = engine
        self.registry = registry
        self.identities = identities
        self.sockets = sockets
        self._locks = KeyedLocks()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._checks: set[asyncio.Task[None]] = set()
        self._updates: set[asyncio.Task[None]] = set()  # self-updates of the edge agent, done after the answer
        self.update_failures: dict[str, str] = {}  # module -> why its last self-update failed (shown in its status)
        self.agent_restarts = 0
        self.last_watchdog_error: str | None = None
        self.image_use: ImageUse | None = None

    def _record(self, kind: str, name: str, **detail: Any) -> None:
        if self.audit is not None:
            self.audit.append(kind, name, detail)

    def _record_if_possible(self, kind: str, name: str, **detail: Any) -> None:
        """For records that accompany a refusal: a log that cannot take them (a full disk) must not turn the
        refusal into an error that lets the module run."""
        try:
            self._record(kind, name, **detail)
        except Exception:
            log.exception("could not record %s for module %s", kind, name)

    # lifecycle of the runtime ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Reconcile registrations with the engine, reopen workload sockets, then start the watchdog."""
        await self.reconcile()
        await self.stop_gated_modules()
        try:  # the agent is up before the daemon says it is ready; if it cannot be, the watchdog keeps trying
            await self.check_agent()
        except (HttpError, EngineError) as e:
            self.last_watchdog_error = getattr(e, "message", str(e))
            log.error("could not start the edge agent: %s; the watchdog will retry", self.last_watchdog_error)
        self._tasks.append(asyncio.create_task(self._watchdog(), name="runtime-watchdog"))
        self._tasks.append(asyncio.create_task(self._follow_events(), name="runtime-events"))

    async def stop(self) -> None:
        await cancel_all([*self._tasks, *self._checks, *self._updates])

    async def reconcile(self) -> None:
        """Make the registry and the engine agree after a restart of either.

        A registration left without an engine id (a crash between registering and creating) is completed or
        dropped; every registered module gets its workload socket back.
        """
        for reg in self.registry.all():
            try:
                status = await self.engine.inspect(reg.name)
            except ModuleNotFound:
                status = None
            except EngineError as e:
                log.warning("engine unreachable while reconciling %s: %s", reg.name, e.message)
                await self.sockets.open(reg.name)
                continue
            if status is None:
                if not reg.engine_id:
                    log.warning("module %s was registered but never created; dropping the registration", reg.name)
                    self.registry.delete(reg.name)
                    continue
                log.warning("module %s is registered but its %s object is gone", reg.name, reg.engine)
            elif status.engine_id != reg.engine_id:
                if reg.engine_id:
                    log.warning("module %s: engine object %s is not the registered %s; removing it", reg.name,
                                status.engine_id[:12], reg.engine_id[:12])
                    with contextlib.suppress(EngineError):
                        await self.engine.remove(reg.name)
                    continue
                # Crash after the engine created it and before its id was recorded: the object carries our
                # label and our name, and we were mid-creation, so adopt it.
                self._record("module.created", reg.name, engine_id=status.engine_id, image=reg.image,
                             image_id=status.image_id, generation_id=reg.generation_id, system=reg.system,
                             recovered=True)
                self.registry.put(replace(reg, engine_id=status.engine_id, image_id=status.image_id))
            await self.sockets.open(reg.name)

    # modules ------------------------------------------------------------------------------------------------
    def _env(self, config: ModuleConfig, generation_id: str, device_id: str, hub: str,
             system: bool) -> dict[str, str]:
        env = dict(config.env)
        identity = hub_identity_name(config.name, system)
        env.update({
            "IOTEDGE_MODULEID": identity,
            "IOTEDGE_MODULEGENERATIONID": generation_id,
            "IOTEDGE_DEVICEID": device_id,
            "IOTEDGE_IOTHUBHOSTNAME": hub,
            "IOTEDGE_APIVERSION": WORKLOAD_API_VERSION,
            "IOTEDGE_AUTHSCHEME": "sasToken",
        })
        # nested edge: the agent and edgeHub go to the parent, every other module to this device (upstream.py)
        env.pop("IOTEDGE_GATEWAYHOSTNAME", None)
        env.pop("IOTEDGE_PARENTHOSTNAME", None)
        env.update(upstream_env(identity, self.settings.hostname, self.settings.parent_hostname))
        env.update(self.settings.extra_env)
        if system:
            # aziot-edged's watchdog: the agent writes EdgeDeviceHostName into edgeHub's environment and names it
            # as every other module's gateway (else its appsettings' placeholder "<Edge device host name>").
            env["EdgeDeviceHostName"] = self.settings.hostname
            env["Mode"] = "iotedged"
        env.update(self._socket_env(system))
        return env

    def _socket_env(self, system: bool) -> dict[str, str]:
        """IOTEDGE_WORKLOADURI and (the agent's) IOTEDGE_MANAGEMENTURI: IoT Edge's [connect] URIs for containers,
        where the runtime mounts the sockets; a host-process module is told its own workload socket's host path by
        its engine, and the agent [connect]'s management URI, else the management socket's host path."""
        out: dict[str, str] = {}
        if self.engine.kind == "docker":
            out["IOTEDGE_WORKLOADURI"] = f"unix://{self.settings.container_workload_socket}"
        if system:
            s = self.settings
            out["IOTEDGE_MANAGEMENTURI"] = (f"unix://{s.container_mgmt_socket}" if self.engine.kind == "docker"
                                            else s.connect_management_uri or f"unix://{s.mgmt_socket}")
        return out

    def _create_options(self, config: ModuleConfig, system: bool) -> dict[str, Any]:
        options = dict(config.create_options)
        if self.engine.kind == "docker":
            host = dict(options.get("HostConfig") or {})
            if self.settings.network and "NetworkMode" not in host:
                host["NetworkMode"] = self.settings.network
            if system and not self.settings.agent_mgmt_in_workload_dir:
                # The agent binds its management socket's path onto itself when it updates itself: the runtime
                # mounts that directory, so such binds would only put a directory dockerd made over the socket.
                # (In IoT Edge's layout, the management socket is in the agent's workload directory instead.)
                target = str(self.settings.container_mgmt_socket.parent)
                mounts = [m for m in host.get("Mounts") or []
                          if not (isinstance(m, Mapping) and inside(str(m.get("Target") or ""), target))]
                # Read-only, as the workload directory (engines/moby.py): it holds Edgeward's own sockets.
                mounts.append({"Type": "bind", "Source": str(self.settings.mgmt_dir), "Target": target,
                               "ReadOnly": True})
                host["Mounts"] = mounts
                if "Binds" in host:
                    host["Binds"] = [b for b in host.get("Binds") or []
                                     if not (isinstance(b, str) and inside(bind_target(b), target))]
            options["HostConfig"] = host
        return options

    def _module_spec(self, config: ModuleConfig, system: bool, env: Mapping[str, str], directory: Path) -> ModuleSpec:
        """What the engine is given for ``config``: by create, and by an update's check before it removes anything."""
        return ModuleSpec(name=config.name, image=config.image, env=env,
                          create_options=self._create_options(config, system),
                          labels={"net.edgeward.system": str(system)}, workload_dir=directory,
                          pull_policy=config.pull_policy)

    async def _vet(self, options: Mapping[str, Any], name: str) -> Vetted:
        """vet_create_options in a thread: it asks the engine (GET /info) and resolves paths on disk, and the
        workload API shares this event loop."""
        neighbours = self._binds()  # the registry's connection belongs to this thread
        return await asyncio.to_thread(lambda: vet_create_options(
            options, policy_for(self.settings, neighbours=neighbours), name))

    async def _vetted(self, config: ModuleConfig) -> ModuleConfig:
        """The module with the createOptions this device allows (runtime/privileges.py); a refusal is logged and
        audited before it reaches the caller. Idempotent, so an update can vet before it removes anything."""
        if self.engine.kind != "docker":
            return config
        try:
            vetted = await self._vet(config.create_options, config.name)
        except ElevatedOptionRefused as e:
            log.warning("module %s: %s", config.name, e.message)
            self._record("module.privileges_refused", config.name, option=e.option, reason=e.why)
            raise
        if vetted.stripped:
            log.warning("module %s: %s removed: privileged capabilities are disallowed on this device, as they can "
                        "be used to gain root access (%s)", config.name, ", ".join(vetted.stripped), ALLOW_HINT)
            self._record("module.privileges_stripped", config.name, stripped=list(vetted.stripped))
        return replace(config, create_options=vetted.options)

    def _binds(self) -> list[HostBind]:
        """The host binds of every registered module, as stored (and so as the engine was given them)."""
        out: list[HostBind] = []
        for reg in self.registry.all():
            out += host_binds(reg.name, _stored_options(reg) or {})
        return out

    def _gate(self, name: str, record: str = "module.start_refused") -> None:
        """Refuse (403, recorded) every create and start while the start gate is closed; a gate that fails is a
        closed one."""
        if self.start_gate is None:
            return
        try:
            why = self.start_gate.refusal(self.audit)
        except Exception as e:
            log.exception("the start gate failed")
            why = f"the start gate cannot be consulted ({e.__class__.__name__}); nothing starts until it can"
        if why is not None:
            log.warning("module %s may not start: %s", name, why)
            self._record_if_possible(record, name, reason=why)
            raise Forbidden(why)

    async def stop_gated_modules(self) -> None:
        """At start, while the start gate is closed: stop every module found running. The engine may have started
        them on its own (a restart policy across a reboot or a crash of Edgeward) before this runtime listened for
        its events."""
        if self.start_gate is None:
            return
        for reg in self.registry.all():
            try:
                status = await self.engine.inspect(reg.name)
            except EngineError:
                continue
            if status.state != "running":
                continue
            try:
                self._gate(reg.name, "module.stopped_refused")
            except Forbidden:
                log.error("module %s is running although the start gate is closed; stopping it", reg.name)
                with contextlib.suppress(EngineError):
                    await self.engine.stop(reg.name, timeout=0)

    async def _vet_start(self, reg: Registration, record: str = "module.start_refused") -> None:
        """Vet the stored createOptions again before a start this runtime initiates: a bind source may have become
        a symlink since the module was created, and a module created while elevated permissions were allowed keeps
        Privileged/CapAdd in its container after they are turned off. Refused starts are logged and audited."""
        if self.engine.kind != "docker" or self.settings.allow_elevated_docker_permissions:
            return
        options = _stored_options(reg)
        try:
            if options is None:
                raise ElevatedOptionRefused("createOptions", "the stored module spec cannot be read")
            vetted = await self._vet(options, reg.name)
            if vetted.stripped:
                raise ElevatedOptionRefused(", ".join(vetted.stripped), "the module was created while elevated "
                                            "permissions were allowed and its container still has them; recreate "
                                            "it (update or remove and create the module) to run it without them")
        except ElevatedOptionRefused as e:
            log.warning("module %s may not run: %s", reg.name, e.message)
            self._record(record, reg.name, option=e.option, reason=e.why)
            raise

    async def _ensure_image(self, config: ModuleConfig) -> None:
        try:
            present = await self.engine.image_id(config.image)
            if present is None:
                if config.pull_policy == "never":
                    raise BadRequest(f"image {config.image} is not on the device and imagePullPolicy is never")
                await self.engine.pull(config.image, auth=config.auth)
        except EngineError as e:
            raise engine_error(e) from None

    async def create_module(self, config: ModuleConfig, *, system: bool = False) -> ModuleView:
        if not valid_module_name(config.name):
            raise BadRequest(f"invalid module name {config.name!r}")
        config = await self._vetted(config)
        async with self._locks.hold(config.name):
            return await self._create(config, system)

    async def _create(self, config: ModuleConfig, system: bool) -> ModuleView:
        """create_module with the module's lock held by the caller and the spec vetted."""
        self._gate(config.name)
        if (known := self.registry.named_like(config.name)) is not None:
            raise Conflict(f"module {config.name} already exists" if known.name == config.name else
                           f"module {known.name} exists: module names may not differ only in letter case")
        await self._ensure_image(config)
        try:  # what the engine would refuse in the spec itself, before an identity is made for it
            await self.engine.check(self._module_spec(config, system, {}, self.sockets.directory(config.name)))
        except EngineError as e:
            raise engine_error(e) from None
        identity_name = hub_identity_name(config.name, system)
        made = await self.identities.get(identity_name) is None  # the agent usually made it first: not ours to undo
        identity = await self.identities.ensure(identity_name, managed_by="IotEdge")
        try:
            directory = await self.sockets.open(config.name)
            spec = self._module_spec(config, system, self._env(config, identity.generation_id, identity.device_id,
                                                               identity.hub, system), directory)
            # Registered (without an engine id) before the engine creates it, so a crash in between leaves a
            # trace reconcile() can finish; the engine id and measured image follow once the object exists.
            reg = self.registry.put(Registration(
                name=config.name, engine=self.engine.kind, engine_id="", image=config.image, image_id="",
                generation_id=identity.generation_id, state="created", system=system, config=config.to_wire()))
            try:
                status = await self.engine.create(spec)
            except BaseException:  # refused or failed, even by a bug: no registration or socket is left behind
                self.registry.delete(config.name)
                await self.sockets.close(config.name)
                raise
        except BaseException as e:  # nor an identity this create made (IoT Hub caps module identities a device)
            if made:
                await self._undo_identity(identity_name)
            if isinstance(e, EngineError):
                raise engine_error(e) from None
            raise
        # The audit record first: a registration always has a creation record to be checked against.
        self._record("module.created", config.name, engine_id=status.engine_id, image=config.image,
                     image_id=status.image_id, generation_id=identity.generation_id, system=system)
        reg = self.registry.put(replace(reg, engine_id=status.engine_id, image_id=status.image_id))
        if self.image_use is not None:  # image garbage collection: when an image was last used (runtime/image_gc.py)
            self.image_use.record(status.image_id)
        log.info("module %s created (%s %s, image %s)", config.name, self.engine.kind, status.engine_id[:12],
                 status.image_id[:19])
        return ModuleView(reg, status)

    async def _undo_identity(self, identity_name: str) -> None:
        """Delete the identity a failed create made; a failure to is logged, the create's own error is the answer."""
        try:
            await self.identities.delete(identity_name)
        except Exception:
            log.exception("could not delete module identity %s, made for a create that failed", identity_name)
        else:
            log.info("module identity %s, made for a create that failed, is deleted", identity_name)

    def _registration(self, name: str) -> Registration:
        reg = self.registry.get(name)
        if reg is None:
            raise NotFound(f"module {name} not found")
        return reg

    async def get_module(self, name: str) -> ModuleView:
        reg = self._registration(name)
        try:
            status: ModuleStatus | None = await self.engine.inspect(name)
        except ModuleNotFound:
            status = None
        except EngineError as e:
            raise engine_error(e) from None
        return ModuleView(reg, status, self.sockets.unavailable.get(name), self.update_failures.get(name))

    async def list_modules(self) -> list[ModuleView]:
        try:
            statuses = {s.name: s for s in await self.engine.list()}
        except EngineError as e:
            raise engine_error(e) from None
        return [ModuleView(reg, statuses.get(reg.name), self.sockets.unavailable.get(reg.name),
                           self.update_failures.get(reg.name))
                for reg in self.registry.all()]

    async def start_module(self, name: str) -> None:
        async with self._locks.hold(name):
            await self._start(name)

    async def _start(self, name: str) -> None:
        self._gate(name)
        await self._vet_start(self._registration(name))
        try:
            await self.engine.start(name)
        except EngineError as e:
            raise engine_error(e) from None
        self.registry.set_state(name, "running")

    async def stop_module(self, name: str) -> None:
        async with self._locks.hold(name):
            self._registration(name)
            self.registry.set_state(name, "stopped")  # first, so the watchdog does not fight the stop
            try:
                await self.engine.stop(name)
            except EngineError as e:
                raise engine_error(e) from None

    async def stop_all_modules(self, why: str) -> None:
        """Stop every module now, whatever cannot be written: a verifier's revocation must stop them on a full
        disk too. A module whose "stopped" the registry cannot take is stopped in the engine all the same; the start
        gate, closed by then, keeps the watchdog and the engine from bringing it back."""
        for reg in self.registry.all():
            try:
                await self.stop_module(reg.name)
                continue
            except Exception:
                log.exception("could not stop module %s through the registry (%s); stopping it in the engine",
                              reg.name, why)
            try:
                async with self._locks.hold(reg.name):
                    await self.engine.stop(reg.name, timeout=0)
            except Exception:  # one module that will not stop must not keep the others running
                log.exception("could not stop module %s (%s)", reg.name, why)

    async def restart_module(self, name: str) -> None:
        async with self._locks.hold(name):
            self._gate(name)
            await self._vet_start(self._registration(name))
            try:
                await self.engine.restart(name)
            except EngineError as e:
                raise engine_error(e) from None
            self.registry.set_state(name, "running")

    async def remove_module(self, name: str, *, by_runtime: bool = False) -> None:
        async with self._locks.hold(name):
            await self._remove(name, by_runtime)

    async def _remove(self, name: str, by_runtime: bool) -> None:
        reg = self._registration(name)
        if reg.system and not by_runtime:
            raise Forbidden(f"module {name} is the edge agent; the runtime keeps it and it cannot be removed "
                            f"through the management API")
        try:
            await self.engine.remove(name)
        except ModuleNotFound:
            pass
        except EngineError as e:
            raise engine_error(e) from None
        self.registry.delete(name)
        await self.sockets.close(name)
        self._record("module.removed", name, engine_id=reg.engine_id)
        log.info("module %s removed", name)

    async def update_module(self, config: ModuleConfig, start: bool) -> ModuleView:
        """Replace a module with a new spec (IoT Edge recreates the container); the generation id is kept."""
        config = await self._checked_update(config)
        # One hold of the module's lock from removal to start: the watchdog, woken by the engine's "destroy",
        # must not recreate the edge agent from the config in between (the agent's self-update answered 409).
        async with self._locks.hold(config.name):
            view = await self._replace(config, start)
        return await self.get_module(config.name) if start else view

    async def update_self_later(self, config: ModuleConfig, start: bool, answered: Awaitable[None]) -> None:
        """The edge agent replacing itself (PUT /modules/edgeAgent from the agent): what can be refused is refused
        now, to the agent, which is still there to read it; the replacement runs in a task of its own once
        `answered` (the agent's connection closed) or ANSWER_GRACE has passed. Removing the agent first would close
        its connection with no answer, which it takes for a failed update; aziot-edged answers 201 and then
        replaces it in a spawned task (edgelet-http-mgmt, module/delete_or_get_or_update.rs).

        The task holds the module's lock from before the agent is stopped to the new one's start, so a second
        update waits for it instead of interleaving; its failure is logged, audited and shown in the agent's status
        (the runtimeStatus description), and the watchdog brings the agent back from the configuration. At most one
        is pending: another one meanwhile is a 409."""
        name = f"update-{config.name}"

        def none_pending() -> None:  # h/brk14c F2: 101 were queued in 0.42 s, then 101 cycles of the agent
            if any(t.get_name() == name for t in self._updates):
                raise Conflict(f"module {config.name}'s update of itself is already under way; ask again once it "
                               f"is done")

        none_pending()
        config = await self._checked_update(config)
        none_pending()  # one may have got in while this one was checked
        task = asyncio.create_task(self._update_after_answer(config, start, answered), name=name)
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _update_after_answer(self, config: ModuleConfig, start: bool, answered: Awaitable[None]) -> None:
        name = config.name
        try:
            async with self._locks.hold(name):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ANSWER_GRACE):
                        await answered
                # Stopped first, as aziot-edged does, so the old agent gets the engine's stop timeout to exit
                # (a container's removal is a SIGKILL).
                with contextlib.suppress(ModuleNotFound):
                    await self.engine.stop(name)
                await self._replace(config, start)
        except asyncio.CancelledError:
            log.warning("module %s: the update it asked for was interrupted (the daemon is stopping)", name)
            raise
        except Exception as e:
            why = getattr(e, "message", None) or f"{e.__class__.__name__}: {e}"
            if isinstance(e, HttpError | EngineError):
                log.error("module %s: the update it asked for failed after its answer: %s; the watchdog restores "
                          "it from the configuration", name, why)
            else:
                log.exception("module %s: the update it asked for failed after its answer", name)
            self.update_failures[name] = f"the update it asked for failed: {why}"
            self._record_if_possible("module.update_failed", name, reason=why)
            self._wake.set()
        else:
            log.info("module %s replaced itself (the update it asked for is done)", name)

    async def _checked_update(self, config: ModuleConfig) -> ModuleConfig:
        """Everything an update may refuse before it touches the module it replaces; the vetted spec."""
        reg = self._registration(config.name)
        if reg.system and config.name != reg.name:
            raise Forbidden("the edge agent's name cannot change")
        self._gate(config.name)  # before the old module is removed: a refused update must not cost it
        config = await self._vetted(config)  # a refused spec must not cost the module it would replace
        await self._ensure_image(config)
        try:  # nor one only the engine refuses (a host module's User, its executable)
            await self.engine.check(self._module_spec(config, reg.system, {}, self.sockets.directory(config.name)))
        except EngineError as e:
            raise engine_error(e) from None
        return config

    async def _replace(self, config: ModuleConfig, start: bool) -> ModuleView:
        """Remove, create, start: with the module's lock held by the caller and the spec checked."""
        reg = self._registration(config.name)
        await self._remove(config.name, by_runtime=True)
        view = await self._create(config, reg.system)
        if start:
            await self._start(config.name)
        self.update_failures.pop(config.name, None)
        return view

    async def prepare_update(self, config: ModuleConfig) -> None:
        await self._ensure_image(config)

    async def logs(self, name: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        self._registration(name)
        try:
            async for chunk in self.engine.logs(name, options):
                yield chunk
        except EngineError as e:
            raise engine_error(e) from None

    async def stats(self, name: str) -> Mapping[str, Any]:
        self._registration(name)
        try:
            return await self.engine.stats(name)
        except EngineError as e:
            raise engine_error(e) from None

    # the watchdog ---------------------------------------------------------------------------------------------
    async def _follow_events(self) -> None:
        """Engine events wake the watchdog at once, so a killed agent is back without waiting for the timer."""
        delay = 1.0
        while True:
            try:
                async for event in self.engine.events():
                    delay = 1.0
                    if event.action in ("die", "destroy", "stop"):
                        self._wake.set()
                    elif event.action == "start" and event.name and self.registry.get(event.name) is not None:
                        task = asyncio.create_task(self._check_started(event.name), name=f"vet-{event.name}")
                        self._checks.add(task)
                        task.add_done_callback(self._checks.discard)
            except EngineError as e:
                log.warning("engine events unavailable: %s", e.message)
            except Exception:
                log.exception("engine event stream failed")
            # The stream ended: the engine restarted or went away. Reconcile once it answers again.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            self._wake.set()

    async def _check_started(self, name: str) -> None:
        """A start this runtime did not vet (dockerd's restart policy, `docker start`): vetted after the fact, and
        stopped if it fails, so a bind turned into a symlink does not stay mounted in a running module, nor a module
        runs on a device its verifier revoked (the start gate)."""
        reg = self.registry.get(name)
        if reg is None:
            return
        try:
            async with self._locks.hold(name):
                self._gate(name, "module.stopped_refused")
                if self.engine.kind == "docker" and not self.settings.allow_elevated_docker_permissions:
                    await self._vet_start(reg, "module.stopped_refused")
        except (ElevatedOptionRefused, Forbidden):
            log.error("module %s was started by the engine although it may not run; stopping it", name)
            with contextlib.suppress(EngineError):
                await self.engine.stop(name, timeout=0)
        except Exception:
            log.exception("could not vet the started module %s", name)

    async def _watchdog(self) -> None:
        failures = 0
        while True:
            try:
                await self.check_agent()
                failures = 0
                self.last_watchdog_error = None
            except (HttpError, EngineError) as e:
                failures += 1
                self.last_watchdog_error = getattr(e, "message", str(e))
                log.error("watchdog: could not keep the edge agent running: %s", self.last_watchdog_error)
                limit = self.settings.watchdog_max_retries
                if limit is not None and failures > limit:
                    log.error("watchdog: giving up after %d attempts", failures - 1)
                    return
            except Exception:
                failures += 1
                log.exception("watchdog failed")
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as the event fires
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.watchdog_period * (2 ** min(failures, 5))):
                    await self._wake.wait()

    async def check_agent(self) -> None:
        """Create the edge agent if it is missing, and start it unless someone deliberately stopped it."""
        agent = self.settings.agent
        if agent is None:
            return
        # The whole decision under the agent's lock: an update of the agent (remove, create, start) is never seen
        # half done.
        async with self._locks.hold(agent.name):
            reg = self.registry.get(agent.name)
            if reg is None:
                log.info("watchdog: creating the edge agent %s", agent.name)
                await self._create(await self._vetted(agent), True)
                await self._start(agent.name)
                return
            try:
                status = await self.engine.inspect(agent.name)
            except ModuleNotFound:
                log.warning("watchdog: the edge agent's %s object is gone; recreating it", reg.engine)
                await self._remove(agent.name, True)
                await self._create(await self._vetted(agent), True)
                await self._start(agent.name)
                self.agent_restarts += 1
                self._record("watchdog.recreated", agent.name)
                return
            if status.state != "running" and reg.state != "stopped":
                log.warning("watchdog: the edge agent is %s; starting it", status.state)
                await self._start(agent.name)
                self.agent_restarts += 1
                self._record("watchdog.restarted", agent.name, was=status.state)
