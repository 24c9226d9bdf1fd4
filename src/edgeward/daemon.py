"""Compositions of the services: all in one process (``edgeward run``) or one per process (``edgeward serve``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from .access.wiring import guard_host_service, socket_mode
from .config.problems import ConfigError, Problems
from .config.service_files import PEERS, SERVICE_FILES
from .http import Listener, start_server
from .http.limits import max_requests_limiter
from .http.logfilter import limit_provoked_logs
from .http.peercred import Caller
from .keys.settings import KeysSettings, parse_keys_settings
from .notify import notify

if TYPE_CHECKING:
    from .certs.settings import CertsSettings
    from .identity.settings import IdentitySettings
    from .keylime.settings import KeylimeSettings
    from .runtime.settings import RuntimeSettings
    from .tpm.settings import TpmdSettings

__all__ = ["DaemonSettings", "ServiceSettings", "load_service_settings", "load_settings", "load_super_service_settings",
           "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    """What one process serves from: the settings of the services it runs, and of those they call (where these
    listen). A service started on its own file (--config-dir) reads no settings of a service it does not call, so it
    loads none of that service's code: ``serve keys`` has no certs, identity or runtime settings."""

    state_dir: Path
    run_dir: Path
    keys: KeysSettings
    certs: CertsSettings | None
    identity: IdentitySettings | None
    runtime: RuntimeSettings | None
    tpm: TpmdSettings | None = None  # the TPM service runs only when [tpm] is configured
    warnings: tuple[str, ...] = ()
    config_path: Path | None = None  # the super config, or the service's own file (--config-dir); None: defaults
    # [aziot_max_requests] keyd/certd/identityd as configured (simultaneous requests per caller); absent: defaults
    max_requests: Mapping[str, int] = field(default_factory=dict)
    keylime: KeylimeSettings | None = None  # the Keylime agent runs only when [edgeward.keylime] is configured


@dataclass(frozen=True)
class DaemonSettings(ServiceSettings):
    """Every service's settings, from the super config (or the embedded defaults)."""

    certs: CertsSettings
    identity: IdentitySettings
    runtime: RuntimeSettings


def read_config(path: Path | None) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist"], str(path)) from None
    except OSError as e:  # not readable by this user, a directory, ...
        raise ConfigError([f"cannot read config file {path}: {e.strerror or e}"], str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], str(path)) from None


# What `edgeward run` without a config file does: software keys, a local CA, and a device server certificate that
# renews itself (with a new key) at 80% of its life.
EMBEDDED_DEFAULTS: Mapping[str, Any] = {
    "cert_issuance": {
        "local_ca": {"cert": "edgeward-local-ca", "pk": "edgeward-local-ca", "common_name": "Edgeward local CA",
                     "expiry_days": 365},
        "edgeward-device-server": {"method": "local_ca", "expiry_days": 30,
                                   "auto_renew": {"rotate_key": True, "threshold": "80%", "retry": "4%"}},
        "local-id-*": {"method": "local_ca", "expiry_days": 30},
        # what `edgeward demo` issues with the local CA as explicit issuer: a server cert for that one name
        "demo-module-server": {"kind": "server", "dns_names": ["demo-module.local"]},
    },
    # Local (non-cloud) identities: X.509 certificates for host agents, CN <name>.<hostname>.edgeward.local.
    "localid": {"domain_name": "edgeward.local"},
}


def _files_of(config: Path | None, *services: object) -> tuple[Path, ...]:
    """What no module may bind (runtime/privileges.py): the config file, and every file:// URI, homedir and socket
    the services' settings name, wherever the operator put them (preloaded keys and certs, the edge CA's and the
    identity's cert and key files, trust bundles, the PKCS#11 library)."""
    found: list[Path] = [config.resolve()] if config is not None else []

    def walk(value: object) -> None:
        if isinstance(value, Path):
            found.append(value)
        elif isinstance(value, str) and value.startswith("file://"):
            found.append(Path(unquote(urlsplit(value).path)))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))

    walk(services)
    return tuple(dict.fromkeys(p for p in found if p.is_absolute()))


