"""One cgroup (v2) per host-process module.

A process group and a process tree both leak: a module that calls ``setsid`` and forks twice leaves a process that
belongs to neither, reparented to init, running as the module's uid with nobody supervising it. The kernel keeps
every process in the cgroup its parent was in, whatever it does, so a module started inside its own cgroup can be
stopped whole (``cgroup.kill``), and a daemon that comes back after a crash finds what its last run left there.

The module cgroups live under the daemon's own cgroup (systemd: the unit's, which ``Delegate=yes`` hands to it), in
a directory named for the engine's state directory, so two daemons on one host never touch each other's modules.
Only membership is used: no controller is enabled, so the daemon may stay in the cgroup above them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
from pathlib import Path

from .procfs import cgroup_of, cgroup_v2_path

__all__ = ["ModuleCgroups", "cgroup2_mount", "own_cgroup"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.01  # cgroup.events wakes pollers with POLLPRI, which asyncio's readers do not wait for


def cgroup2_mount(mountinfo: str | None = None) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` on a unified host, ``.../unified`` on a hybrid
    one), from /proc/self/mountinfo; None without one."""
    try:
        text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        # id parent major:minor root mount-point options [optional fields...] - fstype source super-options
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(fields[4].replace("\\040", " "))
    return None


def own_cgroup(text: str | None = None) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup, or of ``text``); None on a v1-only
    host."""
    return cgroup_v2_path(text) if text is not None else cgroup_of(os.getpid())


class ModuleCgroups:
    """The module cgroups of one engine: made at a module's start, killed with it, removed with it."""

    def __init__(self, base: Path, relative: str | None = None) -> None:
        self.base = base
        # The same directory as /proc/<pid>/cgroup names it ("/<own cgroup>/edgeward-modules-<tag>"); None: unknown,
        # and no process is placed by its cgroup.
        self.relative = relative.rstrip("/") if relative is not None else None

    @classmethod
    def for_state(cls, state_dir: Path) -> ModuleCgroups | None:
        """The cgroups for the engine over ``state_dir``; None (with the reason logged) where this process cannot
        make cgroups: no cgroup v2, not root, a read-only /sys/fs/cgroup (a container)."""
        mount, own = cgroup2_mount(), own_cgroup()
        if mount is None or own is None:
            log.warning("no cgroup v2 hierarchy: a process a host module double-forks out of its tree survives the "
                        "module's stop and removal")
            return None
        tag = hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()[:12]
        base = mount / own.lstrip("/") / f"edgeward-modules-{tag}"
        try:
            base.mkdir(mode=0o755, exist_ok=True)  # made here to learn whether it can be; kept only while in use
            if not any(p.is_dir() for p in base.iterdir()):
                base.rmdir()
        except OSError as e:
            log.warning("cannot make the host modules' cgroups under %s (%s): a process a host module "
                        "double-forks out of its tree survives the module's stop and removal", base.parent,
                        e.strerror or e)
            return None
        return cls(base, "/" + "/".join(p for p in (own.strip("/"), base.name) if p))

    def path(self, name: str) -> Path:
        return self.base / name  # module names are [A-Za-z0-9][A-Za-z0-9_.-]* without "..": one directory

    def module_of(self, cgroup: str | None) -> str | None:
        """The module whose cgroup ``cgroup`` (a process's, from /proc/<pid>/cgroup) is, or is under; None for any
        other. The kernel keeps a process in its parent's cgroup, and only root may move one (these directories
        are root's, 0755), so every process a module started, however deep or daemonised, is in its cgroup."""
        if cgroup is None or self.relative is None:
            return None
        prefix = self.relative + "/"
        if not cgroup.startswith(prefix):
            return None
        name = cgroup[len(prefix):].split("/", 1)[0]
        return name or None

    def names(self) -> list[str]:
        """The modules that have a cgroup now."""
        with contextlib.suppress(OSError):
            return sorted(p.name for p in self.base.iterdir() if p.is_dir())
        return []

    def enter(self, name: str, pid: int) -> None:
        """Move ``pid`` (a process that has not run the module's code yet) into the module's cgroup."""
        directory = self.path(name)
        self.base.mkdir(mode=0o755, exist_ok=True)
        directory.mkdir(mode=0o755, exist_ok=True)
        _write(directory / "cgroup.procs", str(pid))

    def populated(self, name: str) -> bool:
        try:
            events = (self.path(name) / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events.splitlines()

    def kill(self, name: str) -> None:
        """SIGKILL to every process in the module's cgroup, those it forked meanwhile included."""
        directory = self.path(name)
        try:
            _write(directory / "cgroup.kill", "1")  # Linux 5.14+: atomic, forks included
            return
        except FileNotFoundError:
            if not directory.exists():
                return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        # Older kernels: signal each member until none is left (a member forking meanwhile shows up next pass).
        for _ in range(100):
            try:
                pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
            except FileNotFoundError:
                return
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a member's pid cannot be reused while it is listed

    async def kill_and_wait(self, name: str, timeout: float) -> bool:
        """Kill the module's cgroup and wait until it is empty; False if something was still in it at ``timeout``
        (a process stuck in uninterruptible sleep)."""
        if not self.populated(name):
            return True
        self.kill(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.populated(name):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True

    def remove(self, name: str) -> None:
        """Remove the module's (empty) cgroup; one still in use stays, and says so."""
        try:
            self.path(name).rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("module %s: its cgroup %s cannot be removed: %s", name, self.path(name), e.strerror or e)

    def remove_base(self) -> None:
        """Remove the engine's directory if no module cgroup is left in it (the engine is shutting down)."""
        with contextlib.suppress(OSError):
            self.base.rmdir()


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
