"""A connection is pinned to the process that called connect(), not to whoever holds its pid when the daemon gets
round to it (review brk14a, F3).

The accept time only bounds when the connector started: a process that connects, hands the connection to another
process of its uid and exits while the daemon is slow to accept leaves a pid that a later process can take before
the accept, and that process passed for the connector. Linux >= 6.5 names the connector itself (SO_PEERPIDFD);
older kernels (ENOPROTOOPT) keep the accept-time check.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from edgeward.attest.pin import ProcessGone, ProcessPins
from edgeward.attest.pipeline import AttestationRefused, Attestor
from edgeward.http.peercred import Caller, ConnectorGone, boot_ticks, connector_pidfd
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.registry import Registry
from tests.fixtures.processes import take_pid


class _Transport:
    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


class _Request:
    """What connector_pidfd reads of a request: its transport's socket."""

    def __init__(self, sock: Any) -> None:
        self.transport = _Transport(sock)


def _request(sock: Any) -> web.Request:
    return cast(web.Request, _Request(sock))


class _Refusing:
    """A Unix socket on a kernel that answers SO_PEERPIDFD with `code`."""

    family = socket.AF_UNIX

    def __init__(self, code: int) -> None:
        self.code = code

    def getsockopt(self, *args: int) -> int:
        raise OSError(self.code, os.strerror(self.code))


def _fdinfo_pid(pidfd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{pidfd}").read_text().splitlines():
        if line.startswith("Pid:"):
            return int(line.split()[1])
    raise AssertionError("no Pid in the pidfd's fdinfo")


def _supported() -> bool:
    a, b = socket.socketpair()
    try:
        fd = connector_pidfd(_request(a))
    finally:
        a.close()
        b.close()
    if fd is None:
        return False
    os.close(fd)
    return True


needs_peer_pidfd = pytest.mark.skipif(not _supported(), reason="the kernel has no SO_PEERPIDFD (Linux < 6.5)")


@needs_peer_pidfd
def test_the_connector_pidfd_names_the_process_that_connected() -> None:
    a, b = socket.socketpair()
    try:
        fd = connector_pidfd(_request(a))
        assert fd is not None
        try:
            assert _fdinfo_pid(fd) == os.getpid()
            assert not os.get_inheritable(fd)  # no module started later inherits it
        finally:
            os.close(fd)
    finally:
        a.close()
        b.close()


def test_a_kernel_without_so_peerpidfd_falls_back_and_a_gone_connector_is_refused() -> None:
    assert connector_pidfd(_request(_Refusing(errno.ENOPROTOOPT))) is None
    assert connector_pidfd(_request(_Refusing(errno.ENODATA))) is None
    for code in (errno.ESRCH, errno.EINVAL):  # 6.5-6.15 say so for a connector that has been reaped
        with pytest.raises(ConnectorGone):
            connector_pidfd(_request(_Refusing(code)))
    assert connector_pidfd(_request(object())) is None  # no socket (an in-process call)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(8)
    try:
        yield server
    finally:
        server.close()


def _connect_hand_over_and_exit(path: str) -> tuple[socket.socket, int]:
    """A child connects, hands the connection to this process and exits (reaped): (the connection, its pid)."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)
            socket.send_fds(a, [b"x"], [c.fileno()])
        finally:
            os._exit(0)
    try:
        _, fds, _, _ = socket.recv_fds(b, 1, 1)
        os.waitpid(pid, 0)
        return socket.socket(fileno=fds[0]), pid
    finally:
        a.close()
        b.close()


def _recycled_connector(listening: socket.socket) -> tuple[socket.socket, int, subprocess.Popen[bytes]]:
    """A connection handed over by a connector that has exited, whose pid another process holds now, still in
    the listen queue: the handed-over end, the connector's pid and the pid's new holder (skips the test when other
    forks keep taking the pid)."""
    for _ in range(20):
        handed, connector = _connect_hand_over_and_exit(listening.getsockname())
        holder = take_pid(connector, tries=1)
        if holder is not None:
            return handed, connector, holder
        handed.close()  # another fork took the pid first: try again with a new connector
        listening.accept()[0].close()
    pytest.skip("could not recycle the pid on this busy machine")


@needs_peer_pidfd
@pytest.mark.skipif(os.geteuid() != 0, reason="recycling a pid on purpose needs root (ns_last_pid)")
def test_a_pid_taken_before_the_accept_is_not_the_connector(listening: socket.socket) -> None:
    """The scenario: the connector exits while the connection waits in the listen queue, another process of its
    uid takes the pid, then the daemon accepts. The accept-time check alone takes the new owner for the caller (it
    started before the accept); the connector's pidfd does not."""
    handed, connector, holder = _recycled_connector(listening)
    pins = ProcessPins()
    kept = [handed]
    try:
        accepted, _ = listening.accept()  # the daemon's late accept
        kept.append(accepted)
        not_after = boot_ticks()
        # What the kernel said at connect time (SO_PEERCRED keeps the connector's pid: the holder's now).
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED) == connector
        # The accept-time check alone (older kernels) is fooled: the holder started before the accept.
        fooled = pins.pin(connector, not_after=not_after, uid=0)
        assert fooled.alive()
        fooled.close()
        with pytest.raises(ProcessGone, match="opened the connection, has exited"):
            pins.pin(connector, not_after=not_after, uid=0, connector=connector_pidfd(_request(accepted)))
    finally:
        holder.kill()
        holder.wait()
        for s in kept:
            s.close()
        pins.close()


