"""Connection admission under the session-12 availability attacks, on a real `edgeward run` over its real sockets:
a local user churning connections on a module's socket (c08), many uids of one user namespace filling the
process's connections (c05), and request headers that never end (c09)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.fixtures.modules import logs_until
from tests.fixtures.peers import NOBODY
from tests.integration.test_fairness import SIGNER, _ask, edgeward

pytestmark = pytest.mark.asyncio(loop_scope="session")

MGMT_LIST = b"GET /modules?api-version=2020-07-07 HTTP/1.1\r\nHost: mgmt\r\n\r\n"

# A local user's connect/close loop, as fast as it goes, for SECONDS: nothing is ever sent or held.
CHURN = textwrap.dedent("""
    import socket, sys, time
    end = time.monotonic() + float(sys.argv[2]); n = 0
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX); s.setblocking(False)
        try:
            s.connect(sys.argv[1]); n += 1
        except OSError:
            pass
        s.close()
    print(n, flush=True)
""")


def _as_local_user(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                             *args], stdout=subprocess.PIPE, text=True)


async def _signs(daemon: object, name: str, go: Path) -> dict[str, list[object]]:
    logs = await logs_until(daemon.mgmt, name, b"SIGNS ", 120)  # type: ignore[attr-defined]
    result: dict[str, list[object]] = json.loads(next(x for x in logs.splitlines() if x.startswith(b"SIGNS "))[6:])
    return result


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connects(path: str, seconds: float) -> tuple[int, int]:
    """Connects (and closes) every 10 ms for ``seconds``, each with a timeout as the SDKs' clients have (EAGAIN at
    once when the listen queue is full): how many succeeded, how many failed."""
    ok = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(2)
        try:
            conn.connect(path)
            ok += 1
        except OSError:
            failed += 1
        finally:
            conn.close()
        time.sleep(0.01)
    return ok, failed


async def test_a_local_users_connect_churn_costs_little_and_leaves_a_module_its_socket(public_dir: Path) -> None:
    """c08: before, every connection of a local user's connect/close loop on a module's 0666 socket cost the daemon
    its attestation and aiohttp's set-up (200 us and more of CPU), so the listen queue stayed full of the churner's
    connections and most connects of the module's own got EAGAIN (14% got through here). Past its budget a uid's
    connections are closed at accept: a few microseconds each, so the daemon drains the queue about as fast as one
    process fills it."""
    go = public_dir / "go"
    async with edgeward(public_dir) as daemon:
        churner: subprocess.Popen[str] | None = None
        try:
            await daemon.start_module("victim", SIGNER, {"GO": str(go), "SIGNS": "20"}, b"WAITING")
            target = str(daemon.workload_socket("victim"))
            loop = asyncio.get_running_loop()
            cpu = _cpu_seconds(daemon.pid)
            churner = _as_local_user("-c", CHURN, target, "10")
            await asyncio.sleep(1.5)  # the churn is under way, and past its budget
            ok, failed = await loop.run_in_executor(None, _connects, target, 6)
            churned = int(churner.communicate(timeout=30)[0])
            cpu = _cpu_seconds(daemon.pid) - cpu
            print(json.dumps({"connects_ok": ok, "failed": failed, "churned": churned,
                              "daemon_cpu_us_per_churned": round(cpu / churned * 1e6, 1)}))
            assert cpu / churned < 60e-6, f"{cpu:.1f} s of the daemon's CPU for {churned} churned connections"
            # Before: 8 of 585 (1.4%). After: 17-40% on the shared 2-core machine, by its load: the floor is low
            # enough for a loaded CI run and far above what got through before.
            assert ok >= 0.08 * (ok + failed), f"only {ok} of {ok + failed} connects got through the churn"
            go.touch()  # and once it stops, the module signs on its own socket as before
            signs = await _signs(daemon, "victim", go)
            assert signs["statuses"] == [200] * 20, signs["statuses"]
        finally:
            go.touch()
            if churner is not None:
                churner.kill()
                churner.wait()


# Root of a new user namespace that maps IDS uids from FIRST on (as `unshare --user --map-auto` does for a user
# with a subordinate range): one connection per uid to SOCK, held until stdin closes.
MANY_UIDS = textwrap.dedent("""
    import ctypes, os, socket, sys
    first, ids, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), "unshare")
    print("UNSHARED", flush=True)
    sys.stdin.readline()  # the parent has written the maps
    held = []
    for uid in range(ids):
        os.setresuid(0, uid, 0)
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(path); held.append(s)
        finally:
            os.setresuid(0, 0, 0)
    print("HELD", len(held), flush=True)
    sys.stdin.readline()
