"""Closed-loop HTTP load generators over a Unix socket, and a bare aiohttp server to compare against.

Two generators. ``aiohttp``: aiohttp's client, as the keys goal of issue 16 was first measured. It spends 200-450 us
of CPU per request, more than the bare handler it measures (about 70 us), so on this 2-core machine it, not the
server, sets the bare handler's rate. ``lean``: one asyncio protocol per connection writing a request built once
and reading the answer by its Content-Length (40-90 us per request), so the server's own cost decides the rate, as
with wrk. Every answer is read whole and its status checked by both."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

Client = Literal["aiohttp", "lean"]

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


async def closed_loop(socket: Path | str, path: str, body: dict[str, object], concurrency: int, seconds: float,
                      warmup: float = 0.5, client: Client = "aiohttp") -> LoadResult:
    if client == "lean":
        return await _lean_closed_loop(Path(socket), path, body, concurrency, seconds, warmup)
    payload = json.dumps(body).encode()
    run = _Run()
    connector = aiohttp.UnixConnector(path=str(socket), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while run.going():
                t = time.perf_counter()
                async with session.post("http://x" + path, data=payload,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    run.answered(r.status, t)  # the certs API answers 201 Created

        return await run.phases(worker, concurrency, warmup, seconds)


@dataclass
class _Run:
    """What the workers of one closed loop share: when to stop, whether answers count yet, and what they saw."""

    stop_at: float = 0.0
    measuring: bool = False
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def going(self) -> bool:
        return time.perf_counter() < self.stop_at

    def answered(self, status: int, started: float) -> None:
        if not 200 <= status < 300:
            self.errors += 1
        if self.measuring:
            self.latencies.append(time.perf_counter() - started)

    async def phases(self, worker: Callable[[], Awaitable[None]], concurrency: int, warmup: float,
                     seconds: float) -> LoadResult:
        """``concurrency`` workers through the warm-up, then again through the measured ``seconds``."""
        self.stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        self.measuring = True
        start = time.perf_counter()
        self.stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        latencies = sorted(self.latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return LoadResult(len(latencies), elapsed, statistics.median(latencies) * 1000 if latencies else 0.0,
                          p99 * 1000, self.errors)


class _Answers(asyncio.Protocol):
    """One keep-alive connection: each request's answer is complete once its Content-Length of body is in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:  # every answer of the services measured has one; anything else is a failure, not a guess
            self.waiter.set_exception(ValueError(f"an answer without Content-Length: {head[:200]!r}"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:end + 4 + length]
        if b"\r\nconnection: close" in head:  # the server closes after this answer: the next request takes a new one
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        self.waiter.set_result(status)


async def _lean_closed_loop(socket: Path, path: str, body: dict[str, object], concurrency: int, seconds: float,
                            warmup: float) -> LoadResult:
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    loop = asyncio.get_running_loop()
    run = _Run()

    async def worker() -> None:
        conn: _Answers | None = None
        try:
            while run.going():
                if conn is None or conn.closed:
                    _, conn = await loop.create_unix_connection(_Answers, str(socket))
                assert conn.transport is not None
                t = time.perf_counter()
                conn.waiter = loop.create_future()
                conn.transport.write(request)
                try:
                    status = await conn.waiter
                except ConnectionError:
                    run.errors += 1
                    continue
                run.answered(status, t)
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    return await run.phases(worker, concurrency, warmup, seconds)
