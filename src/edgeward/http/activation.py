"""systemd socket activation (LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES), as aziot's units use it."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["SD_LISTEN_FDS_START", "activated_sockets"]

SD_LISTEN_FDS_START = 3


def activated_sockets(environ: Mapping[str, str] | None = None) -> dict[str, socket.socket]:
    """Sockets passed by the service manager, by name (unnamed ones are called ``fd<N>``).

    Returns an empty dict when this process was not socket-activated (variables absent or meant for another pid).
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    found: dict[str, socket.socket] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        found[name] = sock
    return found
