"""The benchmarks' lean load generator counts what a server really answered: a non-2xx answer is an error, an
answer is complete only with its whole body, and a connection the server closes is reopened, not counted as done."""

from __future__ import annotations

import itertools
from pathlib import Path

from aiohttp import web
from benchmarks.load import closed_loop


async def _serve(path: Path, handler: web.RequestHandler | object) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/x", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


async def test_non_2xx_answers_are_errors_and_bodies_are_read_whole(tmp_path: Path) -> None:
    statuses = itertools.cycle([201, 404])
    bodies: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(len(await request.read()))
        # a body larger than one read, so an answer split across reads must still be taken as one
        return web.Response(status=next(statuses), body=b"y" * 200_000)

    runner = await _serve(tmp_path / "s.sock", handler)
    try:
        result = await closed_loop(tmp_path / "s.sock", "/x", {"a": 1}, 1, 0.3, warmup=0, client="lean")
    finally:
        await runner.cleanup()
    assert result.requests >= 4
    assert abs(result.errors - result.requests / 2) <= 1  # every other answer was a 404
    assert set(bodies) == {len(b'{"a": 1}')}


async def test_a_closed_connection_is_reopened(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        response = web.json_response({"ok": True})
        response.force_close()
        return response

    runner = await _serve(tmp_path / "s.sock", handler)
    try:
        result = await closed_loop(tmp_path / "s.sock", "/x", {}, 4, 0.3, warmup=0, client="lean")
    finally:
        await runner.cleanup()
    assert result.requests >= 8
    assert result.errors == 0
