"""What a deployment may ask of the container engine when `allow_elevated_docker_permissions` is false.

IoT Edge 1.5 (edgelet-docker's runtime) strips `Privileged` and `CapAdd` from a module's createOptions, with a
warning, and drops CHOWN and SETUID from the default capability set. Edgeward does the same, and also refuses what
IoT Edge lets through although it hands a module the host just as surely: the host's pid, ipc and user namespaces
(or another module's), unconfined AppArmor/seccomp/SELinux, unmasked /proc paths, devices beyond a list of common
IoT peripherals, a chosen cgroup (which would let a module pass for another in attestation), another container's
volumes, volumes that bind host paths, log drivers aimed at host sockets, and binds of host control surfaces:
/proc, /sys, the host's terminals and shared memory, the container engine's socket and state, the host's secrets,
writable system directories, and Edgeward's own state, configuration and run directories (where every module's
workload socket lives). A refusal names the option and how to allow it; nothing is half-applied.

Host networking stays allowed: many IoT Edge modules need it, and it gives no file, process or device access.

Docker reads JSON keys without regard to case (Go's folding, in which U+017F matches "s" and U+212A "k"), so
every key is compared folded, and two spellings of one key are refused rather than guessed at. Bind sources are
resolved twice: Docker's reading (lexically cleaned, then symlinks) and the kernel's (symlinks before ".."), each in
this process's view and in the engine's and the host init's (/proc/<pid>/root): a private /tmp or a hidden /home
must not hide a symlink the engine will follow.

What a symlink points to when the container later starts is the engine's to resolve, so a path a module can rewrite
between create and start must not be a bind source: a bind source inside another bind source that a module (this
one or another registered one) has writable is refused, as is a writable bind source that contains another's (the
writer could swap the inner directory for a symlink to the state directory). The runtime also vets a module's
stored options again before each start it initiates (runtime/service.py).

The engine's own paths are read from the engine: its data root (`GET /info`) and the paths on its command line
(`--data-root`, `--exec-root`, `--pidfile`, `--containerd`, `-H unix://`), besides the standard ones.
"""

from __future__ import annotations

import http.client
import json
import posixpath
import re
import socket
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..http.errors import UnprocessableEntity
from .settings import RuntimeSettings

__all__ = ["ALLOW_HINT", "ElevatedOptionRefused", "HostBind", "PrivilegePolicy", "Protected", "Vetted",
           "engine_paths", "engine_paths_from_cmdline", "host_binds", "host_views", "policy_for", "resolve_in",
           "vet_create_options"]

ALLOW_HINT = ("if a module must have them, set allow_elevated_docker_permissions = true in the config and apply it "
              "(every deployment may then have privileged modules)")
# IoT Edge 1.5 drops these default capabilities when elevated permissions are off (they help a root process leave
# its container: https://labs.f-secure.com/blog/helping-root-out-of-the-container/).
DROPPED_CAPS = ("CHOWN", "SETUID")
ENGINE_PATHS = ("/var/run/docker.sock", "/run/docker.sock", "/run/docker", "/var/lib/docker",
                "/run/podman", "/var/lib/containers", "/run/containerd", "/var/lib/containerd", "/run/user",
                "/run/runc", "/run/containers", "/run/libpod", "/etc/docker")
# Sockets of host services that run as root (systemd, D-Bus, udev): a read-only bind still lets a module connect.
HOST_CONTROL = ("/run/systemd", "/run/dbus", "/var/run/dbus", "/run/udev")
# Written by root daemons and read by log tooling: reading is fine, writing forges or fills the host's logs.
LOG_PATHS = ("/var/log",)
# dockerd flags that name a path of the engine (the socket of -H unix://... is taken separately).
_ENGINE_FLAGS = ("--data-root", "-g", "--graph", "--exec-root", "--pidfile", "-p", "--containerd", "--config-file")
PRODUCT_PATHS = ("/etc/edgeward", "/etc/aziot", "/var/lib/aziot", "/run/aziot")
# Reading these is harmless enough (the test image runs the host's python from a read-only /usr), writing any of them
# is root on the next boot, login or cron run.
SYSTEM_PATHS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/var/spool/cron")
# ...except these, whose reading alone gives away the host: password hashes, SSH host keys, root's home.
HOST_SECRETS = ("/etc/shadow", "/etc/gshadow", "/etc/ssh", "/root")
_HOST_NAMES = ("Privileged", "CapAdd", "CapDrop", "PidMode", "IpcMode", "UsernsMode", "Cgroup", "CgroupParent",
               "VolumesFrom", "SecurityOpt", "MaskedPaths", "ReadonlyPaths", "Devices", "DeviceCgroupRules",
               "Binds", "Mounts", "LogConfig", "NetworkMode")
