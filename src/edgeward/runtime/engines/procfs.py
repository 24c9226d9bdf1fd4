"""Reading /proc for the process engine: who a process is, whose child it is, what it uses, and signalling it
without hitting a stranger that inherited a recycled pid.

A pid alone is not an identity: the kernel hands it out again once the process is reaped. Everywhere here a
process is named by (pid, start time in clock ticks since boot), which is unique over the whole boot.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ATTRIBUTION_DEPTH",
    "PAGE_SIZE",
    "TICKS_PER_SECOND",
    "ProcStat",
    "ancestors",
    "cgroup_of",
    "cgroup_v2_path",
    "descendants",
    "parse_stat",
    "read_stat",
    "send_signal",
]

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")
_MAX_DEPTH = 4096  # longer than any real ppid chain; guards against a loop made by concurrent pid reuse
# How far up a caller's ppid chain attribution looks for a module's main process, at accept and in the workload
# API's attestation alike: a module's callers sit a few levels below it. The caller picks its own depth, and each
# level is a /proc read on the event loop, so a deeper caller is placed in no module (fail closed) rather than
# walked (a 3000-deep chain of callers held every other caller up for hundreds of milliseconds).
ATTRIBUTION_DEPTH = 32


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the engine relies on."""

    pid: int
    comm: bytes
    state: str
    ppid: int
    pgrp: int
    session: int
    utime: int  # clock ticks
    stime: int
    start_time: int  # clock ticks since boot
    rss_pages: int


def parse_stat(raw: bytes) -> ProcStat:
    """Parse one /proc/<pid>/stat line.

    The command name sits in parentheses and may itself hold spaces, parentheses and newlines (a process picks
    its own name), so the pid is read before the first "(" and every other field after the last ")".
    Raises ValueError on anything that is not a stat line.
    """
    open_at = raw.find(b"(")
    close_at = raw.rfind(b")")
    if open_at <= 0 or close_at < open_at:
        raise ValueError("not a /proc/<pid>/stat line: no (comm)")
    pid = int(raw[:open_at].strip())
    rest = raw[close_at + 1:].split()
    if len(rest) < 22:
        raise ValueError(f"not a /proc/<pid>/stat line: {len(rest)} fields after comm")
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return ProcStat(
        pid=pid,
        comm=raw[open_at + 1:close_at],
        state=rest[0].decode("ascii", "replace"),
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        start_time=int(rest[19]),
        rss_pages=int(rest[21]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """None when the process is gone (or was never there): callers treat both the same."""
    try:
        # a plain string, not pathlib: Path interns every component, and scans of /proc met every pid there is
        with open(f"{_PROC}/{int(pid)}/stat", "rb") as f:  # noqa: PTH123
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return parse_stat(raw)
    except ValueError:
        return None


def ancestors(pid: int, limit: int = _MAX_DEPTH) -> Iterable[ProcStat]:
    """`pid` itself, then its parent, grandparent... up to (not including) pid 0; at most `limit` of them."""
    seen: set[int] = set()
    current = pid
    for _ in range(limit):
        if current <= 0 or current in seen:
            return
        seen.add(current)
        st = read_stat(current)
        if st is None:
            return
        yield st
        current = st.ppid


def cgroup_of(pid: int) -> str | None:
    """The process's cgroup v2 path (its ``0::`` line, as this process's cgroup namespace sees it), in one read;
    None when it is gone or has none (a v1-only host)."""
    try:
        with open(f"{_PROC}/{int(pid)}/cgroup", "rb") as f:  # noqa: PTH123  (not pathlib, as in read_stat)
            raw = f.read(65536)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return cgroup_v2_path(raw.decode("utf-8", "surrogateescape"))


def cgroup_v2_path(text: str) -> str | None:
    """The cgroup v2 path in the text of a /proc/<pid>/cgroup file (its ``0::`` line); None without one."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _all_stats() -> list[ProcStat]:
    out: list[ProcStat] = []
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            st = read_stat(int(entry.name))
            if st is not None:
                out.append(st)
    return out


def descendants(root: ProcStat) -> list[ProcStat]:
    """Every process whose ppid chain leads to `root` (root excluded), parents before children.

    A child is only counted if it started after its parent: a pid recycled while we scan cannot graft a stranger's
    subtree onto ours.
    """
    children: dict[int, list[ProcStat]] = {}
    for st in _all_stats():
        children.setdefault(st.ppid, []).append(st)
    out: list[ProcStat] = []
    frontier = [root]
    while frontier and len(out) < 65536:
        parent = frontier.pop()
        for child in children.get(parent.pid, []):
            if child.start_time >= parent.start_time and child.pid != root.pid:
                out.append(child)
                frontier.append(child)
    return out


def send_signal(pid: int, start_time: int, sig: signal.Signals) -> bool:
    """Signal the process (pid, start_time), and only that one; False if it is gone or the pid now names another.

    A pidfd is taken first and the start time checked after: from then on the pidfd refers to that process even
    if it exits and the pid is reused, so there is no window in which the signal could reach a stranger.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        st = read_stat(pid)
        if st is None or st.start_time != start_time:
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except (ProcessLookupError, OSError):
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
