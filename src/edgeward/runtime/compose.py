"""Builds the runtime (the aziot-edged part): engine, registry, identities, edge CA, watchdog, and the management
and workload APIs on their sockets."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..access.refusals import refusals
from ..attest.audit import AuditLog
from ..attest.audit_counter import AuditCounter
from ..attest.audit_open import open_audit_log
from ..attest.monitor import IntegrityMonitor
from ..attest.pipeline import Attestor
from ..certs.api import CertsApi
from ..http import Listener, start_server
from ..http.callers import by_socket
from ..http.limits import max_requests_limiter
from ..http.server import make_runner
from ..identity.service import IdentityService
from ..keys.api import KeysApi
from .edge_ca import EdgeCa
from .engine import ModuleEngine
from .identities import CloudModuleIdentities, LocalModuleIdentities, ModuleIdentities
from .identity_client import IdentityServiceModules
from .mgmt_routes import Management, build_management_app
from .registry import Registry
from .service import ModuleRuntime
from .settings import RuntimeSettings
from .sockets import WorkloadSockets
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
                         sandbox_uid_base=settings.sandbox_uid_base or DEFAULT_SANDBOX_UID_BASE)


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

    async def close(self) -> None:
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


async def start_runtime(settings: RuntimeSettings, keys: KeysApi, certs: CertsApi, identities: ModuleIdentities,
                        *, engine: ModuleEngine | None = None, provisioning: str = "manual",
                        reprovision: Callable[[], Awaitable[None]] | None = None,
                        audit_counter: AuditCounter | None = None) -> RuntimeParts:
    engine = engine or make_engine(settings)
    registry = Registry(settings.home)
    attestor = Attestor(engine, registry)
    edge_ca = EdgeCa(keys, certs)
    sockets = WorkloadSockets(settings.workload_root)
    workload = Workload(attestor, sockets, keys, edge_ca, settings.hostname)
    # One socket per module: the socket is the caller, whatever uids the module's processes take.
    workload_app = build_workload_app(workload, limiter=max_requests_limiter(settings.max_requests.get("workload"),
                                                                             caller_key=by_socket))
    workload_runner = make_runner(workload_app)
    await workload_runner.setup()
    sockets.runner = workload_runner  # from now on every module directory gets its socket
    # Keyed by the keys service, anchored to the TPM's counter when there is one (see attest.audit).
    audit = await open_audit_log(settings.audit_home or settings.home / "audit", keys, audit_counter)
    refusals.set_sink(audit)  # every refusal of this process's services is recorded in the runtime's audit log
    runtime = ModuleRuntime(settings, engine, registry, identities, sockets, audit=audit)
    workload.runtime = runtime
    mgmt = Management(runtime, attestor, identities, provisioning=provisioning, reprovision=reprovision)
    monitor = IntegrityMonitor(engine, registry, audit, attestor, policy=settings.integrity_policy,
                               period=settings.integrity_period)
    parts = RuntimeParts(runtime, engine, registry, identities, attestor, edge_ca, sockets, audit, monitor,
                         [workload_runner])
    try:
        settings.mgmt_dir.mkdir(parents=True, exist_ok=True)
        mgmt_app = build_management_app(mgmt, limiter=max_requests_limiter(settings.max_requests.get("management")))
        parts.runners.append(await start_server(mgmt_app, [
            Listener(settings.mgmt_socket, mode=0o666, activation_name="aziot-edged.mgmt")]))
        await runtime.start()
        await monitor.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await parts.close()
        raise
    log.info("runtime ready: %s engine, management API on %s", engine.kind, settings.mgmt_socket)
    return parts

