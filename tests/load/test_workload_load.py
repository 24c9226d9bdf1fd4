"""Load: 1,200 concurrent workload clients in one module for a bounded time, while a module of another uid keeps
working. Memory stays bounded, no file descriptor leaks, the per-uid limit turns the excess into 429s (never a 5xx)
and does not starve the other uid."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon
from tests.fixtures.modules import client_spec, elevated_defaults

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIENTS, SECONDS = 1200, 4.0
LOAD = textwrap.dedent("""
    import asyncio, base64, collections, json, os, time, urllib.parse
    import aiohttp
    sock = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    url = f"http://x/modules/{os.environ['IOTEDGE_MODULEID']}/genid/{os.environ['IOTEDGE_MODULEGENERATIONID']}/sign?api-version=2019-01-30"
    body = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(b"x" * 32).decode()})
    async def main():
        counts = collections.Counter()
        conn = aiohttp.UnixConnector(path=sock, limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
            stop = time.monotonic() + float(os.environ["SECONDS"])
            async def client():
                while time.monotonic() < stop:
                    try:
                        async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                            await r.read(); counts[str(r.status)] += 1
                    except Exception as e:
                        counts[type(e).__name__ + ": " + str(e)[:60]] += 1
            await asyncio.gather(*(client() for _ in range(int(os.environ["CLIENTS"]))))
        print("LOAD " + json.dumps(counts), flush=True)
    asyncio.run(main())
    time.sleep(3600)
""")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


async def _stdout_line(mgmt: ManagementClient, name: str, prefix: bytes, timeout: float) -> bytes:
    buf = b""
    async with asyncio.timeout(timeout):
        async for chunk in mgmt.logs(name, follow=True):
            buf += chunk.data
            for line in buf.splitlines():
                if line.startswith(prefix):
                    return line
    raise AssertionError(f"{name} ended without {prefix!r}: {buf[-500:]!r}")


@pytest.fixture
async def daemon(public_dir: Path) -> AsyncIterator[tuple[int, Path]]:
    run = public_dir / "run"
    loop = asyncio.get_running_loop()
    # 1,200 connections from one module are over the default per-caller connection cap (256, which
    # tests/integration/test_fairness.py proves): raised here, so the load reaches the request limiter it measures.
    # Root host modules allowed: the load module runs as root (the quiet one as 65534).
    cm = running_daemon(["run", "-c", str(elevated_defaults(public_dir)), "--state-dir", str(public_dir / "state"),
                         "--run-dir", str(run)],
                        env=dict(os.environ, EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER="2048"),
                        log_path=public_dir / "daemon.log")
    proc = await loop.run_in_executor(None, cm.__enter__)
    try:
        yield proc.pid, run
    finally:
        await loop.run_in_executor(None, cm.__exit__, None, None, None)


async def test_thousand_clients(daemon: tuple[int, Path]) -> None:
    pid, run = daemon
    mgmt = ManagementClient(run / "mgmt" / "mgmt.sock")
    try:
        sign = ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
                {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}]
        # The other uid's module: it waits for the load to start, then signs 50 times, one after the other.
        go = run.parent / "go"
        await mgmt.create_module(client_spec("quiet", [sign] * 50, image="/usr/bin/python3",
                                             extra={"User": "65534"}, go_file=str(go)))
        await mgmt.action("quiet", "start")
        await _stdout_line(mgmt, "quiet", b"WAITING", 30)
        rss_before, fds_before = _rss_kb(pid), _fds(pid)
        await mgmt.create_module({"name": "loader", "imagePullPolicy": "never", "config": {
            "settings": {"image": sys.executable, "createOptions": {"Cmd": ["-c", LOAD]}},
            "env": [{"key": "CLIENTS", "value": str(CLIENTS)}, {"key": "SECONDS", "value": str(SECONDS)}]}})
        await mgmt.action("loader", "start")
        while _fds(pid) < fds_before + 500:  # the load is on: now the other uid calls
            await asyncio.sleep(0.05)
        go.touch()
        quiet = await _stdout_line(mgmt, "quiet", b"DONE", 60)
        assert quiet
        logs = b"".join([c.data async for c in mgmt.logs("quiet")])
        statuses = [json.loads(line[7:])["status"] for line in logs.splitlines() if line.startswith(b"RESULT ")]
        counts = json.loads((await _stdout_line(mgmt, "loader", b"LOAD ", SECONDS + 90))[5:])
        rss_peak = _rss_kb(pid)
        await mgmt.delete_module("loader")
        deadline = asyncio.get_running_loop().time() + 30
        while _fds(pid) > fds_before + 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        rss_after, fds_after = _rss_kb(pid), _fds(pid)

    finally:
        await mgmt.close()
    print(json.dumps({"counts": counts, "rss_kb": [rss_before, rss_peak, rss_after], "fds": [fds_before, fds_after]}))
    assert statuses == [200] * 50, statuses  # the other uid was served throughout
    assert counts.get("200", 0) > 1000
    assert counts.get("429", 0) > 0  # the excess over 64 running + 1,024 queued is refused, not queued forever
    assert not [k for k in counts if k[:1] == "5"], counts  # no server errors
    # Overload is refused with 429s. Some clients see their connection cut while writing under this overload
    # (0.1-1.5% measured); they stay a small minority.
    cut = sum(v for k, v in counts.items() if not k.isdigit())
    assert cut < 0.05 * sum(counts.values()), counts
    assert fds_after <= fds_before + 5, (fds_before, fds_after)
    assert rss_after - rss_before < 60 * 1024, (rss_before, rss_peak, rss_after)
