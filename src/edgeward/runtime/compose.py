"""Builds the runtime (the aziot-edged part): engine, registry, identities, edge CA, watchdog, and the management
and workload APIs on their sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..access.refusals import refusals
from ..attest.accept import AcceptAttestor
from ..attest.audit import AuditLog
from ..attest.audit_counter import AuditCounter
from ..attest.audit_open import open_audit_log
from ..attest.monitor import IntegrityMonitor
from ..attest.pipeline import Attestor
from ..certs.api import CertsApi
from ..http.activation import activated_sockets, socket_for_fd_uri
from ..http.callers import by_attested_module
from ..http.limits import max_requests_limiter
from ..http.server import UnsafeSocketPath, bind_unix, make_runner
from ..identity.service import IdentityService
from ..keys.api import KeysApi
from .edge_ca import EdgeCa
from .engine import ModuleEngine
from .identities import CloudModuleIdentities, LocalModuleIdentities, ModuleIdentities
from .identity_client import IdentityServiceModules
from .image_gc import ImageCollector, ImageUse
from .mgmt_routes import Management, build_management_app
from .registry import Registry
from .service import ModuleRuntime
from .settings import RuntimeSettings
from .sockets import WorkloadSockets
from .start_gate import StartGate
from .workload_routes import Workload, build_workload_app

__all__ = ["RuntimeParts", "identities_for", "make_engine", "start_runtime"]

log = logging.getLogger(__name__)


def make_engine(settings: RuntimeSettings) -> ModuleEngine:
    """The configured engine; imported on demand so a device without a container engine needs no Docker client."""
    if settings.engine == "docker":
        from .engines.moby import DockerEngine  # noqa: PLC0415

        return DockerEngine(settings.docker_uri)
    from .engines.process import DEFAULT_SANDBOX_UID_BASE, ProcessEngine  # noqa: PLC0415

    # Sandboxed modules see Edgeward's state directory (home is <state>/runtime) and run directory as empty tmpfs.
    return ProcessEngine(settings.home / "processes", hidden=(settings.home.parent, settings.run_dir),
                         sandbox_uid_base=settings.sandbox_uid_base or DEFAULT_SANDBOX_UID_BASE,
                         allow_elevated=settings.allow_elevated_docker_permissions,
                         principal_uids=settings.principal_uids)


@dataclass
class RuntimeParts:
    runtime: ModuleRuntime
    engine: ModuleEngine
    registry: Registry
    identities: ModuleIdentities
    attestor: Attestor
    edge_ca: EdgeCa
    sockets: WorkloadSockets
    audit: AuditLog
    monitor: IntegrityMonitor
    runners: list[web.AppRunner] = field(default_factory=list)
    image_gc: ImageCollector | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.monitor.stop()
        await self.runtime.stop()
        # The engine first: it stops host-process modules and ends every log and event stream, so requests that
        # follow one (GET /modules/{m}/logs?follow=true) end before the servers wait for their handlers.
        await self.engine.close()
        await self.sockets.close_all()
        for runner in self.runners:
            await runner.cleanup()
        if isinstance(self.identities, LocalModuleIdentities):
            self.identities.close()
        elif isinstance(self.identities, IdentityServiceModules):
            await self.identities.close()
        self.registry.close()
        refusals.set_sink(None)
        self.audit.close()


def identities_for(settings: RuntimeSettings, provisioning: object | None,
                   identity: IdentityService | None, identity_socket: Path | None) -> ModuleIdentities:
    """Module identities from the cloud when the device is provisioned (in-process identity service, or its
    socket), else minted locally."""
    if provisioning is None:
        return LocalModuleIdentities(settings.home, settings.hostname)
    if identity is not None:
        return CloudModuleIdentities(identity)
    assert identity_socket is not None
    return IdentityServiceModules(identity_socket)


# The names systemd gives IoT Edge's sockets (their units' names), and Edgeward's unit's name for the management one.
MGMT_ACTIVATION_NAMES = ("aziot-edged.mgmt.socket", "aziot-edged.mgmt")
WORKLOAD_ACTIVATION_NAME = "aziot-edged.workload.socket"


def listening_socket(uri: str | None, default: Path | None, setting: str, names: tuple[str, ...],
                     mode: int = 0o666) -> socket.socket | None:
    """The socket a [listen] URI names: ``fd://`` a socket systemd passed (by name or number; ActivationError when
    it did not), else one systemd passed under the socket's unit name (preferred, as aziot's http-common does), else
    ``unix://``'s path (or ``default``) bound here. None: nothing configured, passed or defaulted."""
    if uri is not None and uri.startswith("fd://"):
        return socket_for_fd_uri(uri, setting)
    passed = activated_sockets()
    for name in names:
        if name in passed:
            return passed[name]
    path = Path(uri.removeprefix("unix://")) if uri is not None else default
    return bind_unix(path, mode) if path is not None else None


def agent_mgmt_socket(settings: RuntimeSettings, sockets: WorkloadSockets) -> Path | None:
    """Where a container agent's management socket is on the host, when it is not the listen socket: in the agent's
    workload directory in IoT Edge's one-directory layout, else in the management directory, under the file name
    connect.management_uri gives it (the runtime mounts that directory on connect.management_uri's)."""
    if settings.engine != "docker" or settings.agent is None:
        return None
    if settings.agent_mgmt_in_workload_dir:
        directory = sockets.directory(settings.agent.name)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103 -- the agent may run as any uid
    else:
        directory = settings.mgmt_dir
    path = directory / settings.container_mgmt_socket.name
    return None if path == settings.mgmt_socket else path