def load_settings(config: Path | None, state_dir: Path, run_dir: Path) -> DaemonSettings:
    """Read the super config (IoT Edge 1.5's config.toml, plus Edgeward's tables), split it into the documents
    `edgeward config apply` writes, and parse each with its service's reader; every problem is raised at once."""
    # Here, not at the top: a service started on its own file (--config-dir) reads no other service's settings.
    from .certs.settings import parse_certs_settings  # noqa: PLC0415
    from .config.super_config import split_super_config  # noqa: PLC0415
    from .identity.settings import parse_identity_settings  # noqa: PLC0415
    from .runtime.settings import parse_runtime_settings  # noqa: PLC0415
    from .tpm.settings import parse_tpmd_settings  # noqa: PLC0415

    doc = read_config(config) if config is not None else EMBEDDED_DEFAULTS
    problems = Problems(str(config) if config else "embedded defaults")
    # checks and translates, edge CA included
    split = split_super_config(doc, problems, config_files=(config.resolve(),) if config is not None else ())
    keys = parse_keys_settings(split.keyd, state_dir, run_dir, problems)
    certs = parse_certs_settings(split.certd, state_dir, run_dir, problems)
    identity = parse_identity_settings(split.identityd, state_dir, run_dir, problems)
    runtime = parse_runtime_settings(split.edged, state_dir, run_dir, problems)
    tpm = parse_tpmd_settings(split.tpmd, run_dir, problems, prefix="tpm") if split.tpmd is not None else None
    keylime = _keylime_settings(split.edged, state_dir, problems)
    problems.raise_if_any()
    if split.cloud_timeout_sec is not None:
        identity = replace(identity, cloud_timeout=float(split.cloud_timeout_sec))
    pkcs11_lib = Path(keys.pkcs11_lib_path) if keys.pkcs11_lib_path else None  # keyd loads it as root
    protected = _files_of(config, keys, certs, identity, pkcs11_lib) + runtime.protected_paths
    runtime = replace(runtime, protected_paths=tuple(dict.fromkeys(protected)))
    limits = {name: doc["aziot_max_requests"][name] for name, doc in
              (("keyd", split.keyd), ("certd", split.certd), ("identityd", split.identityd))
              if name in doc.get("aziot_max_requests", {})}
    return DaemonSettings(state_dir, run_dir, keys, certs, identity, runtime, tpm,
                          tuple(dict.fromkeys(problems.warnings)), config, limits, keylime)


def _keylime_settings(edged: Mapping[str, Any], state_dir: Path, problems: Problems) -> KeylimeSettings | None:
    """``[edgeward.keylime]`` (in edged's document: the agent runs beside the module runtime), read only when it is
    there, so no other process loads the Keylime agent's code."""
    ours = edged.get("edgeward")
    table = ours.get("keylime") if isinstance(ours, dict) else None
    if not isinstance(table, dict):
        return None
    from .keylime.settings import parse_keylime_settings  # noqa: PLC0415

    return parse_keylime_settings(table, state_dir, problems)


# The services each one calls: what a service started on its own file must know of the others (their sockets).
# Every process knows where keyd listens (its settings reader is small).
_CALLS = {"keys": (), "tpm": (), "certs": ("keys",), "identity": ("keys", "certs"),
          "edged": ("keys", "certs", "identity")}


def load_service_settings(service: str, config_dir: Path, state_dir: Path, run_dir: Path) -> ServiceSettings:
    """``edgeward serve <service> --config-dir <dir>``: read only the service's own file, the one ``edgeward config
    apply`` wrote for it (in the packaged deployment each file is readable by its service's user only), with that
    service's reader. What it needs of the other services is in that file (config/super_config.py): the endpoints
    of those it calls (their settings here are only where they listen), keyd's identity principals, edged's
    ``[edgeward.peers]``. Each settings reader is imported only for the service it reads (start-up time and memory
    of ``serve keys``). Every problem is raised at once, naming the file."""
    path = config_dir / SERVICE_FILES[service]
    try:
        doc = read_config(path)
    except ConfigError as e:
        hint = ("`edgeward config apply` writes it when [tpm] is configured or DPS provisioning uses TPM attestation"
                if service == "tpm" else f"`edgeward config apply --out-dir {config_dir}` writes it")
        raise ConfigError([f"{e.problems[0]}; {hint}", *e.problems[1:]], e.source) from None
    return _service_settings(service, doc, Problems(str(path)), path=path,
                             files=(config_dir.resolve(), path.resolve()), state_dir=state_dir, run_dir=run_dir)


