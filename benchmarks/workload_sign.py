"""Workload API sign: throughput and latency at 1/16/64 concurrent clients, as a module sees it, against a bare
aiohttp handler on the same kind of socket driven by the same load generator.

The load generator must itself be a module (attestation refuses anyone else), so it runs as a host-process module
of a real `edgeward run`; the bare baseline runs the same generator as a plain process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon, stop_daemon

from .load import BARE_SERVER

REPO = Path(__file__).resolve().parents[1]

# Runs inside the module (or as a plain process for the baseline): closed-loop load, one JSON line of results.
LOADGEN = """
import asyncio, base64, json, os, sys, time, urllib.parse
from benchmarks.load import closed_loop
sock = sys.argv[1] if len(sys.argv) > 1 else urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
name = os.environ.get("IOTEDGE_MODULEID", "bare"); gen = os.environ.get("IOTEDGE_MODULEGENERATIONID", "0")
path = f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30" if len(sys.argv) == 1 else "/sign"
body = {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(b"x" * 64).decode()}
out = {}
for c in json.loads(os.environ["BENCH_CONCURRENCY"]):
    r = asyncio.run(closed_loop(sock, path, body, c, float(os.environ["BENCH_SECONDS"])))
    out[c] = {"rate": r.rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
print("BENCH " + json.dumps(out), flush=True)
if len(sys.argv) == 1:
    time.sleep(3600)
"""


async def _module_load(run_dir: Path, concurrency: list[int], seconds: float) -> dict[str, Any]:
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    try:
        await mgmt.create_module({"name": "bench", "imagePullPolicy": "never", "config": {
            "image": sys.executable, "createOptions": {"Cmd": ["-c", LOADGEN]}}, "env": [
            {"key": "PYTHONPATH", "value": str(REPO)},
            {"key": "BENCH_CONCURRENCY", "value": json.dumps(concurrency)},
            {"key": "BENCH_SECONDS", "value": str(seconds)}]})
        await mgmt.action("bench", "start")
        async with asyncio.timeout(len(concurrency) * (seconds + 2) + 60):
            async for chunk in mgmt.logs("bench", follow=True):
                for line in chunk.data.splitlines():
                    if line.startswith(b"BENCH "):
                        return dict(json.loads(line[6:]))
                    if chunk.stream == 2:
                        print(line.decode(errors="replace"), file=sys.stderr)
        raise RuntimeError("the load module stopped without results")
    finally:
        await mgmt.close()


def _bare_load(tmp: Path, concurrency: list[int], seconds: float) -> dict[str, Any]:
    sock = tmp / "bare.sock"
    server = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(sock)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_CONCURRENCY": json.dumps(concurrency),
               "BENCH_SECONDS": str(seconds)}
        out = subprocess.run([sys.executable, "-c", LOADGEN, str(sock)], capture_output=True, text=True, env=env,
                             timeout=len(concurrency) * (seconds + 2) + 60, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("BENCH "))
        return dict(json.loads(line[6:]))
    finally:
        stop_daemon(server)  # type: ignore[arg-type]


def run(seconds: float, concurrency: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        bare = _bare_load(tmp, concurrency, seconds)
        state = tmp / "state"
        with running_daemon(["run", "--state-dir", str(state), "--run-dir", str(state / "run")],
                            log_path=tmp / "daemon.log"):
            api = asyncio.run(_module_load(state / "run", concurrency, seconds))
    rows = []
    for c in concurrency:
        a, b = api[str(c)], bare[str(c)]
        rows.append({"concurrency": c, "api_per_s": a["rate"], "bare_per_s": b["rate"],
                     "api_vs_bare": a["rate"] / b["rate"], "api_p50_ms": a["p50_ms"], "api_p99_ms": a["p99_ms"],
                     "bare_p99_ms": b["p99_ms"], "errors": a["errors"]})
    return rows
