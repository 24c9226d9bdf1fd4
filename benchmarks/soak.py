"""Does the daemon's memory grow with use? `python -m benchmarks --only soak --minutes 10` (minutes long: not part of
the default run, nor of CI).

One `edgeward run` (host-process modules, software keys) is driven for the given time by three loops at once: key
rounds (create a key pair and a symmetric key, sign with both, delete both, each with a fresh id), module
lifecycles (create, start, stop, delete, each under a fresh name) and one module that calls its workload API
(sign) in a tight loop. RSS is sampled every second; after a warm-up (the first fifth of the run) a least-squares
line gives the slope. Then the load stops and RSS is read again after an idle minute (or a fifth of the run).
Goals: slope < 0.2 MB/min, idle RSS within 5 MB of the warm-up value.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from edgeward.keys.client import KeysClient
from edgeward.keys.model import EcdsaDigest, HmacSha256
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon

from .footprint import rss_mb

GOAL_SLOPE_MB_PER_MIN = 0.2
GOAL_IDLE_WITHIN_MB = 5.0
LOOPS = ("keys", "lifecycles", "workload")

# A module that signs through its workload API as fast as it can (stdlib only, as the demo module).
WORKLOAD_CALLER = """
import base64, http.client, json, os, socket, urllib.parse
class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path_ = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path_)
name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
conn = Unix(urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path)
body = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": base64.b64encode(b"soak").decode()})
n = 0
while True:
    conn.request("POST", f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30", body=body,
                 headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    n += 1
    if n % 10000 == 0:
        print(n, flush=True)
"""
SLEEPER = "import time\nwhile True: time.sleep(3600)\n"


def _slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    tm, mm = statistics.fmean(ts), statistics.fmean(ms)
    den = sum((t - tm) ** 2 for t in ts)
    return 60 * sum((t - tm) * (m - mm) for t, m in zip(ts, ms, strict=True)) / den if den else 0.0


async def _key_rounds(socket: Path, until: float, counts: dict[str, int]) -> None:
    client = KeysClient(socket)
    try:
        while time.monotonic() < until:
            i = counts["key_rounds"]
            pair = await client.create_key_pair_if_not_exists(f"soak-pair-{i}", "ec-p256")
            await client.sign(pair, EcdsaDigest(b"\x01" * 32))
            secret = await client.create_key_if_not_exists(f"soak-key-{i}", "sign")
            await client.sign(secret, HmacSha256(b"soak"))
            await client.delete_key_pair(pair)
            await client.delete_key(secret)
            counts["key_rounds"] += 1
    finally:
        await client.close()


async def _module_lifecycles(mgmt: ManagementClient, until: float, counts: dict[str, int]) -> None:
    while time.monotonic() < until:
        name = f"soak{counts['lifecycles']}"
        await mgmt.create_module({"name": name, "imagePullPolicy": "never",
                                  "config": {"image": sys.executable, "createOptions": {"Cmd": ["-c", SLEEPER]}}})
        await mgmt.action(name, "start")
        await mgmt.action(name, "stop")
        await mgmt.delete_module(name)
        counts["lifecycles"] += 1


async def _sample(pid: int, until: float, samples: list[tuple[float, float]], start: float) -> None:
    while time.monotonic() < until:
        samples.append((time.monotonic() - start, rss_mb(pid)))
        await asyncio.sleep(1)


async def _drive(pid: int, run_dir: Path, seconds: float, loops: Collection[str]) -> dict[str, Any]:
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    counts = {"key_rounds": 0, "lifecycles": 0}
    samples: list[tuple[float, float]] = []
    workload_calls = 0
    try:
        if "workload" in loops:
            await mgmt.create_module({"name": "caller", "imagePullPolicy": "never",
                                      "config": {"image": sys.executable,
                                                 "createOptions": {"Cmd": ["-c", WORKLOAD_CALLER]}}})
            await mgmt.action("caller", "start")
        start = time.monotonic()
        until = start + seconds
        drivers = [_sample(pid, until, samples, start)]
        if "keys" in loops:
            drivers.append(_key_rounds(run_dir / "keyd.sock", until, counts))
        if "lifecycles" in loops:
            drivers.append(_module_lifecycles(mgmt, until, counts))
        await asyncio.gather(*drivers)
        if "workload" in loops:
            await mgmt.action("caller", "stop")
            workload_calls = sum(int(c.data.split()[0]) for c in [c async for c in mgmt.logs("caller", tail=1)]
                                 if c.data.split() and c.data.split()[0].isdigit())
    finally:
        await mgmt.close()
    warm = [s for s in samples if s[0] >= seconds / 5]
    warm_rss = warm[0][1] if warm else samples[-1][1]
    return {**counts, "workload_calls_at_least": workload_calls, "samples": samples, "warm_rss_mb": warm_rss,
            "end_rss_mb": samples[-1][1], "slope_mb_per_min": _slope_mb_per_min(warm)}


def run(minutes: float, loops: Collection[str] = LOOPS, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`loops`: which of the three loads run (each alone shows its own share); `env`: added to the daemon's
    environment (MALLOC_ARENA_MAX, say, to tell allocator behaviour from retention)."""
    seconds = minutes * 60
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        state = tmp / "state"
        config = tmp / "config.toml"
        config.write_text('allow_elevated_docker_permissions = true\n'  # its modules run as root
                          '[edgeward.runtime]\nengine = "process"\n')
        with running_daemon(["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(state / "run")],
                            env={**os.environ, **(env or {})}, log_path=tmp / "daemon.log") as proc:
            start_rss = rss_mb(proc.pid)
            result = asyncio.run(_drive(proc.pid, state / "run", seconds, loops))
            time.sleep(min(60.0, seconds / 5))
            idle_rss = rss_mb(proc.pid)
    samples = result.pop("samples")
    # the shape as well as the slope: RSS at each tenth of the run (a cache filling up flattens, a leak does not)
    result["rss_by_tenth_mb"] = [round(samples[min(len(samples) - 1, len(samples) * i // 10)][1], 1)
                                 for i in range(11)]
    return {**result, "minutes": minutes, "start_rss_mb": start_rss, "idle_rss_mb": idle_rss,
            "slope_met": result["slope_mb_per_min"] < GOAL_SLOPE_MB_PER_MIN,
            "idle_met": idle_rss - result["warm_rss_mb"] <= GOAL_IDLE_WITHIN_MB}