def load_super_service_settings(service: str, config: Path | None, state_dir: Path,
                                run_dir: Path) -> ServiceSettings:
    """``edgeward serve <service>`` on the super config (-c) or the embedded defaults: the super config is checked
    and split as ``config apply`` does, and the service reads its own document of the split, exactly as it would
    read its file under ``--config-dir``. So ``serve keys`` parses no certs, identity or runtime settings and loads
    none of their code; their problems are reported by the processes that serve them (and by ``edgeward check``)."""
    from .config.super_config import split_super_config  # noqa: PLC0415

    doc = read_config(config) if config is not None else EMBEDDED_DEFAULTS
    problems = Problems(str(config) if config else "embedded defaults")
    files = (config.resolve(),) if config is not None else ()
    split = split_super_config(doc, problems, config_files=files)
    own = split.files().get(SERVICE_FILES[service])
    return _service_settings(service, own or {}, problems, path=config, files=files, state_dir=state_dir,
                             run_dir=run_dir)


def _service_settings(service: str, doc: Mapping[str, Any], problems: Problems, *, path: Path | None,
                      files: tuple[Path, ...], state_dir: Path, run_dir: Path) -> ServiceSettings:
    """One service's settings from its own document (see :meth:`ServiceConfigs.files`); ``files``: the config
    files no module may bind, beyond what the splitter put in ``[edgeward.peers]``."""
    peer = {"endpoints": doc["endpoints"]} if "endpoints" in doc else {}  # the services this one calls

    def own(name: str) -> Mapping[str, Any]:
        return doc if service == name else peer

    def needs(name: str) -> bool:
        return service == name or name in _CALLS[service]

    keys = parse_keys_settings(own("keys"), state_dir, run_dir, problems)
    certs = identity = runtime = tpm = None
    if needs("certs"):
        from .certs.settings import parse_certs_settings  # noqa: PLC0415

        certs = parse_certs_settings(own("certs"), state_dir, run_dir, problems)
    if needs("identity"):
        from .identity.settings import parse_identity_settings  # noqa: PLC0415

        identity = parse_identity_settings(own("identity"), state_dir, run_dir, problems)
    if service in ("tpm", "edged"):
        from .tpm.settings import parse_tpmd_settings  # noqa: PLC0415
    if service == "tpm":
        table = doc.get("tpm")
        if not isinstance(table, dict):
            problems.add("tpm", table if table is not None else "<missing>",
                         "a [tpm] table naming the TPM (in the super config: [tpm], or DPS provisioning with TPM "
                         "attestation)")
        tpm = parse_tpmd_settings(table if isinstance(table, dict) else {}, run_dir, problems, prefix="tpm")
    elif service == "edged":
        from .runtime.settings import parse_runtime_settings  # noqa: PLC0415

        runtime = parse_runtime_settings(doc, state_dir, run_dir, problems)
        ours = doc.get("edgeward")
        if not (isinstance(ours, dict) and isinstance(ours.get(PEERS), dict)):
            problems.add(f"edgeward.{PEERS}", "<missing>", "the table `edgeward config apply` writes: what the "
                         "module runtime knows of the other services (provisioning, TPM, paths no module may bind)")
        if runtime.tpm_service:  # its socket, from [endpoints]
            tpm = parse_tpmd_settings(peer, run_dir, problems)
        runtime = replace(runtime, protected_paths=tuple(dict.fromkeys((*files, *runtime.protected_paths))))
    keylime = _keylime_settings(doc, state_dir, problems) if service == "edged" else None
    problems.raise_if_any()
    name = {"keys": "keyd", "certs": "certd", "identity": "identityd"}.get(service)
    limits = doc.get("aziot_max_requests", {})
    max_requests = {name: limits[name]} if name is not None and isinstance(limits, dict) and name in limits else {}
    return ServiceSettings(state_dir, run_dir, keys, certs, identity, runtime, tpm,
                           tuple(dict.fromkeys(problems.warnings)), path, max_requests, keylime)


if TYPE_CHECKING:
    from .attest.audit_counter import AuditCounter
    from .certs.api import CertsApi
    from .certs.client import CertsClient
    from .certs.renewal import RenewalEngine
    from .identity.service import IdentityService
    from .keylime.revoked import RevocationGate
    from .keylime.service import KeylimeAgent
    from .keys.api import KeysApi
    from .keys.client import KeysClient
    from .keys.service import KeyService
    from .runtime.compose import RuntimeParts
    from .tpm.service import TpmService


