"""The runtime's settings: IoT Edge's `[agent]`, `[moby_runtime]`, `[connect]`, `[listen]`, `[watchdog]`,
`[image_garbage_collection]`, `hostname`, `local_gateway_hostname`, `allow_elevated_docker_permissions`, plus
Edgeward's `[edgeward.runtime]` (engine choice, watchdog period).

`[listen]` says where the management socket and IoT Edge's shared workload socket are on the host (`unix://` paths,
or `fd://` names of sockets systemd passed); each module's own workload socket stays in a directory of its own under
the run directory (aziot-edged keeps them under its homedir's `mnt`). `[connect]` says where containers find them:
each module's directory is mounted on `connect.workload_uri`'s directory, and the agent's management socket on
`connect.management_uri`'s (inside the agent's own workload directory when both share one, as in IoT Edge's layout).

`[edgeward.peers]` is what the runtime knows of the other services, written by `edgeward config apply` (the
runtime cannot read their files in the packaged deployment): the provisioning source, whether a TPM service runs,
and the paths no module may bind (see config/super_config.py).

`allow_elevated_docker_permissions` defaults to false, where IoT Edge 1.5 defaults to true ("this will change in a
future version", its source says): privileged modules are an operator's decision, not a deployment's. With false,
runtime/privileges.py strips what IoT Edge strips and refuses host control surfaces; `edgeward check` reports the
setting either way, and every refusal says how to turn it on."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ..config.problems import Problems
from .engine import CONTAINER_WORKLOAD_DIR, WORKLOAD_SOCKET_NAME
from .image_gc import ImageGcSettings, parse_image_gc
from .model import ModuleConfig, parse_module_config
from .upstream import UPSTREAM, resolve_upstream

__all__ = ["RuntimeSettings", "parse_runtime_settings"]

EngineKind = Literal["docker", "process"]


@dataclass(frozen=True)
class RuntimeSettings:
    engine: EngineKind
    home: Path  # registrations and process-engine state
    run_dir: Path  # mgmt.sock and one workload socket directory per module
    hostname: str
    gateway_hostname: str  # what modules use as their gateway: this device (its edgeHub)
    docker_uri: str = "unix:///var/run/docker.sock"
    network: str | None = None
    # How the network is created when missing ([moby_runtime.network] ipv6, ipam): Docker's network create body.
    network_options: Mapping[str, Any] = field(default_factory=dict)
    agent: ModuleConfig | None = None
    watchdog_period: float = 5.0
    watchdog_max_retries: int | None = None  # None: retry forever (IoT Edge's "infinite")
    extra_env: Mapping[str, str] = field(default_factory=dict)
    integrity_policy: Literal["log", "stop", "refuse"] = "refuse"
    integrity_period: float = 30.0
    audit_home: Path | None = None  # default: <state>/audit
    # Workload server certificates for wildcard names / IP addresses: off unless the operator turns them on.
    server_cert_allow_wildcards: bool = False
    server_cert_allow_ip_addresses: bool = False
    # Which modules may hold the device's host names in a server certificate (downstream devices dial the hub by
    # them), and further names each module may hold; a module always holds its own name.
    server_cert_hostname_modules: tuple[str, ...] = ("edgeHub", "$edgeHub")
    server_cert_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allow_elevated_docker_permissions: bool = False
    state_dir: Path | None = None  # default: home's parent
    sandbox_uid_base: int | None = None  # first uid for sandboxed host modules without User; None: the engine's
    # Files and directories of the other services (config files, key/cert files, their homedirs) that no module may
    # bind: [edgeward.peers] protected_paths, and what daemon.load_settings sees in every service's settings.
    protected_paths: tuple[Path, ...] = ()
    # The uids of the keys, certificates and identity services' [[principal]] entries ([edgeward.peers]
    # principal_uids): no host-process module may run as one (runtime/engines/proclaunch.py).
    principal_uids: tuple[int, ...] = ()
    # [edgeward.peers]: how the identity service provisions the device (None: it does not; module identities are
    # then minted locally) and whether a TPM service runs (the audit log's counter, over its socket).
    cloud_provisioning: Literal["dps", "manual"] | None = None
    tpm_service: bool = False
    # Nested edge: the parent device (IoT Edge's parent_hostname), the agent's and edgeHub's upstream (upstream.py).
    parent_hostname: str | None = None
    # [iotedge_max_requests] management / workload as configured (simultaneous requests per caller); absent: defaults
    max_requests: Mapping[str, int] = field(default_factory=dict)
    # IoT Edge's [connect] (what modules are told: paths inside their containers) and [listen] (where the sockets
    # are on the host: unix:// paths or systemd's fd:// names); None: Edgeward's defaults (see the properties).
    connect_workload_uri: str | None = None
    connect_management_uri: str | None = None
    listen_workload_uri: str | None = None
    listen_management_uri: str | None = None
    image_gc: ImageGcSettings = field(default_factory=ImageGcSettings)

    @property
    def mgmt_dir(self) -> Path:
        """The host directory mounted into a container agent for its management socket (when that socket is not
        in the agent's own workload directory, see :attr:`agent_mgmt_in_workload_dir`)."""
        return self.run_dir / "mgmt"

    @property
    def mgmt_socket(self) -> Path:
        """The management socket host callers use: ``listen.management_uri``'s path, else under the run dir (also
        when systemd passes the socket: the unit's ListenStream is then the path)."""
        listen = self.listen_management_uri
        if listen is not None and listen.startswith("unix://"):
            return Path(listen.removeprefix("unix://"))
        return self.mgmt_dir / "mgmt.sock"

    @property
    def container_workload_socket(self) -> PurePosixPath:
        """Where a container module's workload socket is inside it (``connect.workload_uri``): its own workload
        directory is mounted on this path's directory."""
        uri = self.connect_workload_uri or f"unix://{CONTAINER_WORKLOAD_DIR}/{WORKLOAD_SOCKET_NAME}"
        return PurePosixPath(uri.removeprefix("unix://"))

    @property
    def container_mgmt_socket(self) -> PurePosixPath:
        """Where a container agent's management socket is inside it (``connect.management_uri``)."""
        uri = self.connect_management_uri or "unix:///var/run/iotedge-mgmt/mgmt.sock"
        return PurePosixPath(uri.removeprefix("unix://"))

    @property
    def agent_mgmt_in_workload_dir(self) -> bool:
        """IoT Edge's default layout puts both sockets in one directory (/var/run/iotedge): a container agent then
        gets its management socket inside its own workload directory, so one directory mount carries both."""
        return self.container_mgmt_socket.parent == self.container_workload_socket.parent

    @property
    def workload_socket_name(self) -> str:
        """The file name of each module's workload socket on the host: the container path's, so the directory can
        be mounted as it is; host processes are told the host path, so theirs keeps Edgeward's name."""
        return self.container_workload_socket.name if self.engine == "docker" else WORKLOAD_SOCKET_NAME

    @property
    def workload_root(self) -> Path:
        return self.run_dir / "workload"


def _agent(doc: Mapping[str, Any], p: Problems) -> ModuleConfig | None:
    raw = p.get(doc, "agent", "", dict, {})
    if not raw:
        return None
    p.warn_unknown(raw, {"name", "type", "imagePullPolicy", "config", "env"}, "agent")
    return parse_module_config({
        "name": raw.get("name", "edgeAgent"), "type": raw.get("type", "docker"),
        "imagePullPolicy": raw.get("imagePullPolicy", "on-create"), "config": raw.get("config", {}),
        "env": raw.get("env", {}),
    }, p, "agent")


_IPAM_KEYS = {"gateway": "Gateway", "subnet": "Subnet", "ip_range": "IPRange"}


def _network(moby: Mapping[str, Any], p: Problems) -> tuple[str | None, dict[str, Any]]:
    """``[moby_runtime] network``: a name, or IoT Edge's table {name, ipv6, ipam = {config = [{gateway, subnet,
    ip_range}]}}, which aziot-edged turns into Docker's EnableIPv6 and IPAM.Config when it creates the network."""
    raw = moby.get("network")
    where = "moby_runtime.network"
    if raw is None or raw == "":
        return None, {}  # aziot-edged's default is "azure-iot-edge"; Edgeward leaves modules' networks alone
    if isinstance(raw, str):
        return raw, {}
    if not isinstance(raw, dict):
        p.add(where, raw, "a network name or a table with name, ipv6 and ipam")
        return None, {}
    p.warn_unknown(raw, {"name", "ipv6", "ipam"}, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        p.add(f"{where}.name", name if name is not None else "<missing>", "a network name")
        name = None
    options: dict[str, Any] = {}
    if "ipv6" in raw:
        options["EnableIPv6"] = p.get(raw, "ipv6", where, bool, False)
    ipam = p.get(raw, "ipam", where, dict, {})
    p.warn_unknown(ipam, {"config"}, f"{where}.ipam")
    configs: list[dict[str, str]] = []
    for i, entry in enumerate(p.get(ipam, "config", f"{where}.ipam", list, [])):
        at = f"{where}.ipam.config[{i}]"
        if not isinstance(entry, dict):
            p.add(at, entry, "a table with gateway, subnet and ip_range")
            continue
        p.warn_unknown(entry, set(_IPAM_KEYS), at)
        out: dict[str, str] = {}
        for key, docker_key in _IPAM_KEYS.items():
            value = entry.get(key)
            if value is None:
                continue
            try:
                ok = isinstance(value, str) and bool(
                    ipaddress.ip_address(value) if key == "gateway" else ipaddress.ip_network(value, strict=False))
            except ValueError:
                ok = False
            if ok:
                out[docker_key] = value
            else:
                p.add(f"{at}.{key}", value, "an IP address" if key == "gateway" else "an IP network (a.b.c.d/n)")
        configs.append(out)
    if configs:
        options["IPAM"] = {"Config": configs}
    return name, options


def _socket_uri(table: Mapping[str, Any], key: str, where: str, p: Problems, *, fd: bool) -> str | None:
    """A ``unix:///absolute/path`` URI (or, where systemd may pass the socket, ``fd://<name or number>``)."""
    uri = table.get(key)
    if uri is None:
        return None
    if isinstance(uri, str) and uri.startswith("unix://"):
        path = PurePosixPath(uri.removeprefix("unix://"))
        # A [connect] path's directory is mounted in containers: never the root of their filesystem.
        if path.is_absolute() and path.name and ".." not in path.parts and "\0" not in uri \
                and (fd or len(path.parts) > 2):
            return uri
    elif fd and isinstance(uri, str) and uri.startswith("fd://"):
        name = uri.removeprefix("fd://").rstrip("/")
        if name and ":" not in name and "/" not in name and not name.isspace():
            return uri
    expected = ("a unix:///absolute/path URI" + (" or fd://<systemd socket name or fd number>" if fd else
                                                  " in a directory other than / (it is mounted in containers)"))
    p.add(f"{where}.{key}", uri, expected)
    return None


def _connect_listen(doc: Mapping[str, Any], p: Problems) -> tuple[str | None, str | None, str | None, str | None]:
    """(connect workload, connect management, listen workload, listen management) URIs, each checked."""
    connect = p.get(doc, "connect", "", dict, {})
    listen = p.get(doc, "listen", "", dict, {})
    p.warn_unknown(connect, {"workload_uri", "management_uri"}, "connect")
    p.warn_unknown(listen, {"workload_uri", "management_uri"}, "listen")  # 1.5 has no min_tls_version
    c_work = _socket_uri(connect, "workload_uri", "connect", p, fd=False)
    c_mgmt = _socket_uri(connect, "management_uri", "connect", p, fd=False)
    l_work = _socket_uri(listen, "workload_uri", "listen", p, fd=True)
    l_mgmt = _socket_uri(listen, "management_uri", "listen", p, fd=True)
    if c_work is not None and c_work == c_mgmt:
        p.add("connect.management_uri", c_mgmt, "another path than connect.workload_uri")
    if l_work is not None and l_work == l_mgmt:
        p.add("listen.management_uri", l_mgmt, "another socket than listen.workload_uri")
    return c_work, c_mgmt, l_work, l_mgmt


_PROVISIONING_SOURCES = ("dps", "manual", "none")


def _principal_uids(peers: Mapping[str, Any], where: str, p: Problems) -> tuple[int, ...]:
    raw = p.get(peers, "principal_uids", where, list, [])
    uids = [v for v in raw if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32]
    if len(uids) != len(raw):
        p.add(f"{where}.principal_uids", raw, "a list of uids")
    return tuple(dict.fromkeys(uids))


def _peers(doc: Mapping[str, Any], p: Problems) -> tuple[Literal["dps", "manual"] | None, bool, tuple[Path, ...],
                                                         tuple[int, ...]]:
    """``[edgeward.peers]``: (provisioning source, a TPM service runs, protected paths, principals' uids)."""
    peers = p.get(p.get(doc, "edgeward", "", dict, {}), "peers", "edgeward", dict, {})
    where = "edgeward.peers"
    p.warn_unknown(peers, {"provisioning", "tpm", "protected_paths", "principal_uids"}, where)
    source = p.get(peers, "provisioning", where, str, "none")
    if source not in _PROVISIONING_SOURCES:
        p.add(f"{where}.provisioning", source, '"dps", "manual" or "none"')
    tpm = p.get(peers, "tpm", where, bool, False)
    raw = p.get(peers, "protected_paths", where, list, [])
    bad = [v for v in raw if not (isinstance(v, str) and v.startswith("/"))]
    if bad:
        p.add(f"{where}.protected_paths", bad, "a list of absolute paths")
    paths = tuple(Path(v) for v in raw if isinstance(v, str) and v.startswith("/"))
    return ("dps" if source == "dps" else "manual" if source == "manual" else None), tpm, paths, \
        _principal_uids(peers, where, p)


def parse_runtime_settings(doc: Mapping[str, Any], state_dir: Path, run_dir: Path, p: Problems) -> RuntimeSettings:
    ours = p.get(p.get(doc, "edgeward", "", dict, {}), "runtime", "edgeward", dict, {})
    p.warn_unknown(ours, {"engine", "watchdog_seconds", "server_cert_allow_wildcards",
                          "server_cert_allow_ip_addresses", "server_cert_hostname_modules", "server_cert_names",
                          "sandbox_uid_base"},
                   "edgeward.runtime")
    hostname_modules = p.get(ours, "server_cert_hostname_modules", "edgeward.runtime", list,
                             ["edgeHub", "$edgeHub"])
    if not all(isinstance(m, str) for m in hostname_modules):
        p.add("edgeward.runtime.server_cert_hostname_modules", hostname_modules, "a list of module names")
        hostname_modules = []
    cert_names: dict[str, tuple[str, ...]] = {}
    for module, names in p.get(ours, "server_cert_names", "edgeward.runtime", dict, {}).items():
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            cert_names[str(module)] = tuple(names)
        else:
            p.add(f"edgeward.runtime.server_cert_names.{module}", names, "a list of DNS names")
    engine = p.get(ours, "engine", "edgeward.runtime", str, "docker" if "moby_runtime" in doc else "process")
    if engine not in ("docker", "process"):
        p.add("edgeward.runtime.engine", engine, '"docker" or "process"')
        engine = "process"
    moby = p.get(doc, "moby_runtime", "", dict, {})
    p.warn_unknown(moby, {"uri", "network", "content_trust"}, "moby_runtime")
    uri = p.get(moby, "uri", "moby_runtime", str, "unix:///var/run/docker.sock")
    if not uri.startswith("unix://"):
        p.add("moby_runtime.uri", uri, "a unix:// URI (Edgeward talks to the engine over its local socket)")
    network, network_options = _network(moby, p)
    watchdog = p.get(doc, "watchdog", "", dict, {})
    retries_raw = watchdog.get("max_retries", "infinite")
    retries: int | None = None
    if isinstance(retries_raw, int) and not isinstance(retries_raw, bool) and retries_raw >= 0:
        retries = retries_raw
    elif not (isinstance(retries_raw, str) and retries_raw.lower() == "infinite"):  # aziot-edged ignores its case
        p.add("watchdog.max_retries", retries_raw, 'a non-negative integer or "infinite"')
    period = p.get(ours, "watchdog_seconds", "edgeward.runtime", int, 5)
    if period <= 0:
        p.add("edgeward.runtime.watchdog_seconds", period, "a positive number of seconds")
        period = 5
    integrity = p.get(p.get(doc, "edgeward", "", dict, {}), "integrity", "edgeward", dict, {})
    p.warn_unknown(integrity, {"policy", "period_seconds"}, "edgeward.integrity")
    policy = p.get(integrity, "policy", "edgeward.integrity", str, "refuse")
    if policy not in ("log", "stop", "refuse"):
        p.add("edgeward.integrity.policy", policy, '"log", "stop" or "refuse"')
        policy = "refuse"
    integrity_period = p.get(integrity, "period_seconds", "edgeward.integrity", int, 30)
    if integrity_period <= 0:
        p.add("edgeward.integrity.period_seconds", integrity_period, "a positive number of seconds")
        integrity_period = 30
    uid_base: int | None = p.get(ours, "sandbox_uid_base", "edgeward.runtime", int, -1)
    if uid_base == -1:
        uid_base = None
    elif uid_base is not None and not 1000 <= uid_base <= 0xFFFF_FFFF - 65536:
        p.add("edgeward.runtime.sandbox_uid_base", uid_base, "a uid from 1000 leaving room for 65536 uids above it")
        uid_base = None
    hostname = p.get(doc, "hostname", "", str, "edgeward-device")
    c_work, c_mgmt, l_work, l_mgmt = _connect_listen(doc, p)
    if engine != "docker":  # set, but nothing it could act on: said, never silently ignored
        for key, present in (("connect.workload_uri", c_work is not None), ("moby_runtime.network", bool(network)),
                             ("image_garbage_collection", "image_garbage_collection" in doc)):
            if present:
                p.warnings.append(f"{key}: no effect: modules run as host processes on this device (no "
                                  '[moby_runtime], or [edgeward.runtime] engine = "process")')
    elevated = p.get(doc, "allow_elevated_docker_permissions", "", bool, False)
    parent = p.get(doc, "local_gateway_hostname", "", str, "") or None
    agent = _agent(doc, p)
    if agent is not None and parent is not None:
        agent = resolve_upstream(agent, parent)
    elif agent is not None and agent.image.startswith(UPSTREAM):
        p.add("agent.config.image", agent.image, f"parent_hostname set ({UPSTREAM} stands for the parent device a "
              "child pulls the agent's image from)")
    if agent is not None and parent is None:  # aziot-edged resolves the keyword in the registry address as well
        for key, value in (agent.auth or {}).items():
            if key.lower() == "serveraddress" and isinstance(value, str) and value.startswith(UPSTREAM):
                p.add(f"agent.config.auth.{key}", value, f"parent_hostname set ({UPSTREAM} stands for the parent "
                      "device whose registry a child logs in to)")
    cloud, tpm_service, protected, principal_uids = _peers(doc, p)
    limits = {name: value for name, value in p.get(doc, "iotedge_max_requests", "", dict, {}).items()
              if name in ("management", "workload") and isinstance(value, int) and not isinstance(value, bool)
              and value > 0}
    return RuntimeSettings(
        engine="docker" if engine == "docker" else "process",
        home=state_dir / "runtime", run_dir=run_dir, hostname=hostname,
        gateway_hostname=hostname, parent_hostname=parent, max_requests=limits,
        docker_uri=uri, network=network, network_options=network_options, agent=agent,
        watchdog_period=float(period),
        watchdog_max_retries=retries, integrity_policy=policy,  # type: ignore[arg-type]
        integrity_period=float(integrity_period), audit_home=state_dir / "audit",
        server_cert_allow_wildcards=p.get(ours, "server_cert_allow_wildcards", "edgeward.runtime", bool, False),
        server_cert_allow_ip_addresses=p.get(ours, "server_cert_allow_ip_addresses", "edgeward.runtime", bool, False),
        server_cert_hostname_modules=tuple(hostname_modules), server_cert_names=cert_names,
        allow_elevated_docker_permissions=elevated, state_dir=state_dir, sandbox_uid_base=uid_base,
        image_gc=parse_image_gc(doc, p), connect_workload_uri=c_work, connect_management_uri=c_mgmt,
        listen_workload_uri=l_work, listen_management_uri=l_mgmt, protected_paths=protected,
        cloud_provisioning=cloud, tpm_service=tpm_service, principal_uids=principal_uids)
