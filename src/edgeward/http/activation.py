"""systemd socket activation (LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES), as aziot's units use it."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ..config.problems import ConfigError
from ..digits import is_number

__all__ = ["SD_LISTEN_FDS_START", "ActivationError", "activated_sockets", "socket_for_fd_uri"]

SD_LISTEN_FDS_START = 3

# Taken once per process: a socket object owns its fd, so building a second one for the same fd (and dropping it)
# would close a listening socket systemd passed us.
_TAKEN: dict[int, dict[str, socket.socket]] = {}


class ActivationError(ConfigError):
    """An ``fd://`` URI names a socket systemd did not pass; the message names the setting and what was passed (a
    configuration error: the daemon exits with its code, 3)."""

    def __init__(self, message: str) -> None:
        super().__init__([message], "socket activation")


def activated_sockets(environ: Mapping[str, str] | None = None) -> dict[str, socket.socket]:
    """Sockets passed by the service manager, by name (unnamed ones are called ``fd<N>``).

    Returns an empty dict when this process was not socket-activated (variables absent or meant for another pid).
    The same objects are returned on every call for the process's own environment.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return {}
    if environ is None and os.getpid() in _TAKEN:
        return _TAKEN[os.getpid()]
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
    if environ is None:
        _TAKEN[os.getpid()] = found
    return found


def socket_for_fd_uri(uri: str, setting: str, environ: Mapping[str, str] | None = None) -> socket.socket:
    """The passed socket an ``fd://<name>`` or ``fd://<number>`` URI names, as aziot's http-common reads it: a
    number is an fd (3 is the first passed), anything else a name in LISTEN_FDNAMES."""
    target = uri.removeprefix("fd://").rstrip("/")
    passed = activated_sockets(environ)
    if is_number(target):
        for sock in passed.values():
            if sock.fileno() == int(target):
                return sock
    elif target in passed:
        return passed[target]
    have = ", ".join(f"{n} (fd {s.fileno()})" for n, s in passed.items()) or "none (not socket-activated)"
    raise ActivationError(f"{setting} = {uri!r}: systemd passed no such socket; passed: {have}")
