"""Pinning the process at the other end of a connection, so a pid that is recycled while we work on a request
cannot borrow the first owner's identity."""

from __future__ import annotations

import contextlib
import os
import select
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PinnedProcess", "ProcessGone", "parse_start_time", "pin", "start_time"]


class ProcessGone(Exception):
    pass


def parse_start_time(stat: bytes) -> int:
    """Field 22 of a /proc/<pid>/stat line (start time in clock ticks since boot).

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its last ")".
    """
    rest = stat[stat.rindex(b")") + 2:].split()
    return int(rest[19])  # fields 3.. after the name; field 22 is index 19 here


def start_time(pid: int) -> int:
    """With the pid, the start time names one process over the whole boot."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} is gone") from None
    return parse_start_time(raw)


@dataclass
class PinnedProcess:
    pid: int
    started: int
    pidfd: int | None = field(default=None, repr=False)

    def alive(self) -> bool:
        """Still the same process. A pidfd refers to one process, never to a later owner of its pid, so while it
        has not signalled exit nothing more is needed; without one, the pid's start time must be unchanged."""
        if self.pidfd is not None:
            ready, _, _ = select.select([self.pidfd], [], [], 0)
            return not ready
        try:
            return start_time(self.pid) == self.started
        except ProcessGone:
            return False

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def __del__(self) -> None:
        self.close()


def pin(pid: int) -> PinnedProcess:
    """Pin `pid` now: a pidfd where the kernel has them, plus the start time (checked both ways)."""
    if pid <= 0:
        raise ProcessGone("the peer has no process id (not a local Unix socket peer)")
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        started = start_time(pid)
    except ProcessGone:
        if pidfd is not None:
            os.close(pidfd)
        raise
    return PinnedProcess(pid, started, pidfd)