_SECURITY_OPTS = re.compile(r"^(no-new-privileges([=:](true|false))?|apparmor[=:]docker-default|label[=:]level:.*)$")
# Devices a module may be given: serial ports, I2C, SPI, GPIO, cameras, sound, GPUs, input and HID devices. Not
# block devices, /dev/mem and friends, the TPM (Edgeward's root of trust), raw USB or SCSI, KVM, loop or mapper.
_DEVICES = re.compile(r"^/dev/(tty(USB|ACM|AMA|S|THS|mxc|SAC|LP|O)\d+|i2c-\d+|spidev\d+\.\d+|gpiochip\d+|gpiomem|"
                      r"video\d+|media\d+|v4l-subdev\d+|hidraw\d+|vchiq|nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)|"
                      r"(snd|dri|input)(/[^/]+)*)$")
# Character device majors of the same classes (fixed numbers only: dynamic majors may be the TPM's).
_DEVICE_MAJORS = {13, 81, 89, 116, 153, 166, 188, 195, 204, 226}
_RULE = re.compile(r"^c (\d+):(\d+|\*) [rwm]{1,3}$")


class ElevatedOptionRefused(UnprocessableEntity):
    """A createOptions entry this device does not allow; the message names it and says how to allow it."""

    def __init__(self, option: str, why: str) -> None:
        self.option = option
        self.why = why
        super().__init__(f"createOptions {option} is refused: {why}. Elevated Docker permissions are off on this "
                         f"device; {ALLOW_HINT}")


@dataclass(frozen=True)
class Protected:
    path: str  # absolute, as the host sees it
    what: str
    writes_only: bool = False  # a read-only bind of it is allowed


@dataclass(frozen=True)
class HostBind:
    """A host path bound into a registered module: the neighbours a new bind must not nest with."""

    module: str
    source: str
    writable: bool


@dataclass(frozen=True)
class PrivilegePolicy:
    allow_elevated: bool
    protected: tuple[Protected, ...] = ()
    roots: tuple[str, ...] = ("/",)  # the views in which host paths are resolved
    neighbours: tuple[HostBind, ...] = ()  # the host binds of the other registered modules


@dataclass(frozen=True)
class Vetted:
    options: dict[str, Any]
    stripped: tuple[str, ...] = ()  # what was removed, as "HostConfig.Privileged"


def host_views(engine_socket: str | None = None) -> tuple[str, ...]:
    """This process's root, plus the container engine's and the host init's when they are readable and differ:
    systemd's PrivateTmp, ProtectHome or a private /run give this service other directories than the engine that
    will resolve the bind. The engine is found as the process listening on its socket (SO_PEERCRED)."""
    views = ["/"]
    candidates = ["/proc/1/root"]
    pid = _listener_pid(engine_socket) if engine_socket else None
    if pid is not None:
        candidates.insert(0, f"/proc/{pid}/root")
    for view in candidates:
        root = Path(view)
        try:
            root.stat()
        except OSError:
            continue  # not ours to read
        if not all(_same_file(root / d, Path("/") / d) for d in ("", "tmp", "home", "run")) and view not in views:
            views.append(view)
    return tuple(views)


def _listener_pid(path: str) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
            pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return pid if pid > 0 else None


def _same_file(a: Path, b: Path) -> bool:
    def key(p: Path) -> tuple[int, int] | None:
        try:
            st = p.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    return key(a) == key(b)


