"""One workload socket per module, each in a directory of its own.

A container gets only its own directory mounted, so it cannot even name another module's socket; the socket a
request arrived on is also one more fact attestation checks (it must be the caller's own).

A directory is named after its module, unless the socket's path would then pass the kernel's limit for a Unix socket
address (108 bytes with its NUL; module names run to 128 characters): then it is "~" and a hash of the name, which no
module name can look like (names start with a letter or digit). The socket's file name is `connect.workload_uri`'s
for container modules (the directory is mounted as it is), `workload.sock` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from aiohttp import web

from ..http.server import UnsafeSocketPath, bind_unix
from .engine import WORKLOAD_SOCKET_NAME

__all__ = ["MAX_SOCKET_PATH", "WorkloadSockets"]

MAX_SOCKET_PATH = 107  # bytes of sun_path before its terminating NUL

log = logging.getLogger(__name__)


class WorkloadSockets:
    def __init__(self, root: Path, runner: web.AppRunner | None = None,
                 socket_name: str = WORKLOAD_SOCKET_NAME) -> None:
        self.root = root
        self.socket_name = socket_name  # the file name connect.workload_uri gives (mounted as the directory is)
        self.runner = runner  # the workload API's runner; None while only directories are wanted
        self._sites: dict[str, web.SockSite] = {}
        self._hashed: dict[str, str] = {}  # directory name -> module name, for directories named by a hash
        # Socket name -> module, for the socket names seen: looked up on every workload request, and the names are
        # this object's own listening sockets (the kernel reports the bound path), so the table stays small.
        self._arrivals: dict[str, str | None] = {}
        # Module -> why its socket could not be bound at the last try (the module runs without the workload API).
        self.unavailable: dict[str, str] = {}
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # noqa: S103 -- modules of any uid must reach their own directory

    def directory(self, name: str) -> Path:
        plain = self.root / name
        if len(bytes(plain / self.socket_name)) <= MAX_SOCKET_PATH:
            return plain
        hashed = "~" + hashlib.sha256(name.encode()).hexdigest()[:32]
        self._hashed[hashed] = name
        return self.root / hashed

    def socket_path(self, name: str) -> Path:
        return self.directory(name) / self.socket_name

    def module_of(self, sockname: str | bytes | None) -> str | None:
        """The module whose socket a connection arrived on (from the server side's socket name)."""
        if isinstance(sockname, bytes):
            sockname = sockname.decode(errors="replace")
        if not sockname:
            return None
        try:
            return self._arrivals[sockname]
        except KeyError:
            pass
        path = Path(sockname)
        if path.name != self.socket_name or path.parent.parent != self.root:
            return None
        directory = path.parent.name
        if directory.startswith("~"):
            if directory not in self._hashed:
                return directory  # a name no module has (refused); not remembered, a module may yet open it
            module = self._hashed[directory]
        else:
            module = directory
        if len(self._arrivals) >= 4096:
            self._arrivals.clear()
        self._arrivals[sockname] = module
        return module

    async def open(self, name: str) -> Path:
        """Create the module's directory and, when serving, its socket (world-connectable: attestation, not file
        modes, decides who may do what — a module may run as any uid).

        A socket that cannot be bound fails this module's socket only, logged and kept in ``unavailable`` until
        an open binds it (the next start): one module must not keep the daemon, and with it keys, certs, identities
        and every other module, down. What is at the path is left there: a container gets its directory read-only,
        so a non-socket there was put by root on the host or by a container created before that, and either
        deserves a look rather than a silent removal (removing the module clears its directory)."""
        directory = self.directory(name)
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103 -- see above
        if self.runner is not None and name not in self._sites:
            path = self.socket_path(name)
            try:
                # World-connectable; a burst of connecting modules gets a deep backlog (the kernel caps it).
                sock = bind_unix(path, 0o666, backlog=4096)
            except (UnsafeSocketPath, OSError) as e:
                self.unavailable[name] = str(e)
                log.error("workload socket of module %s cannot be opened at %s: %s; the module runs without the "
                          "workload API until what is there is removed and Edgeward restarts (or the module is "
                          "removed)", name, path, e)
                return directory
            site = web.SockSite(self.runner, sock)
            await site.start()
            self._sites[name] = site
            self.unavailable.pop(name, None)
            log.info("workload socket for %s at %s", name, path)
        return directory

    async def close(self, name: str) -> None:
        self.unavailable.pop(name, None)
        site = self._sites.pop(name, None)
        if site is not None:
            await site.stop()
        path = self.socket_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a directory planted there (by a container with a writable mount): not ours to empty
            log.warning("workload socket of module %s: %s could not be removed (%s); remove it by hand", name, path, e)
        with contextlib.suppress(FileNotFoundError, OSError):
            self.directory(name).rmdir()  # kept while it holds another socket (the agent's management socket)

    async def close_all(self) -> None:
        for name in list(self._sites):
            site = self._sites.pop(name)
            await site.stop()
