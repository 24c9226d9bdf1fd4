"""How the event loop learns that a child process exited.

Python 3.11's default, ThreadedChildWatcher, parks one thread in waitpid() for every child: a device running 50
host-process modules carries 50 threads (about 17 KB of memory each, and 50 more for the scheduler to walk) that do
nothing. A pidfd (Linux 5.3+) turns each child's exit into a readable descriptor the event loop already polls, with no
thread at all; Python 3.12 made that its default. On 3.11, where the package's interpreter is, it is set here."""

from __future__ import annotations

import asyncio
import os
import sys

__all__ = ["use_pidfd_child_watcher"]


def use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> bool:
    """Watch this loop's children through pidfds when the kernel and Python allow it; True if it does now. The
    watcher is a process-wide global of asyncio bound to one loop: call it only where the process is the daemon's
    (cli/daemon_cmds.py), from its running loop, before the first subprocess. On Python 3.12+ nothing is done
    (pidfds are the default there)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:  # a kernel before 5.3, or a seccomp profile that refuses the call: keep the threaded watcher
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    watcher = asyncio.PidfdChildWatcher()
    asyncio.set_child_watcher(watcher)
    watcher.attach_loop(loop)
    return True