def engine_paths_from_cmdline(argv: list[str]) -> list[str]:
    """The paths dockerd's command line names: its data and exec roots, pid file, containerd socket, config file
    and unix sockets (`-H unix://...`); both `--flag value` and `--flag=value`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name in _ENGINE_FLAGS and value.startswith("/"):
            out.append(value)
        elif name in ("-H", "--host") and value.startswith("unix://"):
            out.append(value.removeprefix("unix://"))
    return out


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=3)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(3)
        self.sock.connect(self._path)


def _engine_info(engine_socket: str) -> Mapping[str, Any]:
    conn = _UnixHTTP(engine_socket)
    try:
        conn.request("GET", "/info")
        answer = conn.getresponse()
        body = json.loads(answer.read(4 << 20)) if answer.status == 200 else {}
    except (OSError, ValueError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    return body if isinstance(body, Mapping) else {}


def engine_paths(engine_socket: str) -> list[str]:
    """Where this engine keeps what a module must not reach, asked of the engine itself: a dockerd started with
    `--data-root /A --exec-root /B` keeps other modules' layers in /A and containerd's socket in /B."""
    out: list[str] = []
    root = _engine_info(engine_socket).get("DockerRootDir")
    if isinstance(root, str) and root.startswith("/"):
        out.append(root)
    pid = _listener_pid(engine_socket)
    if pid is not None:
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            argv = []
        out += engine_paths_from_cmdline(argv)
        config = next((p for p in engine_paths_from_cmdline(argv) if p.endswith(".json")), "/etc/docker/daemon.json")
        out += _daemon_json_paths(config)
    return out


def _daemon_json_paths(path: str) -> list[str]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(doc, Mapping):
        return []
    out = [v for k in ("data-root", "graph", "exec-root", "pidfile", "containerd")
           if isinstance(v := doc.get(k), str) and v.startswith("/")]
    hosts = doc.get("hosts")
    for h in hosts if isinstance(hosts, list) else []:
        if isinstance(h, str) and h.startswith("unix://"):
            out.append(h.removeprefix("unix://"))
    return out


def policy_for(settings: RuntimeSettings, roots: tuple[str, ...] | None = None,
               neighbours: Iterable[HostBind] = ()) -> PrivilegePolicy:
    state = settings.state_dir or settings.home.parent
    protected = [Protected("/proc", "the host's /proc"),
                 Protected("/sys", "the host's /sys (cgroups, kernel and device controls)"),
                 Protected("/dev/pts", "the host's terminals"), Protected("/dev/shm", "the host's shared memory"),
                 Protected(str(state), "Edgeward's state directory"),
                 Protected(str(settings.run_dir), "Edgeward's run directory (its sockets and every module's "
                                                  "workload socket)")]
    engine = settings.docker_uri.removeprefix("unix://") if settings.docker_uri.startswith("unix://") else None
    if engine:
        protected.append(Protected(engine, "the container engine's socket"))
    if engine and settings.allow_elevated_docker_permissions is False:
        protected += [Protected(p, "the container engine's state, sockets or configuration")
                      for p in dict.fromkeys(engine_paths(engine))]
    protected += [Protected(str(p), "a file or directory of Edgeward's configuration, keys or certificates")
                  for p in settings.protected_paths]
    protected += [Protected(p, "a container engine's socket or state") for p in ENGINE_PATHS]
    protected += [Protected(p, "a host service's control socket (root's systemd, D-Bus or udev)")
                  for p in HOST_CONTROL]
    protected += [Protected(p, "the host's logs", writes_only=True) for p in LOG_PATHS]
    # A writer of /dev/serial/by-id could point a link another module is given as a device at a disk.
    protected.append(Protected("/dev", "the host's device nodes (give devices through Devices)", writes_only=True))
    protected += [Protected(p, "Edgeward's or IoT Edge's configuration, state or sockets") for p in PRODUCT_PATHS]
    protected += [Protected(p, "the host's secrets") for p in HOST_SECRETS]
    protected += [Protected(p, "a host system directory", writes_only=True)
                  for p in SYSTEM_PATHS]
    if roots is None:
        roots = host_views(engine) if settings.allow_elevated_docker_permissions is False else ("/",)
    return PrivilegePolicy(settings.allow_elevated_docker_permissions, tuple(protected), roots, tuple(neighbours))


# paths -------------------------------------------------------------------------------------------------------------
def resolve_in(root: str, path: str, max_links: int = 40) -> str:
    """`path` (absolute) resolved as the kernel would inside `root`: each symlink replaced by its target (an
    absolute target starts again at `root`) before the ".." that follows it; a missing component ends the symlinks
    and the rest is taken as written (Docker creates missing bind sources as directories)."""
    pending = [p for p in path.split("/") if p]
    done: list[str] = []
    links, exists = 0, True
    base = root.rstrip("/")
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        done.append(part)
        if not exists:
            continue
        full = base + "/" + "/".join(done)
        try:
            st = Path(full).lstat()
        except OSError:
            exists = False
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                raise ValueError("too many levels of symbolic links")
            target = str(Path(full).readlink())
            done.pop()
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p] + pending
    return "/" + "/".join(done)


def _readings(path: str, roots: Iterable[str], *, lexical: bool = True) -> set[str]:
    """Every host path a bind of `path` may land on (see the module docstring); `lexical` adds the path as
    written, cleaned (a device path is only ever taken resolved, so it leaves that out)."""
    if "\0" in path:
        raise ValueError("a path with a NUL byte")
    cleaned = posixpath.normpath("/" + path.lstrip("/"))
    out = {cleaned} if lexical else set()
    for root in roots:
        out.add(resolve_in(root, path))
        out.add(resolve_in(root, cleaned))
    return out


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def _check_host_path(option: str, source: str, policy: PrivilegePolicy, *, read_only: bool) -> None:
    try:
        readings = _readings(source, policy.roots)
        guarded = [(reading, p) for p in policy.protected if not (read_only and p.writes_only)
                   for reading in _readings(p.path, policy.roots)]
    except (ValueError, OSError) as e:
        raise ElevatedOptionRefused(option, f"{source[:200]!r} cannot be resolved safely ({e})") from None
    cleaned = posixpath.normpath("/" + source.lstrip("/"))
    for landing in sorted(readings, key=lambda r: (r != cleaned, r)):  # the path as written first
        for protected_reading, p in guarded:
            if _overlaps(landing, protected_reading):
                relation = ("is" if PurePosixPath(landing) == PurePosixPath(protected_reading) else
                            "contains" if PurePosixPath(landing) in PurePosixPath(protected_reading).parents
                            else "is inside")
                shown = source if landing == source else f"{source} (which lands on {landing})"
                hint = " (a read-only bind of it is allowed)" if p.writes_only else ""
                raise ElevatedOptionRefused(option, f"binds {shown}, which {relation} {p.what}, {p.path}{hint}")


# keys ----------------------------------------------------------------------------------------------------------------
def _canonical(table: Any, names: Iterable[str], where: str) -> dict[str, Any]:
    """A copy of `table` with each known key under Docker's spelling; two spellings of one key are refused."""
    if not isinstance(table, Mapping):
        raise ElevatedOptionRefused(where, "it must be a JSON object")
    spelled = {n.casefold(): n for n in names}
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        folded = str(key).casefold()
        if folded in seen:
            raise ElevatedOptionRefused(f"{where}.{key}", f"it is also given as {seen[folded]!r}, and Docker reads "
                                                          f"keys without regard to case")
        seen[folded] = str(key)
        out[spelled.get(folded, str(key))] = value
    return out


