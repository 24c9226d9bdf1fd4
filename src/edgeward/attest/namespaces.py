"""Which namespaces a process lives in, from /proc/<pid>/ns: the fact a container cannot forge from inside.

A cgroup path is writable by anyone holding CAP_SYS_ADMIN or a writable cgroupfs bind, so it can only say which
container a process *claims* to be in. Its pid and mount namespaces are fixed by the kernel when the process is
created or enters them (setns needs the target's namespace file, which a contained process does not hold), so
Edgeward treats them as the proof: a caller is a module only when its namespaces are its container's init
process's, and "host" only when they are the host's. A namespace that cannot be read proves nothing: callers
whose namespaces are unreadable are never host and never a module (fail closed).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KINDS", "Namespaces", "host_namespaces", "is_host_process", "namespaces_of"]

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
        return Namespaces(*(str(Path(f"/proc/{pid}/ns/{kind}").readlink()) for kind in KINDS))
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
    """True only when `pid` provably shares the host's pid and mount namespaces."""
    host = host_namespaces()
    if host is None:
        return False
    mine = namespaces_of(pid)
    return mine is not None and mine == host
