"""The daemon's file descriptor limit: raised to the hard limit at start, and read by whatever sizes its caps by it.

Why raise it: systemd (and most shells) give a service a soft RLIMIT_NOFILE of 1024 for the sake of old programs
that use select(); Edgeward uses epoll and poll only, and its hard limit is usually far higher (systemd: 524288).
Modules inherit the raised limit; a select() program among them is no worse off (it fails past 1024 descriptors
either way: with EMFILE before, with select() now).
With 1024, a flood of connections could take every descriptor the integrity monitor and the audit log need (break-
this review, A2). The connection caps of the listeners are computed from the limit in force (see
:func:`fd_limit`), so raising it first also raises them, each still leaving most descriptors to the rest.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["ENOUGH", "UNLIMITED", "fd_limit", "raise_fd_limit"]

log = logging.getLogger(__name__)
UNLIMITED = 1 << 20  # what an infinite limit is taken for: Linux's default fs.nr_open, the most one process may open
# As far as it is raised: far over every cap of the daemon together (8192 connections for the process's listeners,
# 256 for the Keylime agent's), and small enough that a module (which inherits it) that closes every descriptor up
# to its limit when it starts, as some daemons do, is not held up by a million close() calls.
ENOUGH = 65536


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE in force: the descriptors this process may hold."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, or to `ENOUGH` if that is less; the soft limit in force
    afterwards. A limit that cannot be raised is left as it is, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ENOUGH if hard == resource.RLIM_INFINITY else min(hard, ENOUGH)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as e:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, want, e)
    return fd_limit()