def _strings(value: Any, option: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ElevatedOptionRefused(option, "it must be a list of strings")
    return list(value)


def _objects(value: Any, option: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ElevatedOptionRefused(option, "it must be a list of objects")
    return list(value)


def _mode(host: Mapping[str, Any], name: str, refused: tuple[str, ...]) -> None:
    value = host.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise ElevatedOptionRefused(f"HostConfig.{name}", "it must be a string")
    mode = value.casefold()
    if mode in refused or ("container" in refused and mode.startswith("container:")):
        what = "another container's" if mode.startswith("container:") else "the host's"
        raise ElevatedOptionRefused(f"HostConfig.{name}", f"{value!r} shares {what} namespace")


# the rules -------------------------------------------------------------------------------------------------------
def _binds(host: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(option, host source, writable) of each bind of a host path; volume driver options are refused."""
    out: list[tuple[str, str, bool]] = []
    for i, bind in enumerate(_strings(host.get("Binds"), "HostConfig.Binds")):
        bind_source, *rest = bind.split(":")
        if bind_source.startswith("/"):  # otherwise a named volume
            read_only = len(rest) > 1 and "ro" in rest[-1].split(",")
            out.append((f"HostConfig.Binds[{i}]", bind_source, not read_only))
    for i, raw in enumerate(_objects(host.get("Mounts"), "HostConfig.Mounts")):
        where = f"HostConfig.Mounts[{i}]"
        mount = _canonical(raw, ("Type", "Source", "Target", "ReadOnly", "VolumeOptions"), where)
        source = mount.get("Source")
        if isinstance(source, str) and source.startswith("/"):
            out.append((where, source, mount.get("ReadOnly") is not True))
        elif source is not None and not isinstance(source, str):
            raise ElevatedOptionRefused(f"{where}.Source", "it must be a string")
        volume = _canonical(mount.get("VolumeOptions") or {}, ("DriverConfig",), f"{where}.VolumeOptions")
        driver = _canonical(volume.get("DriverConfig") or {}, ("Options",), f"{where}.VolumeOptions.DriverConfig")
        if driver.get("Options"):
            raise ElevatedOptionRefused(f"{where}.VolumeOptions.DriverConfig.Options",
                                        "volume driver options can bind any host path")
    return out


def host_binds(module: str, options: Mapping[str, Any]) -> list[HostBind]:
    """The host binds of a registered module's stored createOptions (what the engine was given); options this
    module cannot read count as nothing, since they were vetted when the module was created."""
    try:
        top = _canonical(options, ("HostConfig",), "createOptions")
        host = _canonical(top.get("HostConfig") or {}, _HOST_NAMES, "HostConfig")
        return [HostBind(module, source, writable) for _, source, writable in _binds(host)]
    except ElevatedOptionRefused:
        return []


def _strictly_inside(inner: str, outer: str) -> bool:
    return PurePosixPath(outer) in PurePosixPath(inner).parents


def _check_nesting(own: list[tuple[str, str, bool]], module: str | None, policy: PrivilegePolicy) -> None:
    """A bind source nested in another that a module can write is a symlink swap waiting for the next start:
    the writer replaces the inner directory with a link to the state directory, and the engine follows it."""
    others = [(f"this module's {o}", s, w) for o, s, w in own]
    others += [(f"module {n.module}", n.source, n.writable) for n in policy.neighbours if n.module != module]
    try:
        readings = {source: _readings(source, policy.roots) for _, source, _ in [*own, *others]}
    except (ValueError, OSError) as e:
        raise ElevatedOptionRefused("HostConfig", f"a bind source cannot be resolved safely ({e})") from None
    for option, source, writable in own:
        for holder, other, other_writable in others:
            if holder == f"this module's {option}":
                continue
            for a in readings[source]:
                for b in readings[other]:
                    if other_writable and _strictly_inside(a, b):
                        raise ElevatedOptionRefused(option, f"binds {source}, which lies inside {other}, which "
                                                            f"{holder} binds writable: it could replace {source} "
                                                            f"with a symlink the engine follows at the next start")
                    if writable and _strictly_inside(b, a):
                        raise ElevatedOptionRefused(option, f"binds {source} writable, which contains {other}, "
                                                            f"which {holder} binds: this module could replace it "
                                                            f"with a symlink the engine follows at the next start")


def _check_binds(host: Mapping[str, Any], policy: PrivilegePolicy, module: str | None) -> None:
    own = _binds(host)
    for option, source, writable in own:
        _check_host_path(option, source, policy, read_only=not writable)
    _check_nesting(own, module, policy)


def _check_network(host: Mapping[str, Any], module: str | None) -> None:
    value = host.get("NetworkMode")
    if value is None:
        return
    if not isinstance(value, str):
        raise ElevatedOptionRefused("HostConfig.NetworkMode", "it must be a string")
    kind, sep, target = value.partition(":")
    if sep and kind.casefold() == "container" and (module is None or target != module):
        raise ElevatedOptionRefused("HostConfig.NetworkMode", f"{value[:80]!r} joins another container's network "
                                                              f"namespace (its sockets on 127.0.0.1 included)")


def _check_devices(host: Mapping[str, Any], policy: PrivilegePolicy) -> None:
    for i, raw in enumerate(_objects(host.get("Devices"), "HostConfig.Devices")):
        where = f"HostConfig.Devices[{i}]"
        device = _canonical(raw, ("PathOnHost",), where)
        path = device.get("PathOnHost")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ElevatedOptionRefused(f"{where}.PathOnHost", "it must be an absolute path")
        try:
            readings = _readings(path, policy.roots, lexical=False)
        except (ValueError, OSError) as e:
            raise ElevatedOptionRefused(where, f"{path[:200]!r} cannot be resolved safely ({e})") from None
        for landing in readings:
            if not _DEVICES.match(landing):
                raise ElevatedOptionRefused(where, f"{path} ({landing}) is not among the devices a module may be "
                                                   f"given without elevated permissions (serial, I2C, SPI, GPIO, "
                                                   f"video, sound, GPU, input, HID)")
            try:
                mode = Path(landing).stat().st_mode
            except OSError:
                continue  # the engine reports a missing device itself
            if not (stat.S_ISCHR(mode) or (stat.S_ISDIR(mode) and landing.count("/") == 2)):
                raise ElevatedOptionRefused(where, f"{landing} is not a character device")
    for i, rule in enumerate(_strings(host.get("DeviceCgroupRules"), "HostConfig.DeviceCgroupRules")):
        m = _RULE.fullmatch(rule.strip())
        if m is None or int(m.group(1)) not in _DEVICE_MAJORS:
            raise ElevatedOptionRefused(f"HostConfig.DeviceCgroupRules[{i}]",
                                        f"{rule!r} widens device access beyond the character devices of serial, "
                                        f"I2C, SPI, video, sound, GPU and input classes")


def _check_security(host: Mapping[str, Any]) -> None:
    for i, opt in enumerate(_strings(host.get("SecurityOpt"), "HostConfig.SecurityOpt")):
        if not _SECURITY_OPTS.fullmatch(opt.strip()):
            raise ElevatedOptionRefused(f"HostConfig.SecurityOpt[{i}]", f"{opt[:80]!r} may loosen the module's "
                                        f"confinement (allowed: no-new-privileges, apparmor=docker-default, "
                                        f"label=level:...)")
    for name in ("MaskedPaths", "ReadonlyPaths"):
        if host.get(name) is not None:
            raise ElevatedOptionRefused(f"HostConfig.{name}", "it replaces Docker's protection of /proc and /sys "
                                                              "paths inside the container")


def _check_log_config(host: Mapping[str, Any]) -> None:
    log = _canonical(host.get("LogConfig") or {}, ("Config",), "HostConfig.LogConfig")
    config = log.get("Config") or {}
    if not isinstance(config, Mapping):
        raise ElevatedOptionRefused("HostConfig.LogConfig.Config", "it must be an object")
    for key, value in config.items():
        if str(key).endswith("address") and str(value).casefold().startswith("unix"):
            raise ElevatedOptionRefused(f"HostConfig.LogConfig.Config.{key}", "the engine, as host root, would "
                                                                              "write the module's output to a "
                                                                              "host socket")


def vet_create_options(options: Mapping[str, Any], policy: PrivilegePolicy, module: str | None = None) -> Vetted:
    """The createOptions to give the engine, with what IoT Edge strips removed; raises ElevatedOptionRefused.
    `module` is the module's own name (its other registrations in `policy.neighbours` are left out)."""
    if policy.allow_elevated:
        return Vetted(dict(options))
    top = _canonical(options, ("HostConfig",), "createOptions")
    for key in top:  # (a top-level NetworkMode is ignored by Docker, and common in hand-written manifests)
        if key.casefold() in {n.casefold() for n in _HOST_NAMES} - {"networkmode"}:
            raise ElevatedOptionRefused(key, "it belongs in HostConfig")
    host = _canonical(top.get("HostConfig") or {}, _HOST_NAMES, "HostConfig")
    _mode(host, "PidMode", ("host", "container"))
    _mode(host, "IpcMode", ("host", "container"))
    _mode(host, "UsernsMode", ("host",))
    for name, why in (("Cgroup", "it joins another container's cgroup"),
                      ("CgroupParent", "it places the module in a cgroup of its choosing, where it could pass for "
                                       "another container"),
                      ("VolumesFrom", "it mounts another container's volumes and binds")):
        if host.get(name):
            raise ElevatedOptionRefused(f"HostConfig.{name}", why)
    _check_security(host)
    _check_devices(host, policy)
    _check_network(host, module)
    _check_binds(host, policy, module)
    _check_log_config(host)
    stripped = []
    if host.get("Privileged") not in (None, False):
        stripped.append("HostConfig.Privileged")
    if host.get("CapAdd"):
        stripped.append("HostConfig.CapAdd")
    host.pop("Privileged", None)
    host.pop("CapAdd", None)
    host["CapDrop"] = list(dict.fromkeys([*DROPPED_CAPS, *_strings(host.get("CapDrop"), "HostConfig.CapDrop")]))
    top["HostConfig"] = host
    return Vetted(top, tuple(stripped))