""")


@contextlib.contextmanager
def _many_uids(sock: Path, first: int, ids: int) -> object:
    proc = subprocess.Popen([sys.executable, "-c", MANY_UIDS, str(first), str(ids), str(sock)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "UNSHARED"
        Path(f"/proc/{proc.pid}/uid_map").write_text(f"0 {first} {ids}\n")
        Path(f"/proc/{proc.pid}/setgroups").write_text("deny\n")
        Path(f"/proc/{proc.pid}/gid_map").write_text(f"0 {first} {ids}\n")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        yield proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()


async def test_many_uids_of_one_user_namespace_share_one_pool_and_leave_a_module_its_socket(
        public_dir: Path) -> None:
    """c05: before, each uid counted apart, so the uids of one namespace filled the connections every caller but
    root shares, and a module got no connection on its own socket."""
    go = public_dir / "go"
    # 64 connections, 16 kept for the host: 60 uids of one namespace more than fill the 48 everyone else shares.
    async with edgeward(public_dir, max_connections="64", host_reserved_connections="16") as daemon:
        try:
            await daemon.start_module("victim", SIGNER, {"GO": str(go), "SIGNS": "10"}, b"WAITING")
            await daemon.mgmt.close()
            loop = asyncio.get_running_loop()
            holder = _many_uids(daemon.mgmt_socket, 300000, 60)
            held = await loop.run_in_executor(None, holder.__enter__)  # type: ignore[attr-defined]
            try:
                print("holder:", held)
                go.touch()
                signs = await _signs(daemon, "victim", go)
                assert signs["statuses"] == [200] * 10, signs["statuses"]
            finally:
                holder.__exit__(None, None, None)  # type: ignore[attr-defined]
        finally:
            go.touch()


# The same namespace's root, churning instead of holding: connect/close from uid after uid, for SECONDS.
CHURN_UIDS = textwrap.dedent("""
    import ctypes, os, socket, sys, time
    first, ids, path, seconds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), "unshare")
    print("UNSHARED", flush=True)
    sys.stdin.readline()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        os.setresuid(0, n % ids, 0)
        s = socket.socket(socket.AF_UNIX); s.setblocking(False)
        try:
            s.connect(path); n += 1
        except OSError:
            pass
        s.close()
        os.setresuid(0, 0, 0)
    print("CHURNED", n, flush=True)
