"""From a module spec to the exact command line, environment and identity a host-process module runs with.

Everything a deployment can get wrong is checked here, at create time, so the edge agent gets a 400 naming the
field instead of a module that fails on every start. The same checks run again at start: the file system or the
user database may have changed in between.

What the create options mean for a host process:
- the executable is `spec.image` (an absolute path); argv is `[image, *Entrypoint, *Cmd]`: Entrypoint is the
  fixed leading arguments, Cmd the default ones (the program itself is always the measured file);
- `Env` (["K=V"]) comes first and the runtime's env (`spec.env`, which holds IOTEDGE_*) wins over it, so create
  options cannot spoof the module identity; IOTEDGE_WORKLOADURI points at the host path of the workload socket,
  which the sandbox binds at the same path; the daemon's own environment is never inherited;
- `User` is "uid", "uid:gid" or names; privileges are dropped to gid, no supplementary groups, then uid. The
  group is the user's own, as the uid is (`_own_group`): the uid's primary group in the passwd database, or, for
  a uid without a passwd entry, the gid of the same number, which no group of the system may have; any other
  gid is refused (400), since the module would read and write that group's files (another user's, or `staff`'s
  /usr/local, which is on root's PATH). Never a service account's uid or group (the keys, certificates, identity
  and TPM services' users, IoT Edge's `iotedge`, the TPM's `tss`): their sockets would take the module for that
  service; nor a `[[principal]]`'s uid;
  without `User` (and without `Sandbox`) the module runs as Edgeward's own user, with its groups: root in the
  embedded shape (then only with `allow_elevated_docker_permissions`, see below), as trusted as Edgeward itself;
- `WorkingDir` is entered by the module's own process, with its user's rights: the drop to User happens before
  exec, and Python's subprocess would chdir before it, as root, so a module could start inside a directory its
  uid may not pass (below a 0700 one) and open what is there by relative path. A module with a `User` therefore
  starts as `/bin/sh -c 'cd -P -- "$1" ...; exec "$@"'`, which enters the directory after the drop and execs the
  module in place (its pid and its image stay the module's; the shell exports PWD); the engine checks at every
  start, as the module's user, that it can enter it, so a directory it cannot is a 400 naming WorkingDir that
  says no more than that user could learn (see process.py). In the sandbox bubblewrap enters it, as the user;
- `Sandbox: true` runs it under bubblewrap: read-only root, private /tmp, new pid and IPC namespaces, no
  capabilities, a new session, killed with its supervisor; only the workload dir and `HostConfig.Binds` are
  writable (Binds without ":ro", and bind `Mounts` without `ReadOnly`). Edgeward's state and run directories
  (`hidden`) are empty tmpfs inside, with only the module's own workload directory bound back, so it sees no
  key file, no other socket. Without `User` it runs as a dedicated unprivileged uid of its own (allocated by the
  engine, never 0): a uid 0 without capabilities still owns root's files and is root to every service.

Who may run as root is the operator's decision, as for containers (`allow_elevated_docker_permissions`, default
false, see runtime/privileges.py). A host process as uid 0 is all of root on the host, more than a Privileged
container (which still has its own mount and pid namespaces), so with the setting off a host-process module may
not run as uid 0, in gid 0, or with any capability: no `User` while Edgeward runs as root, `User` naming uid or gid
0, an executable that is setuid or setgid or carries file capabilities (it would get them back at exec; bubblewrap
sets no_new_privs, so inside the sandbox it gets nothing), or Edgeward's own ambient capabilities. Such a module is
refused at create, update and every start, with 422 like Edgeward's other refusals of elevated create options
(upstream aziot-edged refuses nothing: it strips Privileged and CapAdd with a warning, and what would be stripped
here is the module's whole identity, so it is refused instead). It is refused rather than moved into the sandbox
under an allocated uid: the sandbox changes what the program sees (read-only root, hidden state, private /tmp) and
needs bubblewrap, so a module that expects the host would fail later and obscurely; the refusal names both ways
out (an unprivileged `User`, or `Sandbox: true`) and the setting. With the setting on, root host modules run as
before, with a warning.

No module runs as the uid of a keys, certificates or identity `[[principal]]` either (`principal_uids`): the
module itself is attributed to its module and refused, but a process that leaves its tree (a double fork into a
new session) would be taken for that principal and use its keys. Principals are matched by uid only. Nor as
another module's uid: that needs the engine's other modules, so the engine checks it (`module_uid` says which uid a
module's options give it; see process.py, "A module's uid is its own").
"""

