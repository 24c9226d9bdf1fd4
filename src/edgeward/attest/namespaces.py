"""Which namespaces a process lives in, from /proc/<pid>/ns: the fact a container cannot forge from inside.

A cgroup path is writable by anyone holding CAP_SYS_ADMIN or a writable cgroupfs bind, so it can only say which
container a process *claims* to be in. Its pid and mount namespaces are fixed by the kernel when the process is
created or enters them (setns needs the target's namespace file, which a contained process does not hold), so
Edgeward treats them as the proof: a caller is a module only when its namespaces are its container's init
process's, and "host" only when they are the host's. A namespace that cannot be read proves nothing: callers
whose namespaces are unreadable are never a module, and host only by the rule below (fail closed otherwise).

A service that runs as its own unprivileged user (the packaged units) may not read the namespace links of another
user's process (the kernel asks for ptrace rights), nor pid 1's, and its own mount namespace is private (systemd's
ProtectSystem/PrivateTmp). There "host" is decided from what the kernel shows every reader: the pid namespace, from
`NSpid` in /proc/<pid>/status (one entry: the pid namespace of this /proc, the host's when this daemon's own entry
is one too), and no container's cgroup. What that cannot tell apart is a container sharing the host's pid namespace
whose cgroup is not its container's: only a privileged container can move its cgroup, and it is root on the host.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .cgroups import read_container_id
from .pin import ProcessGone, start_time

__all__ = ["KINDS", "Namespaces", "ReferenceProcess", "host_namespaces", "is_host_process", "namespaces_of",
           "pid_namespace_depth"]

# The namespaces compared. pid: a process in another pid namespace is contained; mnt: it sees other files.
KINDS = ("pid", "mnt")


@dataclass(frozen=True, slots=True)
class Namespaces:
    pid: str  # "pid:[4026531836]": kind and inode, unique while the namespace lives
    mnt: str

    def describe(self) -> str:
        return f"{self.pid} {self.mnt}"


def namespaces_of(pid: int) -> Namespaces | None:
    """The pid and mount namespaces of `pid`, or None when they cannot be read (gone, or not permitted)."""
    try:
        return Namespaces(*(os.readlink(f"/proc/{int(pid)}/ns/{kind}") for kind in KINDS))  # noqa: PTH115
    except OSError:
        return None


@functools.cache
def host_namespaces() -> Namespaces | None:
    """The host's namespaces: those of pid 1 as this daemon sees it, else this daemon's own.

    pid 1's first: a hardened systemd unit runs the daemon in a private mount namespace, while the host's shells
    and agents stay in pid 1's. Where pid 1 is not readable (a supervisor that is not dumpable), the daemon's own
    namespaces are the host's: it is started by the host, never from inside a module.
    """
    return namespaces_of(1) or namespaces_of(os.getpid())


def is_host_process(pid: int) -> bool:
    """True only when `pid` provably shares the host's pid and mount namespaces, or, where this daemon cannot read
    them (an unprivileged service), the host's pid namespace outside any container's cgroup."""
    host, mine = host_namespaces(), namespaces_of(pid)
    if host is not None and mine is not None:
        return mine == host
    if mine is None and os.geteuid() != 0 and namespaces_of(1) is None:
        # an unprivileged service: another user's links (and pid 1's) are not ours to read. Root reads a root
        # caller's links whatever its capabilities, so a root daemon never falls back to the weaker rule.
        return _host_by_pid_namespace(pid)
    return False


def _read_text(path: str) -> str:
    # not pathlib: Path interns every component, and a daemon meets every pid there is
    with open(path) as f:  # noqa: PTH123
        return f.read()


def pid_namespace_depth(pid: int | str) -> int | None:
    """How many pid namespaces `pid` is nested in, counted from this /proc's (1: in it), from the kernel's NSpid
    line; None when the process is gone or the line is missing."""
    try:
        status = _read_text(f"/proc/{pid}/status")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return len(line.split()) - 1
    return None


def _host_by_pid_namespace(pid: int) -> bool:
    if pid_namespace_depth("self") != 1:  # this daemon is not in the host's pid namespace: nothing is provable
        return False
    return pid_namespace_depth(pid) == 1 and read_container_id(pid) is None


@dataclass(frozen=True, slots=True)
class ReferenceProcess:
    """The process whose namespaces define a place (a container's init), named by pid and start time.

    Namespace numbers are inode numbers the kernel hands out again once a namespace is freed (a restarted container
    can get its predecessor's numbers), so they identify a namespace only while it lives. The reference's
    namespaces are therefore read fresh on every comparison and kept only if the reference is still the same
    process after the read (alive, so its namespaces were live when read).
    """

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> ReferenceProcess | None:
        """`pid` as it is now, or None when there is no such process."""
        if pid <= 0:
            return None
        try:
            return cls(pid, start_time(pid))
        except ProcessGone:
            return None

    def alive(self) -> bool:
        """Still the same process: the pid exists and has the start time it had when referenced."""
        try:
            return start_time(self.pid) == self.started
        except ProcessGone:
            return False

    def namespaces(self) -> Namespaces | None:
        """Its namespaces now, or None when it exited or its pid now names another process."""
        found = namespaces_of(self.pid)
        return found if found is not None and self.alive() else None
