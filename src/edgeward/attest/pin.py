"""Pinning the process at the other end of a connection, so a pid that is recycled while we work on a request
cannot borrow the first owner's identity."""

from __future__ import annotations

import contextlib
import os
import select
import weakref
from dataclasses import dataclass, field

__all__ = ["PinnedProcess", "ProcessGone", "ProcessPins", "parse_start_time", "pin", "start_time"]


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
        with open(f"/proc/{int(pid)}/stat", "rb") as f:  # noqa: PTH123  (not pathlib: it interns every pid it meets)
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} is gone") from None
    return parse_start_time(raw)


@dataclass
class PinnedProcess:
    pid: int
    started: int
    pidfd: int | None = field(default=None, repr=False)
    _poller: select.poll | None = field(default=None, init=False, repr=False, compare=False)

    def alive(self) -> bool:
        """Still the same process. A pidfd refers to one process, never to a later owner of its pid, so while it
        has not signalled exit nothing more is needed; without one, the pid's start time must be unchanged."""
        if self.pidfd is not None:
            # poll, not select: select cannot watch descriptors numbered 1024 and up, and a busy daemon has them.
            # One poller per pin: asked on every request of the connection, made once.
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self.pidfd, select.POLLIN)
            return not self._poller.poll(0)
        try:
            return start_time(self.pid) == self.started
        except ProcessGone:
            return False

    def close(self) -> None:
        if self.pidfd is not None:
            self._poller = None
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def __del__(self) -> None:
        self.close()


class ProcessPins:
    """Pinned processes shared by every connection of the same process, so descriptors are bounded by the number
    of open connections (which the connection caps bound), not of callers that ever called.

    Held weakly: a pin lives as long as a connection's attestation holds it, and its pidfd is closed when the last
    one goes (the connection closed). A process that called once and stays alive then costs nothing (3000 idle
    callers held 3000 descriptors), and its next connection pins it again, checked as the first one was. Pinning
    never looks at the other pins: O(1) per connection, however many there are."""

    def __init__(self) -> None:
        self._pins: weakref.WeakValueDictionary[tuple[int, int], PinnedProcess] = weakref.WeakValueDictionary()

    def pin(self, pid: int, *, not_after: int | None = None, uid: int | None = None,
            connector: int | None = None) -> PinnedProcess:
        """Pin `pid`, the connection's peer (SO_PEERCRED). `connector`: a pidfd of the process that opened the
        connection (`http.peercred.connector_pidfd`; this takes it over, closed on refusal too): the pin holds it,
        so no later owner of the pid is ever taken for the connector. Without one (a kernel older than 6.5), the
        process that holds the pid now is checked instead: `not_after`, when its connection was accepted (boot
        ticks) — a process that started later holds a recycled pid, not the connector's; `uid`, the connector's
        uid — a process running as another uid is not the connector either. Each refuses with ProcessGone."""
        fresh = pin(pid, connector)
        if connector is None:
            try:
                _check_connector(fresh, not_after, uid)
            except ProcessGone:
                fresh.close()
                raise
        known = self._pins.get((pid, fresh.started))
        if known is not None and known.alive():
            fresh.close()
            return known
        self._pins[(pid, fresh.started)] = fresh
        return fresh

    def __len__(self) -> int:
        return len(self._pins)

    def close(self) -> None:
        for pinned in list(self._pins.values()):
            pinned.close()
        self._pins.clear()


def pin(pid: int, connector: int | None = None) -> PinnedProcess:
    """Pin `pid`: with `connector`, the pidfd of the process that opened the connection (taken over); else a pidfd
    of whoever holds `pid` now, where the kernel has them. Plus the start time (checked both ways)."""
    pidfd = connector
    if pid <= 0:
        _close(pidfd)
        raise ProcessGone("the peer has no process id (not a local Unix socket peer)")
    if pidfd is None:
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(pid)
    try:
        started = start_time(pid)
    except ProcessGone:
        _close(pidfd)
        raise
    pinned = PinnedProcess(pid, started, pidfd)
    # The start time was read by pid: it is the connector's only if the connector is still alive after the read
    # (a pid is not reused before its process has exited).
    if connector is not None and not pinned.alive():
        pinned.close()
        raise ProcessGone(f"process {pid}, which opened the connection, has exited (its pid was reused or is free)")
    return pinned


def _close(pidfd: int | None) -> None:
    if pidfd is not None:
        with contextlib.suppress(OSError):
            os.close(pidfd)


def _uids(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{int(pid)}/status") as f:  # noqa: PTH123
            status = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} is gone") from None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return tuple(int(v) for v in line.split()[1:])
    return ()


def _check_connector(pinned: PinnedProcess, not_after: int | None, uid: int | None) -> None:
    if not_after is not None and pinned.started > not_after:
        raise ProcessGone(f"process {pinned.pid} started after the connection was opened: the process that opened "
                          f"it is gone and its pid was reused")
    if uid is not None and uid >= 0 and uid not in _uids(pinned.pid):
        raise ProcessGone(f"process {pinned.pid} does not run as uid {uid}, which opened the connection: its pid "
                          f"was reused")