from __future__ import annotations

import contextlib
import functools
import grp
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...digest import open_regular
from ...digits import is_number
from ..engine import WORKLOAD_SOCKET_NAME, EngineError, ModuleSpec

__all__ = ["DEFAULT_PATH", "Launch", "check_executable", "module_uid", "needs_sandbox_uid", "parse_user",
           "plan_launch", "runs_as_root", "workdir_check"]

log = logging.getLogger(__name__)

# Accounts a module may not run as (user or group): the services' own users (the packaged units run as them,
# and their sockets admit their groups), IoT Edge's edged user, and the owner of the TPM's device nodes.
SERVICE_ACCOUNTS = ("aziotks", "aziotcs", "aziotid", "aziottpm", "iotedge", "tss")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what Docker gives a bare image
_ELEVATED = ("elevated Docker permissions are off on this device (allow_elevated_docker_permissions = false), and a "
             "host process with root's uid, group or capabilities is root on the host; give User an unprivileged "
             "user, or Sandbox: true to run it as a dedicated uid, or, if the module must be root, set "
             "allow_elevated_docker_permissions = true in the config and apply it (every deployment may then run "
             "host modules as root)")
_BIND_OPTIONS = {"ro", "rw", "z", "Z", "private", "rprivate", "slave", "rslave", "shared", "rshared", "nocopy"}


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]  # what is exec'd: the module's argv, or bwrap's wrapping it
    env: Mapping[str, str]
    cwd: str  # where the process starts, entered as Edgeward before the drop: "/" whenever it drops to a User
    uid: int | None  # None: keep the daemon's identity
    gid: int | None
    sandbox: bool
    workdir: str | None = None  # WorkingDir, entered by argv's first step as the module's user (see `_enter`)


def _bad(message: str) -> EngineError:
    return EngineError(message, 400)


def _elevated(what: str) -> EngineError:
    """422, as privileges.ElevatedOptionRefused answers for containers."""
    return EngineError(f"{what} is refused: {_ELEVATED}", 422)


def check_executable(image: str) -> Path:
    """The module's program must be an absolute path to an executable regular file."""
    if not image.startswith("/"):
        raise _bad(f"a host-process module's image must be the absolute path of its executable, not {image!r}")
    path = Path(os.path.normpath(image))
    if len(path.parts) > 1 and path.parts[1] in ("proc", "sys", "dev"):
        # /proc/self/exe is whichever program asks; nothing there is a program of its own to measure and run
        raise _bad(f"{image} is under /{path.parts[1]}: a host-process module's image must be a program's file")
    try:
        st = path.stat()
    except OSError:
        raise _bad(f"the executable {image} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise _bad(f"{image} is not a regular file")
    if not os.access(path, os.X_OK):
        raise _bad(f"{image} is not executable")
    return path


def _strings(options: Mapping[str, Any], key: str) -> list[str]:
    raw = options.get(key)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, Sequence) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise _bad(f"createOptions.{key} must be a list of strings")


def _check_arg(value: str, where: str) -> str:
    if "\0" in value:
        raise _bad(f"{where} holds a NUL byte")
    return value


def _user_id(text: str) -> int:
    if is_number(text, 10):  # ASCII digits only: "²" or "١٢" are names (and no account has one)
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL byte, which no name holds
        raise _bad(f"createOptions.User: no user named {text[:64]!r}") from None


def _group_id(text: str) -> int:
    if is_number(text, 10):
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):
        raise _bad(f"createOptions.User: no group named {text[:64]!r}") from None