@needs_peer_pidfd
def test_a_live_connector_is_pinned_by_its_own_pidfd(listening: socket.socket) -> None:
    proc = subprocess.Popen(["python3", "-c", "import socket, sys, time\n"
                             "c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); print(1, flush=True)\n"
                             "time.sleep(30)", listening.getsockname()], stdout=subprocess.PIPE)
    pins = ProcessPins()
    try:
        assert proc.stdout is not None and proc.stdout.readline()
        accepted, _ = listening.accept()
        try:
            pinned = pins.pin(proc.pid, uid=os.getuid(), connector=connector_pidfd(_request(accepted)))
            assert pinned.pidfd is not None and _fdinfo_pid(pinned.pidfd) == proc.pid and pinned.alive()
            proc.kill()
            proc.wait()
            assert not pinned.alive()
        finally:
            accepted.close()
    finally:
        proc.kill()
        proc.wait()
        pins.close()


@needs_peer_pidfd
@pytest.mark.skipif(os.geteuid() != 0, reason="recycling a pid on purpose needs root (ns_last_pid)")
@pytest.mark.asyncio(loop_scope="session")
async def test_the_module_sockets_attestation_refuses_a_pid_taken_before_the_accept(
        listening: socket.socket, tmp_path: Path) -> None:
    """The workload and management sockets' attestation (attest/pipeline.py) pins the same way: refused at
    peer_credentials, whoever holds the pid now."""
    handed, connector, holder = _recycled_connector(listening)
    engine = ProcessEngine(tmp_path / "state", stop_timeout=2.0, allow_elevated=True, cgroups=False)
    registry = Registry(tmp_path / "home")
    attestor = Attestor(engine, registry)
    accepted, _ = listening.accept()
    try:
        with pytest.raises(AttestationRefused, match=r"peer_credentials.*opened the connection, has exited"):
            await attestor._run(Caller(connector, 0, 0), boot_ticks(), connector_pidfd(_request(accepted)))
        # Without the connector's pidfd (a kernel older than 6.5), the holder passes for it: root on the host.
        got = await attestor._run(Caller(connector, 0, 0), boot_ticks())
        assert got.registration is None and got.caller.pid == connector
    finally:
        holder.kill()
        holder.wait()
        handed.close()
        accepted.close()
        attestor.pins.close()
        await engine.close()
        registry.close()