def _tpm_service(settings: TpmdSettings) -> TpmService:
    # Imported here: tpm2-pytss is only needed on devices with a TPM.
    from .tpm.service import TpmService  # noqa: PLC0415

    return TpmService(settings)


def _audit_counter(settings: ServiceSettings, tpm_service: TpmService | None) -> AuditCounter | None:
    """The TPM counter the audit log is anchored to: the TPM service in this process, or over its socket."""
    from .attest.audit_counter import InProcessCounter, SocketCounter  # noqa: PLC0415

    if tpm_service is not None:
        return InProcessCounter(tpm_service)
    return SocketCounter(settings.tpm.socket_path) if settings.tpm is not None else None


async def _start_keylime(settings: ServiceSettings, tpm_service: TpmService | None,
                         runtime: RuntimeParts | None, gate: RevocationGate | None) -> KeylimeAgent:
    """The Keylime agent, on this process's TPM service and module runtime; a problem that makes its reports
    untrue (PCR 10 is the kernel's, the list does not replay, the TPM's AK changed) stops the start."""
    from .keylime.kernel_ima import KernelOwnsPcr10  # noqa: PLC0415
    from .keylime.mlist import MeasurementListBroken  # noqa: PLC0415
    from .keylime.service import AgentIdentityChanged, KeylimeAgent  # noqa: PLC0415
    from .keylime.tpm_ops import AkMismatch  # noqa: PLC0415
    from .keylime.verifier_ca import VerifierCaRefused  # noqa: PLC0415

    assert settings.keylime is not None
    if tpm_service is None or runtime is None:
        raise ConfigError(["[edgeward.keylime] needs [tpm] and the module runtime in the same process: run "
                           "`edgeward run`, or `edgeward serve keylime-agent` (the TPM service, the module runtime "
                           "and the agent)"], "edgeward.keylime")
    parts = runtime

    async def stop_modules() -> None:
        await parts.runtime.stop_all_modules("the Keylime verifier revoked the device")

    agent = KeylimeAgent(settings.keylime, tpm_service, runtime.audit, on_revoked=stop_modules, gate=gate)
    try:
        await agent.start()
    except (KernelOwnsPcr10, MeasurementListBroken, AgentIdentityChanged, AkMismatch, VerifierCaRefused) as e:
        await agent.stop()
        raise ConfigError([str(e)], "edgeward.keylime") from None
    except (OSError, ValueError) as e:  # the listen address, the verifier's CA file, a revocation cert
        await agent.stop()
        raise ConfigError([f"the Keylime agent cannot start: {e}"], "edgeward.keylime") from None
    return agent


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _StopSignals:
    """SIGTERM, SIGINT and SIGHUP (the terminal of a foreground `edgeward run` closed) stop the daemon cleanly at
    any point, start-up included.

    Installed before anything is started: a signal that arrived while the services were still starting used to
    kill the process on the spot (the default action), leaving the host-process modules the runtime had just
    started running without a supervisor. Now a signal during start-up cancels the start, and the same clean-up
    as after a normal run follows; after start-up it ends the wait.
    """

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self._starting: asyncio.Task[object] | None = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received.is_set():
            return
        log.info("%s received: stopping", sig.name)
        self.received.set()
        if self._starting is not None:
            self._starting.cancel()

    def started(self) -> None:
        self._starting = None

    def cancelled_start(self) -> bool:
        """After a CancelledError during start-up: True if it was ours (then it is taken back), so the daemon
        stops as after a normal run; False if someone else cancelled."""
        task = asyncio.current_task()
        if not self.received.is_set() or task is None:
            return False
        task.uncancel()
        return True

    async def wait(self) -> None:
        await self.received.wait()

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


ALL_SERVICES = ("keys", "certs", "identity", "tpm", "edged")
# `serve keylime-agent`: the agent quotes under the TPM service's lock and turns the runtime's audit records into its
# measurement list, so it runs in the process that runs both; keys, certs and identity are reached over their sockets.
KEYLIME_SERVICES = ("tpm", "edged", "keylime-agent")