""")


async def test_many_uids_churning_share_one_budget_and_are_closed_cheaply(public_dir: Path) -> None:
    """c05 and c08 together: before, every uid of one user namespace had a budget (or none) of its own, so the
    namespace's root could churn through its uids and make each connection cost a refusal's full price."""
    async with edgeward(public_dir) as daemon:
        loop = asyncio.get_running_loop()
        cpu = _cpu_seconds(daemon.pid)
        proc = subprocess.Popen([sys.executable, "-c", CHURN_UIDS, "310000", "2000", str(daemon.mgmt_socket), "6"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "UNSHARED"
            for name in ("uid_map", "gid_map"):
                if name == "gid_map":
                    Path(f"/proc/{proc.pid}/setgroups").write_text("deny\n")
                Path(f"/proc/{proc.pid}/{name}").write_text("0 310000 2000\n")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            ok, failed = await loop.run_in_executor(None, _connects, str(daemon.mgmt_socket), 5)
            churned = int((await loop.run_in_executor(None, proc.stdout.readline)).split()[1])
        finally:
            proc.kill()
            proc.wait()
        cpu = _cpu_seconds(daemon.pid) - cpu
        warnings = (public_dir / "daemon.log").read_text().count("closed unread")
        print(json.dumps({"churned": churned, "daemon_cpu_us_per_churned": round(cpu / churned * 1e6, 1),
                          "root_connects_ok": ok, "failed": failed, "warnings": warnings}))
        assert cpu / churned < 60e-6, f"{cpu:.1f} s of the daemon's CPU for {churned} churned connections"
        assert warnings <= 4  # one line per budget every 10 s, not one per uid
        assert ok >= 0.08 * (ok + failed)  # 17-40% seen, by the machine's load (see the single-uid test)


def _send_headers(sock: Path, fields: int, size: int) -> tuple[bytes, int]:
    """Up to ``fields`` header lines of ``size`` bytes and never the blank line: what the daemon answered (b"" if
    nothing within 5 s), and how many lines it took before it closed."""
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(5)
    sent = 0
    try:
        conn.connect(str(sock))
        conn.sendall(b"GET /modules?api-version=2020-07-07 HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(fields):
                conn.sendall(b"X-F%d: %s\r\n" % (i, b"a" * size))
                sent += 1
        try:
            return conn.recv(4096), sent
        except (TimeoutError, ConnectionResetError):
            return b"", sent
    finally:
        conn.close()


async def test_request_headers_are_capped_in_count_and_in_total(public_dir: Path) -> None:
    """c09: before, a request could hold 128 fields of 8 KB (1 MB) of unfinished headers on each connection, and the
    daemon's memory grew by that for every connection; now a request that sends more than the caps is answered 431
    (or 400) and closed as soon as it does."""
    async with edgeward(public_dir) as daemon:
        loop = asyncio.get_running_loop()
        # Many small fields, well within aiohttp's per-field limit: the total cap answers.
        answer, sent = await loop.run_in_executor(None, _send_headers, daemon.mgmt_socket, 127, 8000)
        assert answer[9:12] in (b"431", b"400"), (answer[:80], sent)
        # More fields than the count cap, each tiny.
        answer, sent = await loop.run_in_executor(None, _send_headers, daemon.mgmt_socket, 200, 10)
        assert answer[9:12] in (b"431", b"400"), (answer[:80], sent)
        # What the IoT SDKs and the edge agent send is served as before.
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(5)
        try:
            conn.connect(str(daemon.mgmt_socket))
            request = MGMT_LIST.replace(b"\r\n\r\n", b"\r\nUser-Agent: " + b"u" * 200 + b"\r\nX-Extra: "
                                        + b"e" * 4000 + b"\r\n\r\n")
            assert _ask(conn, request) == 200
        finally:
            conn.close()


async def test_the_header_cap_counts_headers_never_bodies(tmp_path: Path) -> None:
    """A real listener: a 600 KB body, in pieces and after a head split in two, is no header; a 40 KB head is."""
    import aiohttp
    from aiohttp import web

    from edgeward.http.server import Listener, RouteTable, build_app, start_server

    routes = RouteTable(["2020-07-07"])

    @routes.post("/echo", since="2020-07-07")
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"length": len(await request.read())})

    runner = await start_server(build_app(routes), [Listener(tmp_path / "s.sock", 0o600)])
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        body = b"b" * 600_000
        head = (b"POST /echo?api-version=2020-07-07 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for piece in (head[:20], head[20:] + body[:300_000], body[300_000:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(str(tmp_path / "s.sock"))) as session:
            async with session.post("http://x/echo?api-version=2020-07-07", data=body) as response:
                assert response.status == 200 and (await response.json()) == {"length": 600_000}
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
            writer.write(b"GET /echo?api-version=2020-07-07 HTTP/1.1\r\n")
            for i in range(6):
                writer.write(b"X-F%d: %s\r\n" % (i, b"a" * 7000))
            await writer.drain()
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 431")
            writer.close()
    finally:
        await runner.cleanup()


async def test_a_head_that_follows_a_complete_request_in_the_same_chunk_is_capped_too(tmp_path: Path) -> None:
    """Found by h/brk14a F1: a chunk that completed a request reset the head count after it was parsed, so a
    partial head written in the same write behind a tiny complete request (up to 256 KB: what one read takes) was
    never counted; 256 such connections from one local user grew the daemon by ~100 MB. Answered 431 now."""
    import os

    from aiohttp import web

    from edgeward.http.server import Listener, RouteTable, build_app, start_server

    routes = RouteTable(["2020-07-07"])

    @routes.get("/ping", since="2020-07-07")
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    runner = await start_server(build_app(routes), [Listener(tmp_path / "s.sock", 0o600)])
    try:
        small = b"GET /ping?api-version=2020-07-07 HTTP/1.1\r\nHost: x\r\n\r\n"
        big = b"GET /ping?api-version=2020-07-07 HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%02d: " % i + os.urandom(2000).hex().encode() + b"\r\n" for i in range(60))  # ~240 KB, unfinished
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        try:
            writer.write(small + big)
            await writer.drain()
            async with asyncio.timeout(5):
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                rest = b""
                with contextlib.suppress(ConnectionResetError):  # closed with our head unread: a reset may follow
                    while chunk := await reader.read(65536):
                        rest += chunk
            assert b"HTTP/1.1 431" in rest, rest[:300]
        finally:
            writer.close()
        # pipelined small requests in one write are still all answered
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        try:
            writer.write(small * 200)
            await writer.drain()
            async with asyncio.timeout(10):
                for _ in range(200):
                    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                    await reader.readuntil(b"\r\n\r\n")
                    await reader.readexactly(2)  # {}
        finally:
            writer.close()
    finally:
        await runner.cleanup()
