"""Workload API sign: throughput and latency at 1/16/64 concurrent clients, as a module sees it, against a bare
aiohttp handler on the same kind of socket driven by the same load generator.

The load generator must itself be a module (attestation refuses anyone else), so it runs as a host-process module
of a real `edgeward run`; the bare baseline runs the same generator as a plain process.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeward.config.toml_write import dumps
from edgeward.daemon import EMBEDDED_DEFAULTS
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon, stop_daemon

from .load import BARE_SERVER

REPO = Path(__file__).resolve().parents[1]

# Runs inside the module: closed-loop load, alternating the bare server and the workload API round by round (one
# generator, one process, neighbouring moments), then one JSON line of results.
LOADGEN = """
import asyncio, base64, json, os, sys, time, urllib.parse
from benchmarks.load import closed_loop
api = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
bare = os.environ["BENCH_BARE_SOCKET"]
name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
path = f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30"
body = {"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(b"x" * 64).decode()}
seconds = float(os.environ["BENCH_SECONDS"]) / int(os.environ["BENCH_ROUNDS"])
out = {}
for c in json.loads(os.environ["BENCH_CONCURRENCY"]):
    rounds = []
    for _ in range(int(os.environ["BENCH_ROUNDS"])):
        b = asyncio.run(closed_loop(bare, "/sign", body, c, seconds))
        a = asyncio.run(closed_loop(api, path, body, c, seconds))
        lb = asyncio.run(closed_loop(bare, "/sign", body, c, seconds, client="lean"))
        la = asyncio.run(closed_loop(api, path, body, c, seconds, client="lean"))
        rounds.append({side: {"rate": r.rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
                       for side, r in (("api", a), ("bare", b), ("lean_api", la), ("lean_bare", lb))})
    out[c] = rounds
print("BENCH " + json.dumps(out), flush=True)
time.sleep(3600)
"""
ROUNDS = 3  # bare/API pairs per client count; the ratio reported is their median


async def _load(run_dir: Path, bare_socket: Path, concurrency: list[int], seconds: float) -> dict[str, Any]:
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    try:
        await mgmt.create_module({"name": "bench", "imagePullPolicy": "never", "config": {
            "image": sys.executable, "createOptions": {"Cmd": ["-c", LOADGEN]}}, "env": [
            {"key": "PYTHONPATH", "value": str(REPO)},
            {"key": "BENCH_BARE_SOCKET", "value": str(bare_socket)},
            {"key": "BENCH_CONCURRENCY", "value": json.dumps(concurrency)},
            {"key": "BENCH_ROUNDS", "value": str(ROUNDS)},
            {"key": "BENCH_SECONDS", "value": str(seconds)}]})
        await mgmt.action("bench", "start")
        async with asyncio.timeout(len(concurrency) * 4 * (seconds + 2 * ROUNDS) + 60):
            async for chunk in mgmt.logs("bench", follow=True):
                for line in chunk.data.splitlines():
                    if line.startswith(b"BENCH "):
                        return dict(json.loads(line[6:]))
                    if chunk.stream == 2:
                        print(line.decode(errors="replace"), file=sys.stderr)
        raise RuntimeError("the load module stopped without results")
    finally:
        await mgmt.close()


def run(seconds: float, concurrency: list[int]) -> list[dict[str, Any]]:
    """Each client count gets ``seconds`` on each side, split into ROUNDS rounds of bare/API pairs (each generator in turn) run back to back by the
    same generator, so a noisy neighbour weighs on both sides of a pair alike."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        sock = tmp / "bare.sock"
        server = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(sock)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        try:
            assert server.stdout is not None
            server.stdout.readline()
            state = tmp / "state"
            # The embedded defaults, with root host modules allowed: the load generator runs as root.
            config = tmp / "config.toml"
            config.write_text(dumps({**EMBEDDED_DEFAULTS, "allow_elevated_docker_permissions": True}))
            with running_daemon(["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(state / "run")],
                                log_path=tmp / "daemon.log"):
                results = asyncio.run(_load(state / "run", sock, concurrency, seconds))
        finally:
            stop_daemon(server)  # type: ignore[arg-type]
    rows = []
    for c in concurrency:
        rounds = results[str(c)]
        ordered = sorted(rounds, key=lambda r: r["api"]["rate"] / r["bare"]["rate"])
        mid = ordered[len(ordered) // 2]
        a, b = mid["api"], mid["bare"]
        rows.append({"concurrency": c, "api_per_s": a["rate"], "bare_per_s": b["rate"],
                     "api_vs_bare": a["rate"] / b["rate"], "api_p50_ms": a["p50_ms"], "api_p99_ms": a["p99_ms"],
                     "bare_p99_ms": b["p99_ms"],
                     "errors": sum(r["api"]["errors"] + r["lean_api"]["errors"] for r in rounds),
                     "ratios": [r["api"]["rate"] / r["bare"]["rate"] for r in rounds],
                     "lean_api_vs_bare": statistics.median(r["lean_api"]["rate"] / r["lean_bare"]["rate"]
                                                           for r in rounds)})
    return rows