class _Modules:
    """Which module (if any) a pid belongs to, once the runtime in this process exists: a host-process module runs
    in the host's namespaces, so only the runtime can tell the host services that it is no host caller."""

    runtime: RuntimeParts | None = None

    async def module_of(self, pid: int) -> str | None:
        parts = self.runtime
        if parts is None:
            return None
        from .runtime.engine import EngineError  # noqa: PLC0415

        try:
            engine_id = await parts.engine.engine_id_of_pid(pid)
        except EngineError as e:  # cannot tell: never promote the caller to a host caller
            return f"a process the module engine cannot place ({e.message})"
        if engine_id is None:
            return None
        reg = parts.registry.by_engine_id(engine_id)
        return reg.name if reg is not None else f"unregistered {parts.engine.kind} object {engine_id[:12]}"


async def serve(settings: ServiceSettings, services: tuple[str, ...] = ALL_SERVICES,
                ready: asyncio.Event | None = None) -> None:
    """Start the named services, serve until SIGTERM/SIGINT, then stop cleanly.

    Services in this process talk to each other in-process; a service whose dependency runs elsewhere reaches it
    over that service's socket.
    """
    runners: list[web.AppRunner] = []
    key_service: KeyService | None = None
    keys_client: KeysClient | None = None
    renewal: RenewalEngine | None = None
    certs_client: CertsClient | None = None
    identity: IdentityService | None = None
    tpm_service: TpmService | None = None
    runtime: RuntimeParts | None = None
    keylime: KeylimeAgent | None = None
    revocation_gate: RevocationGate | None = None
    modules = _Modules()
    limit_provoked_logs()
    signals = _StopSignals()
    try:
        if "keylime-agent" in services and settings.keylime is None:
            raise ConfigError(["no [edgeward.keylime] table is configured"], "keylime agent")
        # Each branch imports its own service: a process serving keys loads no TPM, certificate, identity or
        # module-runtime code (start-up time and memory on small devices).
        if "tpm" in services and settings.tpm is not None:
            from .tpm.counter_routes import install_counter_routes  # noqa: PLC0415
            from .tpm.routes import build_tpm_app  # noqa: PLC0415

            # Imported here: tpm2-pytss is only needed on devices with a TPM.
            tpm_service = _tpm_service(settings.tpm)
            app = build_tpm_app(tpm_service, max_requests=settings.tpm.max_requests)
            install_counter_routes(app)
            app = guard_host_service(app, "tpmd", module_of=modules.module_of)
            runners.append(await start_server(app, [Listener(settings.tpm.socket_path, mode=socket_mode("tpmd", ()),
                                                             activation_name="tpmd")]))
        elif services == ("tpm",):
            raise ConfigError(["no [tpm] table is configured"], "tpm service")
        keys_api: KeysApi
        if "keys" in services:
            from .keys.compose import build_key_service  # noqa: PLC0415
            from .keys.routes import build_keys_app  # noqa: PLC0415

            key_service = build_key_service(settings.keys)
            # identity principals too: identityd hands them key handles to sign with (create/load still need globs);
            # keyd.toml names them itself (config/super_config.py), for `serve keys --config-dir`
            identity_principals = settings.identity.principals if settings.identity is not None else ()
            uids = list(dict.fromkeys([p.uid for p in settings.keys.principals]
                                      + [p.uid for p in identity_principals]))
            app = guard_host_service(build_keys_app(key_service, limiter=max_requests_limiter(
                settings.max_requests.get("keyd"))), "keyd", uids,
                                     modules.module_of)
            runners.append(await start_server(app, [Listener(settings.keys.socket_path, mode=socket_mode("keyd", uids),
                                                             activation_name="keyd")]))
            keys_api = key_service.for_caller(Caller.this_process())
        else:
            from .keys.client import KeysClient  # noqa: PLC0415

            keys_client = KeysClient(settings.keys.socket_path)
            keys_api = keys_client
        if "certs" in services:
            from .certs.compose import build_cert_service  # noqa: PLC0415
            from .certs.routes import build_certs_app  # noqa: PLC0415

            assert settings.certs is not None  # loaded for every process that runs or calls certd
            cert_service, renewal = build_cert_service(settings.certs, keys_api)
            uids = [p.uid for p in settings.certs.principals]
            app = guard_host_service(build_certs_app(cert_service, limiter=max_requests_limiter(
                settings.max_requests.get("certd"))), "certd", uids,
                                     modules.module_of)
            runners.append(await start_server(app, [Listener(settings.certs.socket_path,
                                                             mode=socket_mode("certd", uids),
                                                             activation_name="certd")]))
            await renewal.start()
            certs_api: CertsApi = cert_service.for_caller(Caller.this_process())
        elif services not in (("keys",), ("tpm",)):
            from .certs.client import CertsClient  # noqa: PLC0415

            assert settings.certs is not None
            certs_client = CertsClient(settings.certs.socket_path)
            certs_api = certs_client
        if "identity" in services:
            from .identity.compose import build_identity_service  # noqa: PLC0415
            from .identity.routes import build_identity_app  # noqa: PLC0415

            assert settings.identity is not None
            identity = build_identity_service(settings.identity, keys_api, certs_api, tpm=tpm_service)
            await identity.start()
            if renewal is not None:  # a renewed device identity cert is provisioned again, as aziot does
                identity.follow_renewals(renewal.subscribe())
            uids = [p.uid for p in settings.identity.principals]
            app = guard_host_service(build_identity_app(identity, limiter=max_requests_limiter(
                settings.max_requests.get("identityd"))), "identityd", uids,
                                     modules.module_of)
            runners.append(await start_server(app, [Listener(settings.identity.socket_path,
                                                             mode=socket_mode("identityd", uids),
                                                             activation_name="identityd")]))
        if "edged" in services:
            from .attest.selfmeasure import measure_self  # noqa: PLC0415
            from .runtime.compose import identities_for, start_runtime  # noqa: PLC0415

            assert settings.runtime is not None and settings.identity is not None
            provisioning = settings.runtime.cloud_provisioning  # [edgeward.peers], in edged.toml too
            identities = identities_for(settings.runtime, provisioning, identity, settings.identity.socket_path)
            reprovision = identity.reprovision if identity is not None and provisioning is not None else None
            if settings.keylime is not None:  # a revocation that stands keeps every module from starting, from now
                from .keylime.revoked import RevocationGate  # noqa: PLC0415

                revocation_gate = RevocationGate(settings.keylime.state_dir)
                revocation_gate.prepare()
            runtime = await start_runtime(
                settings.runtime, keys_api, certs_api, identities, reprovision=reprovision,
                provisioning=provisioning or "manual",
                audit_counter=_audit_counter(settings, tpm_service), start_gate=revocation_gate)
            me = measure_self(settings.config_path)
            detail: dict[str, Any] = {"code": me.code, "config": me.config, "files": me.files,
                                      "services": list(services)}
            if tpm_service is not None:  # anchor the measurement in the TPM: PCR 23, quotable by verifiers
                from .attest.tpm_quote import DEFAULT_PCR  # noqa: PLC0415 -- loaded with the TPM service

                detail["pcr"], detail["pcr_value"] = DEFAULT_PCR, await tpm_service.extend_pcr(me.combined)
            runtime.audit.append("edgeward.started", None, detail)
            modules.runtime = runtime
        if settings.keylime is not None and ("keylime-agent" in services or services == ALL_SERVICES):
            keylime = await _start_keylime(settings, tpm_service, runtime, revocation_gate)
        signals.started()
        log.info("edgeward ready: %s", ", ".join(services))
        notify(f"READY=1\nMAINPID={os.getpid()}")
        if ready is not None:
            ready.set()
        await signals.wait()
    except asyncio.CancelledError:
        if not signals.cancelled_start():
            raise
        log.info("stopped while starting")
    finally:
        modules.runtime = None
        if keylime is not None:
            await keylime.stop()
        if revocation_gate is not None:  # a revocation the full disk kept in memory: a restart must find it
            revocation_gate.write_down(runtime.audit if runtime is not None else None)
        if runtime is not None:
            await runtime.close()
        if renewal is not None:
            await renewal.stop()
        if keys_client is not None:
            await keys_client.close()
        if certs_client is not None:
            await certs_client.close()
        if identity is not None:
            identity.close()
        if tpm_service is not None:
            tpm_service.close()
        for runner in runners:
            await runner.cleanup()
        if key_service is not None:
            key_service.close()
            key_service.executor.shutdown()
        signals.remove()
        log.info("edgeward stopped")