def parse_user(text: str) -> tuple[int, int]:
    """"uid", "uid:gid", "name", "name:group" -> (uid, gid). A user alone takes its passwd group; a bare uid
    without a passwd entry is refused rather than guessed (Docker would pick gid 0, the root group)."""
    user, sep, group = text.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise _bad(f"createOptions.User must be \"uid\", \"uid:gid\" or names, not {text!r}")
    uid = _user_id(user)
    if uid > 0xFFFF_FFFE:
        raise _bad(f"createOptions.User: uid {uid} is out of range")
    if group:
        gid = _group_id(group)
        if gid > 0xFFFF_FFFE:
            raise _bad(f"createOptions.User: gid {gid} is out of range")
        return uid, gid
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        raise _bad(f"createOptions.User: uid {uid} has no passwd entry; give \"{uid}:{uid}\" (its own group)") \
            from None


def _not_a_service_account(raw: str, uid: int, gid: int) -> None:
    for name in SERVICE_ACCOUNTS:  # an account this system does not have (KeyError) cannot be matched
        with contextlib.suppress(KeyError):
            if pwd.getpwnam(name).pw_uid == uid:
                raise _bad(f"createOptions.User {raw!r} is the service account {name}: a module never runs as one "
                           f"(its socket would take the module for that service)")
        with contextlib.suppress(KeyError):
            if grp.getgrnam(name).gr_gid == gid:
                raise _bad(f"createOptions.User {raw!r} has the group of the service account {name}: a module "
                           f"never runs in it (that service's socket admits the group)")


def _not_a_principal(raw: str, uid: int, principal_uids: Collection[int]) -> None:
    if uid in principal_uids:
        raise _bad(f"createOptions.User {raw!r} is the uid of a [[principal]] of the keys, certificates or identity "
                   f"service: a module never runs as one (a process that leaves the module's process tree would be "
                   f"taken for that principal)")


def _identity(options: Mapping[str, Any], principal_uids: Collection[int]) -> tuple[int | None, int | None]:
    raw = options.get("User")
    if raw is None or raw == "":
        return None, None
    if not isinstance(raw, str):
        raise _bad("createOptions.User must be a string")
    uid, gid = parse_user(raw)
    _not_a_service_account(raw, uid, gid)
    _not_a_principal(raw, uid, principal_uids)
    if os.geteuid() == 0:
        return uid, gid
    if (uid, gid) == (os.getuid(), os.getgid()):
        return None, None
    raise _bad(f"createOptions.User {raw!r} differs from the user Edgeward runs as (uid {os.getuid()}), and only "
               f"root can switch users")


