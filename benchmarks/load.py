"""A closed-loop HTTP load generator over a Unix socket, and a bare aiohttp server to compare against."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

BARE_SERVER = """
import sys
from aiohttp import web
async def handler(request):
    await request.read()
    return web.json_response({"signature": "MEUCIQDK7s8pC8z0C3QGnBvbdUQvq1B4sOCJ5ZeCzEm3pC3ZKgIgKN3q8rPz2v0Dw5lE6bJ5g6q"})
app = web.Application()
app.router.add_post("/sign", handler)
web.run_app(app, path=sys.argv[1], print=lambda *a: print("ready", flush=True), access_log=None)
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def closed_loop(socket: Path, path: str, body: dict[str, object], concurrency: int, seconds: float,
                      warmup: float = 0.5) -> LoadResult:
    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    measuring = False
    connector = aiohttp.UnixConnector(path=str(socket), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                async with session.post("http://x" + path, data=payload,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if not 200 <= r.status < 300:  # the certs API answers 201 Created
                        errors += 1
                if measuring:
                    latencies.append(time.perf_counter() - t)

        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        measuring = True
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return LoadResult(len(latencies), elapsed, statistics.median(latencies) * 1000 if latencies else 0.0,
                      p99 * 1000, errors)