async def _serve(runner: web.AppRunner, sock: socket.socket) -> None:
    site = web.SockSite(runner, sock)
    await site.start()
    log.info("listening on %s", sock.getsockname() or f"fd {sock.fileno()}")


async def start_runtime(settings: RuntimeSettings, keys: KeysApi, certs: CertsApi, identities: ModuleIdentities,
                        *, engine: ModuleEngine | None = None, provisioning: str = "manual",
                        reprovision: Callable[[], Awaitable[None]] | None = None,
                        audit_counter: AuditCounter | None = None,
                        start_gate: StartGate | None = None) -> RuntimeParts:
    engine = engine or make_engine(settings)
    registry = Registry(settings.home)
    attestor = Attestor(engine, registry)
    edge_ca = EdgeCa(keys, certs)
    sockets = WorkloadSockets(settings.workload_root, socket_name=settings.workload_socket_name)
    workload = Workload(attestor, sockets, keys, edge_ca, settings.hostname)
    # A connection counts under the module it is attested as, whatever uids the module's processes take; anyone
    # else who can reach a module's socket (or the shared one) counts as their own uid.
    caller_key = by_attested_module(AcceptAttestor(engine, registry, sockets.module_of).module_of)
    workload_app = build_workload_app(workload, limiter=max_requests_limiter(settings.max_requests.get("workload"),
                                                                             caller_key=caller_key))
    workload_runner = make_runner(workload_app)
    await workload_runner.setup()
    sockets.runner = workload_runner  # from now on every module directory gets its socket
    # Keyed by the keys service, anchored to the TPM's counter when there is one (see attest.audit).
    audit = await open_audit_log(settings.audit_home or settings.home / "audit", keys, audit_counter)
    refusals.set_sink(audit)  # every refusal of this process's services is recorded in the runtime's audit log
    runtime = ModuleRuntime(settings, engine, registry, identities, sockets, audit=audit,
                            start_gate=start_gate)
    image_gc = None
    if engine.kind == "docker":
        runtime.image_use = ImageUse(settings.home / "gc" / "image_use.json")
        if settings.image_gc.enabled:
            image_gc = ImageCollector(engine, runtime.image_use, settings.image_gc,  # type: ignore[arg-type]
                                      settings.agent.image if settings.agent is not None else None)
    workload.runtime = runtime
    mgmt = Management(runtime, attestor, identities, provisioning=provisioning, reprovision=reprovision)
    monitor = IntegrityMonitor(engine, registry, audit, attestor, policy=settings.integrity_policy,
                               period=settings.integrity_period)
    parts = RuntimeParts(runtime, engine, registry, identities, attestor, edge_ca, sockets, audit, monitor,
                         [workload_runner], image_gc)
    try:
        settings.mgmt_dir.mkdir(parents=True, exist_ok=True)
        mgmt_runner = make_runner(build_management_app(mgmt, limiter=max_requests_limiter(
            settings.max_requests.get("management"))))
        await mgmt_runner.setup()
        parts.runners.append(mgmt_runner)
        main = listening_socket(settings.listen_management_uri, settings.mgmt_socket, "listen.management_uri",
                                MGMT_ACTIVATION_NAMES)
        assert main is not None
        await _serve(mgmt_runner, main)
        agent_socket = agent_mgmt_socket(settings, sockets)
        if agent_socket is not None:
            try:
                await _serve(mgmt_runner, bind_unix(agent_socket, 0o666))
            except UnsafeSocketPath as e:  # in a directory the agent had mounted: its loss, not the daemon's
                log.error("the edge agent's management socket cannot be opened at %s: %s; the agent runs without "
                          "it until what is there is removed and Edgeward restarts", agent_socket, e)
        # Edgeward's CLI (`edgeward list`, `logs`, `restart`) finds the management API under the run directory,
        # wherever [listen] puts it (never re-bound over a socket systemd passed for that path).
        cli_socket = settings.mgmt_dir / "mgmt.sock"
        if str(cli_socket) != main.getsockname() and cli_socket != agent_socket:
            await _serve(mgmt_runner, bind_unix(cli_socket, 0o666))
        # IoT Edge's shared workload socket, for modules told its path by an older agent: attestation still names
        # the caller by its container, so a module acts only as itself there too.
        shared = listening_socket(settings.listen_workload_uri, None, "listen.workload_uri",
                                  (WORKLOAD_ACTIVATION_NAME,))
        if shared is not None:
            await _serve(workload_runner, shared)
        if settings.network and hasattr(engine, "ensure_network"):
            await engine.ensure_network(settings.network, settings.network_options)
        await runtime.start()
        await monitor.start()
        if image_gc is not None:
            parts.tasks.append(asyncio.create_task(image_gc.run(), name="image-gc"))
    except BaseException:
        with contextlib.suppress(Exception):
            await parts.close()
        raise
    log.info("runtime ready: %s engine, management API on %s", engine.kind, settings.mgmt_socket)
    return parts