def _env(spec: ModuleSpec, options: Mapping[str, Any]) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH}
    for item in _strings(options, "Env"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _bad(f"createOptions.Env entries must be \"KEY=value\", not {item!r}")
        env[_check_arg(key, "createOptions.Env")] = _check_arg(value, "createOptions.Env")
    for key, value in spec.env.items():
        if not key or "=" in key:
            raise _bad(f"env name {key!r} is not valid")
        env[_check_arg(key, "env")] = _check_arg(value, "env")
    if spec.workload_dir is not None:
        env["IOTEDGE_WORKLOADURI"] = f"unix://{spec.workload_dir}/{WORKLOAD_SOCKET_NAME}"
    return env


def _binds(options: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    host_config = options.get("HostConfig") or {}
    if not isinstance(host_config, Mapping):
        raise _bad("createOptions.HostConfig must be an object")
    out: list[tuple[str, str, bool]] = []
    for item in _strings(host_config, "Binds"):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise _bad(f"createOptions.HostConfig.Binds entries must be \"/host:/inside[:ro]\", not {item!r}")
        opts = set(parts[2].split(",")) if len(parts) == 3 else set()
        if not opts <= _BIND_OPTIONS:
            raise _bad(f"createOptions.HostConfig.Binds: unknown options in {item!r}")
        if not Path(parts[0]).exists():
            raise _bad(f"createOptions.HostConfig.Binds: {parts[0]} does not exist")
        out.append((_check_arg(parts[0], "Binds"), _check_arg(parts[1], "Binds"), "ro" in opts))
    mounts = host_config.get("Mounts") or []
    if not isinstance(mounts, Sequence) or isinstance(mounts, str):
        raise _bad("createOptions.HostConfig.Mounts must be a list")
    for mount in mounts:  # the runtime mounts the management socket for the agent this way
        if not isinstance(mount, Mapping) or mount.get("Type", "bind") != "bind":
            raise _bad("createOptions.HostConfig.Mounts: a sandboxed host process only takes bind mounts")
        src, dst = mount.get("Source"), mount.get("Target")
        if not isinstance(src, str) or not isinstance(dst, str) or not src.startswith("/") \
                or not dst.startswith("/"):
            raise _bad("createOptions.HostConfig.Mounts entries need absolute Source and Target")
        if not Path(src).exists():
            raise _bad(f"createOptions.HostConfig.Mounts: {src} does not exist")
        out.append((_check_arg(src, "Mounts"), _check_arg(dst, "Mounts"), bool(mount.get("ReadOnly", False))))
    return out


def _sandboxed(argv: list[str], spec: ModuleSpec, *, image: str, cwd: str, binds: list[tuple[str, str, bool]],
               bwrap: str, hidden: Sequence[Path], uid: int | None, gid: int | None) -> tuple[str, ...]:
    # Order matters: bwrap applies these in sequence, so binds after a tmpfs (/tmp, the hidden directories)
    # reappear inside it: the program, the module's own workload directory, the deployment's binds.
    wrap = [bwrap, "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for directory in _outermost(hidden, uid, gid):
        wrap += ["--tmpfs", str(directory)]
    wrap += ["--ro-bind", image, image]
    if spec.workload_dir is not None:
        wrap += ["--bind", str(spec.workload_dir), str(spec.workload_dir)]
    for src, dst, read_only in binds:
        wrap += ["--ro-bind" if read_only else "--bind", src, dst]
    wrap += ["--chdir", cwd, "--", *argv]
    return tuple(wrap)


def _passable(directory: Path, uid: int, gid: int) -> bool:
    """May `uid` (primary group `gid`, no other groups) pass through `directory` (by its mode bits)?"""
    try:
        st = directory.stat()
    except OSError:
        return False  # what cannot be looked at is hidden where it stands
    bits = st.st_mode >> 6 if st.st_uid == uid else st.st_mode >> 3 if st.st_gid == gid else st.st_mode
    return bool(bits & 1)


def _hide_at(directory: Path, uid: int | None, gid: int | None) -> Path:
    """Where the tmpfs that hides `directory` goes: the directory itself, or the first directory above it that
    the module's uid may not pass (bubblewrap runs as that uid and could not even reach the directory; nothing
    below shows anyway)."""
    who = os.geteuid() if uid is None else uid
    if who == 0:
        return directory
    group = os.getegid() if gid is None else gid
    for step in (*reversed(directory.parents[:-1]), directory):
        if not _passable(step, who, group):
            return step
    return directory


def _outermost(hidden: Sequence[Path], uid: int | None, gid: int | None) -> list[Path]:
    """Where to mount the tmpfs that hide the existing `hidden` directories, without those inside another one
    (a tmpfs over the outer hides them)."""
    dirs = sorted({_hide_at(Path(os.path.normpath(d)), uid, gid) for d in hidden if Path(d).is_dir()},
                  key=lambda d: len(d.parts))
    out: list[Path] = []
    for d in dirs:
        if d != Path("/") and not any(d.is_relative_to(o) for o in out):
            out.append(d)
    return out


def module_uid(options: Mapping[str, Any], sandbox_uid: int | None) -> int | None:
    """The uid a module with these create options runs as: its User's, its dedicated sandbox uid (None until it
    has one), or Edgeward's own; None for a User that does not parse (such a module never starts)."""
    raw = options.get("User")
    if isinstance(raw, str) and raw:
        try:
            return parse_user(raw)[0]
        except EngineError:
            return None
    if raw in (None, "") and options.get("Sandbox", False) is True:
        return sandbox_uid
    return os.geteuid()


def needs_sandbox_uid(spec: ModuleSpec) -> bool:
    """A sandboxed module that names no User runs as a dedicated uid the engine allocates."""
    options = spec.create_options
    return options.get("Sandbox", False) is True and options.get("User") in (None, "")


def _ambient_capabilities() -> int:
    """This process's ambient capabilities: what a child that keeps its identity keeps across exec."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("CapAmb:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def runs_as_root(launch: Launch) -> bool:
    """Will the process run as uid 0 (its own User, or Edgeward's identity when it names none)?"""
    return (os.geteuid() if launch.uid is None else launch.uid) == 0


def _not_elevated(launch: Launch, options: Mapping[str, Any], image: str, depth: int = 0) -> None:
    """Refuse (422) what would make the module root, or give it capabilities: see the module docstring."""
    raw = options.get("User")
    user = f"createOptions.User {raw!r}" if raw not in (None, "") else "a module without createOptions.User"
    uid = os.geteuid() if launch.uid is None else launch.uid
    gid = os.getegid() if launch.gid is None else launch.gid
    if uid == 0:
        running = "" if launch.uid is not None else ", which runs as Edgeward's user, root,"
        raise _elevated(f"{user}{running} (uid 0)")
    if gid == 0 or (launch.uid is None and 0 in os.getgroups()):
        raise _elevated(f"{user} (group 0, root's)")
    privileged = _privileged_group(gid)
    if privileged is not None:
        raise _elevated(f"{user} (group {privileged}, which reads or writes what only root should)")
    if launch.uid is None and _ambient_capabilities():
        raise _elevated(f"{user} (it keeps Edgeward's ambient capabilities)")
    if launch.sandbox:
        return  # bubblewrap sets no_new_privs: no setuid bit or file capability takes effect inside
    try:
        st = Path(image).stat()
    except OSError:
        raise _bad(f"the executable {image} does not exist") from None
    if st.st_mode & stat.S_ISUID or (st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IXGRP):
        raise _elevated(f"the executable {image}, setuid or setgid (it runs as its owner, not as User),")
    try:
        caps = os.getxattr(image, "security.capability")
    except OSError:
        caps = b""
    if caps:
        raise _elevated(f"the executable {image}, which carries file capabilities,")
    interpreter = _interpreter(image) if stat.S_ISREG(st.st_mode) else None
    if interpreter is not None and depth < 4:  # a script runs as its #! interpreter does: setuid there counts too
        _not_elevated(launch, options, interpreter, depth + 1)


def _interpreter(image: str) -> str | None:
    """The program a script's #! line names (the kernel execs that, with the script as an argument), or None.
    Runs on the event loop: opened as the measurements open it (a FIFO or device put there since the caller's
    stat is refused, never waited on or opened; a write lease does not hold it)."""
    try:
        with os.fdopen(open_regular(image), "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return os.fsdecode(words[0]) if words and words[0].startswith(b"/") else None


# Groups whose members read or write what only root should: raw disks and memory, password hashes, every log, the
# container engine's socket, sudo. A module in one is root, or close to it, as a process in group 0 is. Also the
# groups that own key material on Debian: `softhsm` (SoftHSM2's token store, /var/lib/softhsm/tokens, group-writable:
# a member renames Edgeward's PKCS#11 token away or plants its own) and `ssl-cert` (/etc/ssl/private); the TPM's
# `tss` and the services' own groups are refused as service accounts (SERVICE_ACCOUNTS). And (brk14b) the groups
# that reach root's code, root's console or a service that acts as root: `staff` and `src` (/usr/local and /usr/src,
# 2775: /usr/local/bin comes first on root's PATH where base-files' staff policy is on), `tty` (every terminal),
# `input` (keyboards: read what root types, type into its console), `libvirt` (virtual machines given any host
# disk), `lpadmin` (CUPS's configuration, whose backends run as root), `netdev` (the device's network
# configuration), `mail` (every mailbox), `utmp` (who is logged in), `crontab` (the cron spool). Not listed: the
# groups of the devices an IoT module may need (video and render for cameras and GPUs, audio, dialout for serial
# sensors, bluetooth, plugdev, kvm, gpio, i2c, spi): they reach no root code, and a module is in one only as its
# own user's primary group (`_own_group`), which is the operator's choice (`useradd -g dialout modbus`).
_PRIVILEGED_GROUPS = ("disk", "kmem", "shadow", "sudo", "wheel", "adm", "docker", "lxd", "systemd-journal",
                      "softhsm", "ssl-cert", "staff", "src", "tty", "input", "libvirt", "lpadmin", "netdev", "mail",
                      "utmp", "crontab")


def _privileged_group(gid: int) -> str | None:
    for name in _PRIVILEGED_GROUPS:
        try:
            if grp.getgrnam(name).gr_gid == gid:
                return name
        except KeyError:
            continue
    return None


def plan_launch(spec: ModuleSpec, bwrap: str | None, *, sandbox_uid: int | None = None,
                hidden: Sequence[Path] = (), allow_elevated: bool = False,
                principal_uids: Collection[int] = ()) -> Launch:
    """Check `spec` and say how to run it; EngineError(400) naming the field at fault, 422 for what only
    `allow_elevated` (allow_elevated_docker_permissions) permits. `sandbox_uid` is the module's dedicated uid (see
    `needs_sandbox_uid`); `hidden` the directories a sandbox must not show; `principal_uids` the uids of the
    services' [[principal]] entries, which no module may run as."""
    launch = _plan(spec, bwrap, sandbox_uid=sandbox_uid, hidden=hidden, allow_elevated=allow_elevated,
                   principal_uids=principal_uids)
    if not allow_elevated:
        _not_elevated(launch, spec.create_options, os.path.normpath(spec.image))
        if not launch.sandbox:  # (bubblewrap sets it inside the sandbox)
            launch = replace(launch, argv=(*_no_new_privs(), *launch.argv))
    _own_group(launch, spec.create_options, allow_elevated)  # after the 422s: a root group is an elevated option
    return launch


def _group_name(gid: int) -> str:
    try:
        return f"gid {gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return f"gid {gid}"


def _own_group(launch: Launch, options: Mapping[str, Any], allow_elevated: bool) -> None:
    """A module's gid is its user's own, as its uid is: the uid's primary group in the passwd database, or, for a
    uid without a passwd entry, the gid of the same number, and then no group the system names (its files are
    someone else's: a person's, `video`'s, `staff`'s). Otherwise the module reads and writes another user's
    group-readable files, or root's /usr/local (brk14b foreign_gid). 400 naming createOptions.User."""
    raw = options.get("User")
    uid, gid = launch.uid, launch.gid
    if raw in (None, "") or uid is None or gid is None:
        return  # Edgeward's own identity, or the sandbox uid the engine allocated (whose gid is that uid)
    if allow_elevated and 0 in (uid, gid):
        return  # root's uid or group: what allow_elevated_docker_permissions lets a deployment give, all of root
    user = f"createOptions.User {raw!r}"
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if entry is not None:
        if gid != entry.pw_gid:
            raise _bad(f"{user}: {_group_name(gid)} is not the group of uid {uid} ({entry.pw_name}), whose primary "
                       f"group is {_group_name(entry.pw_gid)}: a module runs in its own user's group, not another "
                       f"(it would read and write that group's files); give \"{uid}:{entry.pw_gid}\" or the user "
                       f"alone")
        return
    if gid != uid:
        raise _bad(f"{user}: uid {uid} has no passwd entry, so its own group is gid {uid}, not {_group_name(gid)}: "
                   f"a module runs in its own user's group, not another (it would read and write that group's "
                   f"files); give \"{uid}:{uid}\", or create a user for the module and name it")
    try:
        name = grp.getgrgid(gid).gr_name
    except KeyError:
        return
    raise _bad(f"{user}: uid {uid} has no passwd entry, and gid {gid} is the system's group {name}, not a group of "
               f"the module's own (it would read and write that group's files); create a user for the module "
               f"(useradd) and name it")


# Enters WorkingDir ($1) as the module's user, after the drop, and execs the module's argv in place; 125 (as
# env --chdir) if it cannot. Not env --chdir itself: env takes an image path holding "=" for a variable to set.
_ENTER_SCRIPT = 'cd -P -- "$1" || exit 125; shift; exec "$@"'


def _enter(workdir: str, argv: Sequence[str]) -> tuple[str, ...]:
    return ("/bin/sh", "-c", _ENTER_SCRIPT, "edgeward-workdir", workdir, *argv)


def workdir_check(workdir: str) -> tuple[str, ...]:
    """A command that exits 0 if whoever runs it can enter `workdir` (the engine runs it as the module's user
    before a start, for a clear error instead of a module that exits at once). With no_new_privs where setpriv is
    there, as the module has it: another process of that uid that traced it would get no more than the module."""
    return (*_no_new_privs(), "/bin/sh", "-c", 'cd -P -- "$1"', "edgeward-workdir-check", workdir)


@functools.cache
def _no_new_privs() -> tuple[str, ...]:
    """The prefix that execs the module with no_new_privs set (util-linux's setpriv): no setuid program or file
    capability it runs later gives it anything, as inside the sandbox. Without setpriv (not a Debian device) the
    module runs without it, and that is said once."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv (util-linux) is not installed: host modules outside the sandbox run without "
                    "no_new_privs, so a setuid program they exec runs as its owner")
        return ()
    return (setpriv, "--no-new-privs", "--")


def _plan(spec: ModuleSpec, bwrap: str | None, *, sandbox_uid: int | None, hidden: Sequence[Path],
          allow_elevated: bool, principal_uids: Collection[int]) -> Launch:
    image = str(check_executable(spec.image))
    options = spec.create_options
    argv = [image, *(_check_arg(a, "createOptions.Entrypoint") for a in _strings(options, "Entrypoint")),
            *(_check_arg(a, "createOptions.Cmd") for a in _strings(options, "Cmd"))]
    cwd = options.get("WorkingDir") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise _bad("createOptions.WorkingDir must be an absolute path")
    _check_arg(cwd, "createOptions.WorkingDir")
    env = _env(spec, options)
    uid, gid = _identity(options, principal_uids)
    sandbox = options.get("Sandbox", False)
    if not isinstance(sandbox, bool):
        raise _bad("createOptions.Sandbox must be true or false")
    if not sandbox:
        if uid is None or cwd == "/":  # Edgeward's own identity enters it itself; "/" every user may enter
            return Launch(tuple(argv), env, cwd, uid, gid, False)
        return Launch(_enter(cwd, argv), env, "/", uid, gid, False, workdir=cwd)
    if bwrap is None:
        raise _bad("createOptions.Sandbox needs bubblewrap (bwrap), which is not installed on this device")
    if needs_sandbox_uid(spec):
        if os.geteuid() != 0:
            raise _bad(f"createOptions.Sandbox without User: a sandboxed module runs as a dedicated uid, and only "
                       f"root can switch to it; give User (\"{os.getuid()}\" to run as Edgeward's own user)")
        if sandbox_uid is None or sandbox_uid <= 0:
            raise EngineError(f"module {spec.name} has no dedicated sandbox uid", 500)
        if sandbox_uid in principal_uids:
            raise _bad(f"module {spec.name}'s sandbox uid {sandbox_uid} is a [[principal]]'s uid; move "
                       f"[edgeward.runtime] sandbox_uid_base away from the principals' uids")
        uid, gid = sandbox_uid, sandbox_uid
    if (uid == 0 or gid == 0) and not allow_elevated:
        raise _elevated(f"createOptions.User {options.get('User')!r} with Sandbox (uid or gid 0)")
    if uid == 0 or gid == 0:
        # Without capabilities uid 0 still owns root's files: the device's config.toml (connection strings),
        # preloaded key files, PKCS#11 PINs; a sandbox that runs as root hides none of them.
        raise _bad("createOptions.Sandbox with User root (uid or gid 0): root's files stay readable inside the "
                   "sandbox; drop User to run as a dedicated uid, or name an unprivileged user")
    wrapped = _sandboxed(argv, spec, image=image, cwd=cwd, binds=_binds(options), bwrap=bwrap, hidden=hidden,
                         uid=uid, gid=gid)
    return Launch(wrapped, env, "/", uid, gid, True)
